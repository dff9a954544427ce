"""Evaluation of classifiers: metrics, calibration (temperature, ECE), abstain threshold, TF-IDF baseline.

Everything here works on plain numpy arrays of probabilities/logits and lists of string labels, so the
same code scores the fine-tuned bundle, the char n-gram baseline and their ensemble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xinfang.models.calibration import choose_threshold, expected_calibration_error, softmax

__all__ = ["classification_metrics", "TfidfBaseline", "format_side_by_side"]


def classification_metrics(y_true: list[str], probs: np.ndarray, labels: list[str],
                           threshold: float | None = None, top_k: int = 3) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1, top-k accuracy, ECE, confusion matrix, selective figures."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index.get(v, -1) for v in y_true])
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    known = y >= 0
    k = min(top_k, probs.shape[1])
    topk = np.argsort(-probs, axis=1)[:, :k]
    lab_ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=lab_ids, zero_division=0)
    out = {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, labels=[i for i in lab_ids if (y == i).any()], average="macro",
                                   zero_division=0)),
        f"top{k}_accuracy": float((topk == y[:, None]).any(axis=1).mean()),
        "ece": expected_calibration_error(probs[known], y[known]),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                  "support": int(s[i])} for i in lab_ids},
        "confusion_matrix": confusion_matrix(y, pred, labels=lab_ids).tolist(),
        "labels": list(labels),
        "unknown_label_rows": int((~known).sum()),
    }
    if threshold is not None:
        accepted = probs.max(axis=1) >= threshold
        out["threshold"] = float(threshold)
        out["coverage"] = float(accepted.mean())
        out["accepted_accuracy"] = float((pred[accepted] == y[accepted]).mean()) if accepted.any() else None
    return out


@dataclass
class TfidfBaseline:
    """Char 1-3-gram TF-IDF + LinearSVC; probabilities from sigmoid-calibrated SVMs (3-fold, inside fit)."""

    ngram_range: tuple[int, int] = (1, 3)
    max_features: int | None = 200_000
    C: float = 0.5
    labels: list[str] = field(default_factory=list)

    def fit(self, texts: list[str], y: list[str]) -> TfidfBaseline:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.svm import LinearSVC

        self.labels = sorted(set(y))
        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=self.ngram_range, sublinear_tf=True,
                                          min_df=2, max_features=self.max_features)
        x = self.vectorizer.fit_transform(texts)
        yi = np.array([self.labels.index(v) for v in y])
        self.svm = LinearSVC(C=self.C).fit(x, yi)
        counts = np.bincount(yi, minlength=len(self.labels))
        cv = int(min(3, counts.min())) if counts.min() >= 2 else 0
        self.calibrated = (CalibratedClassifierCV(LinearSVC(C=self.C), method="sigmoid", cv=cv).fit(x, yi)
                           if cv >= 2 else None)
        return self

    def predict(self, texts: list[str]) -> list[str]:
        d = self.svm.decision_function(self.vectorizer.transform(texts))
        d = d.reshape(len(texts), -1)
        if d.shape[1] == 1:  # binary
            d = np.hstack([-d, d])
        return [self.labels[i] for i in d.argmax(axis=1)]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        x = self.vectorizer.transform(texts)
        if self.calibrated is not None:
            return self.calibrated.predict_proba(x)
        d = self.svm.decision_function(x).reshape(len(texts), -1)
        if d.shape[1] == 1:
            d = np.hstack([-d, d])
        return softmax(d * 5.0)

    def proba_for(self, texts: list[str], labels: list[str]) -> np.ndarray:
        """Probabilities re-ordered to `labels` (labels unseen in training get 0)."""
        p = self.predict_proba(texts)
        out = np.zeros((len(texts), len(labels)))
        for j, lab in enumerate(self.labels):
            if lab in labels:
                out[:, labels.index(lab)] = p[:, j]
        return out


def format_side_by_side(columns: dict[str, dict], top_k: int = 3) -> str:
    """Markdown table: one column per system (name -> classification_metrics output)."""
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), (f"top-{top_k} accuracy", f"top{top_k}_accuracy"),
            ("ECE", "ece"), ("review threshold", "threshold"), ("coverage (not review)", "coverage"),
            ("accuracy of non-review part", "accepted_accuracy")]
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for title, key in rows:
        cells = []
        for n in names:
            v = columns[n].get(key)
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    labels = columns[names[0]]["labels"]
    lines += ["", "Per-class F1:", "", "| class | support | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for lab in labels:
        sup = columns[names[0]]["per_class"][lab]["support"]
        cells = [f"{columns[n]['per_class'].get(lab, {}).get('f1', float('nan')):.3f}" for n in names]
        lines.append(f"| {lab} | {sup} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _oof_baseline(texts: list[str], labels: list[str], groups: list[int], out_labels: list[str],
                  seed: int, n_splits: int = 5) -> np.ndarray:
    """Out-of-fold baseline probabilities with StratifiedGroupKFold (each row predicted by a model not trained on it)."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = int(min(n_splits, max(2, min(np.unique(labels, return_counts=True)[1].min(), len(set(groups))))))
    probs = np.zeros((len(texts), len(out_labels)))
    for tr, te in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(texts, labels, groups):
        base = TfidfBaseline().fit([texts[i] for i in tr], [labels[i] for i in tr])
        probs[te] = base.proba_for([texts[i] for i in te], out_labels)
    return probs


def evaluate_bundle(model_dir, data, label_column: str | None = None, train_data=None,
                    batch_size: int = 32, duty_list=None) -> dict:
    """`xinfang eval`: the bundle and a char TF-IDF + LinearSVC baseline on the same labelled data.

    Baseline training: with `train_data` (the bundle's training file), the baseline is fitted on exactly the
    bundle's training part (same seeded group split; the data fingerprint is checked and reported), its
    review threshold is chosen on the bundle's validation part, and an ensemble (mean of the two calibrated
    probability vectors) is scored too. Without it, the baseline is 5-fold group cross-validated on `data`
    (out-of-fold predictions; its threshold is then chosen on those same predictions, an optimistic figure).
    With `duty_list` (a 权责清单 YAML), the model's answers routed through it (`Router`) are scored too.
    """
    from xinfang.models.classifier import ClassifierBundle
    from xinfang.records import load_records
    from xinfang.training.data import data_fingerprint, group_ids, group_split, prepare_examples

    bundle = ClassifierBundle.load(model_dir)
    cfg = bundle.config
    label_column = label_column or cfg.get("label_column") or bundle.task
    records = load_records(data, label_column=label_column)
    ex = prepare_examples(records, label_column, str(data), min_class_count=1, min_classes=1)
    probs = bundle.proba_texts(ex.texts, batch_size, progress=True)
    columns = {"model": classification_metrics(ex.labels, probs, bundle.labels, bundle.threshold)}
    target = cfg["review"]["target_precision"]
    info: dict = {"model": str(model_dir), "model_version": bundle.version, "data": str(data), "n": len(ex.texts),
                  "label_column": label_column, "review_target_precision": target,
                  "labels_unknown_to_model": sorted(set(ex.labels) - set(bundle.labels))}
    if train_data is not None:
        trecs = load_records(train_data, label_column=cfg["label_column"])
        tex = prepare_examples(trecs, cfg["label_column"], str(train_data), cfg["recipe"]["min_class_count"])
        tr, va = group_split(tex.labels, group_ids(tex.titles, tex.texts), cfg["split"]["val_fraction"], cfg["seed"])
        tr_texts, tr_labels = [tex.texts[i] for i in tr], [tex.labels[i] for i in tr]
        va_texts, va_labels = [tex.texts[i] for i in va], [tex.labels[i] for i in va]
        info["train_data_fingerprint_matches"] = data_fingerprint(tex.texts, tex.labels) == cfg["data_fingerprint"]
        info["train_split_fingerprint_matches"] = data_fingerprint(tr_texts, tr_labels) == cfg.get("train_fingerprint")
        info["eval_rows_also_in_training"] = len(set(ex.texts) & set(tex.texts))
        info["baseline"] = "char 1-3-gram TF-IDF + LinearSVC trained on the bundle's training part"
        base = TfidfBaseline().fit(tr_texts, tr_labels)
        y_va = np.array([bundle.labels.index(v) if v in bundle.labels else -1 for v in va_labels])
        pv_base = base.proba_for(va_texts, bundle.labels)
        pb = base.proba_for(ex.texts, bundle.labels)
        t_base = choose_threshold(pv_base, y_va, target)["threshold"]
        columns["char TF-IDF SVM"] = classification_metrics(ex.labels, pb, bundle.labels, t_base)
        pv_model = bundle.proba_texts(va_texts, batch_size)
        t_ens = choose_threshold((pv_model + pv_base) / 2, y_va, target)["threshold"]
        columns["ensemble (mean)"] = classification_metrics(ex.labels, (probs + pb) / 2, bundle.labels, t_ens)
    else:
        info["baseline"] = ("char 1-3-gram TF-IDF + LinearSVC, 5-fold group cross-validation on the evaluation "
                            "data (out-of-fold; pass --train-data to train it on the bundle's training part)")
        pb = _oof_baseline(ex.texts, ex.labels, group_ids(ex.titles, ex.texts), bundle.labels, cfg["seed"])
        y = np.array([bundle.labels.index(v) if v in bundle.labels else -1 for v in ex.labels])
        t_base = choose_threshold(pb, y, target)["threshold"]
        columns["char TF-IDF SVM (CV)"] = classification_metrics(ex.labels, pb, bundle.labels, t_base)
    if duty_list is not None or bundle.duty_list is not None:
        from xinfang.models.duty_list import DutyList
        from xinfang.models.router import Router

        duty = DutyList.load(duty_list) if duty_list is not None else bundle.duty_list
        router = Router(duty, bundle.labels, bundle.routing)  # the bundle's routing model when it has one
        threshold = bundle.routing.threshold if bundle.routing is not None else None
        columns["model + duty list"] = classification_metrics(ex.labels, router.routed_probs(ex.texts, probs),
                                                              bundle.labels, threshold)
        info["duty_list"] = str(duty_list) if duty_list is not None else "the bundle's own"
    md = [f"# Evaluation of {bundle.name} ({bundle.version}) on {data}", "",
          f"{len(ex.texts)} petitions; baseline: {info['baseline']}; review target precision {target}.", ""]
    if info.get("eval_rows_also_in_training"):
        md += [f"WARNING: {info['eval_rows_also_in_training']} evaluation texts also occur in the training file.", ""]
    md += [format_side_by_side(columns), "", "Confusion matrix of the model (rows true, columns predicted):", "",
           "| | " + " | ".join(bundle.labels) + " |", "|---|" + "---|" * len(bundle.labels)]
    for lab, row in zip(bundle.labels, columns["model"]["confusion_matrix"], strict=True):
        md.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return {**info, "metrics": columns, "markdown": "\n".join(md)}
