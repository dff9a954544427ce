"""Text-only head of a channel bundle: char TF-IDF + channel-table keyword hits in one logistic regression.

It runs no encoder layer (the legal channel adds a TF-IDF transform and a dot product to classify). Files
inside the bundle, beside the usual config/labels/manifest:

    tfidf.json, tfidf_head.safetensors   the TF-IDF part (xinfang.models.tfidf_head: vocabulary, idf, the
                                         regression's TF-IDF coefficients [C, F], its intercept [C])
    keyword_head.json                    the keywords per channel it was trained with (the bundle keeps its
                                         own copy: a later edit of the channel table does not change the model)
                                         and the cap on hits
    keyword_head.safetensors             coef [C, K]: one column per keyword channel (hits capped, unscaled)

Probabilities: softmax((tfidf(x) @ coef_t.T + hits(x) @ coef_k.T + intercept) / temperature), the temperature
fitted on out-of-fold answers of the training rows (training/channel_text.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError
from xinfang.models.calibration import softmax
from xinfang.models.tfidf_head import TFIDF_JSON, TFIDF_TENSORS, TfidfHead

__all__ = ["KeywordTfidfHead", "keyword_hits", "KEYWORD_JSON", "KEYWORD_TENSORS"]

KEYWORD_JSON = "keyword_head.json"
KEYWORD_TENSORS = "keyword_head.safetensors"
FORMAT = "xinfang-keyword-head/1"
MAX_HITS = 2


def keyword_hits(texts: list[str], keywords: dict[str, list[str]], max_hits: int = MAX_HITS) -> np.ndarray:
    """[N, K] distinct keywords of each channel found in each text, capped at max_hits."""
    out = np.zeros((len(texts), len(keywords)))
    for i, t in enumerate(texts):
        for j, words in enumerate(keywords.values()):
            out[i, j] = min(sum(1 for w in words if w in t), max_hits)
    return out


class KeywordTfidfHead:
    """TF-IDF columns (a TfidfHead's vectoriser and coefficients) + keyword-hit columns, one linear layer."""

    def __init__(self, tfidf: TfidfHead, keywords: dict[str, list[str]], coef: np.ndarray,
                 temperature: float = 1.0, max_hits: int = MAX_HITS) -> None:
        self.tfidf, self.keywords = tfidf, {c: list(k) for c, k in keywords.items()}
        self.coef = np.asarray(coef, dtype=np.float64).reshape(len(tfidf.intercept), len(self.keywords))
        self.temperature, self.max_hits = float(temperature), int(max_hits)

    def hits(self, texts: list[str]) -> np.ndarray:
        return keyword_hits(texts, self.keywords, self.max_hits)

    def scores(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.tfidf.intercept)))
        return self.tfidf.scores(texts) + self.hits(texts) @ self.coef.T

    def proba(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.tfidf.intercept)))
        return softmax(self.scores(texts), self.temperature)

    def save(self, bundle_dir: Path) -> None:
        from safetensors.numpy import save_file

        bundle_dir = Path(bundle_dir)
        self.tfidf.save(bundle_dir)
        doc = {"format": FORMAT, "channels": list(self.keywords), "keywords": self.keywords,
               "max_hits": self.max_hits, "temperature": self.temperature}
        (bundle_dir / KEYWORD_JSON).write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
        save_file({"coef": np.ascontiguousarray(self.coef, dtype=np.float64)}, str(bundle_dir / KEYWORD_TENSORS))

    @classmethod
    def load(cls, bundle_dir: Path, n_classes: int) -> KeywordTfidfHead:
        """Read the four files; ModelError naming the file when one is unreadable or does not fit."""
        from safetensors.numpy import load_file

        bundle_dir = Path(bundle_dir)
        tfidf = TfidfHead.load(bundle_dir, n_classes)
        try:
            doc = json.loads((bundle_dir / KEYWORD_JSON).read_text(encoding="utf-8"))
            coef = load_file(str(bundle_dir / KEYWORD_TENSORS))["coef"]
            keywords = {str(c): [str(w) for w in doc["keywords"][c]] for c in doc["channels"]}
            temperature, max_hits = float(doc["temperature"]), int(doc["max_hits"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{bundle_dir}: unreadable {KEYWORD_JSON}/{KEYWORD_TENSORS} ({exc})") from exc
        if doc.get("format") != FORMAT:
            raise ModelError(f"{bundle_dir}/{KEYWORD_JSON}: unsupported format {doc.get('format')!r} "
                             f"(expected {FORMAT})")
        if coef.shape != (n_classes, len(keywords)):
            raise ModelError(f"{bundle_dir}/{KEYWORD_TENSORS}: coef has shape {tuple(coef.shape)}, expected "
                             f"({n_classes}, {len(keywords)})")
        return cls(tfidf, keywords, coef, temperature, max_hits)


REQUIRED_FILES = (TFIDF_JSON, TFIDF_TENSORS, KEYWORD_JSON, KEYWORD_TENSORS)
