"""Char n-gram TF-IDF + linear head of a classifier bundle (the TF-IDF half of the ensemble), without pickle.

Files inside the bundle:

    tfidf.json                analyzer settings (char n-gram range, lowercase, sublinear_tf, min_df, ...),
                              classifier settings, and the vocabulary as a JSON object term -> column
    tfidf_head.safetensors    idf [F] (float64), coef [C, F] (float32), intercept [C] (float32),
                              temperature [1] (softmax calibration of the linear scores, fitted on validation)

At load time the features are recomputed with `CountVectorizer(vocabulary=...)` + sublinear tf + idf + l2
normalisation (what `TfidfVectorizer` does, without depending on how a sklearn version stores `idf_`), then a
numpy linear layer and a temperature-scaled softmax. Rows of the head follow the bundle's labels.json; a label
absent from the training data gets a zero row and a very negative intercept (probability ~0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError
from xinfang.models.calibration import fit_temperature, softmax

__all__ = ["TfidfHead", "TFIDF_JSON", "TFIDF_TENSORS"]

TFIDF_JSON = "tfidf.json"
TFIDF_TENSORS = "tfidf_head.safetensors"
FORMAT = "xinfang-tfidf/1"
ABSENT_INTERCEPT = -1e4



def fit_vectorizer(texts: list[str], ngram_range: tuple[int, int] = (1, 3), min_df: int = 2,
                   max_features: int | None = 200_000):
    """(settings as tfidf.json records them, the fitted char TfidfVectorizer, the TF-IDF matrix of `texts`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    settings = {"analyzer": "char", "ngram_range": list(ngram_range), "lowercase": True, "sublinear_tf": True,
                "min_df": min_df, "max_features": max_features, "norm": "l2", "use_idf": True, "smooth_idf": True}
    vec = TfidfVectorizer(analyzer="char", ngram_range=tuple(ngram_range), lowercase=True, sublinear_tf=True,
                          min_df=min_df, max_features=max_features, norm="l2", use_idf=True, smooth_idf=True)
    return settings, vec, vec.fit_transform(texts)


def vocabulary_of(vec) -> dict[str, int]:
    """A fitted vectorizer's vocabulary as term -> column, in column order (as tfidf.json stores it)."""
    return {t: int(i) for t, i in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])}

class TfidfHead:
    """Char 1-3-gram TF-IDF (sublinear tf, min_df 2) + LinearSVC scores + temperature-scaled softmax."""

    def __init__(self, settings: dict, vocabulary: dict[str, int], idf: np.ndarray, coef: np.ndarray,
                 intercept: np.ndarray, temperature: float = 1.0) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self.settings = settings
        self.vocabulary = vocabulary
        self.idf = np.asarray(idf, dtype=np.float64)
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.temperature = float(temperature)
        self.counter = CountVectorizer(analyzer=settings["analyzer"], ngram_range=tuple(settings["ngram_range"]),
                                       lowercase=settings["lowercase"], vocabulary=vocabulary, dtype=np.float64)
        self.vectorizer = self.svm = None  # the fitted sklearn objects (only on a freshly fitted head)

    # ----- fitting -----
    @classmethod
    def fit(cls, texts: list[str], y: list[int], n_classes: int, *, ngram_range: tuple[int, int] = (1, 3),
            min_df: int = 2, max_features: int | None = 200_000, C: float = 0.5, seed: int = 13,
            sample_weight: list[float] | None = None) -> TfidfHead:
        """Fit the vectorizer and a LinearSVC on `texts` / class indices `y` (rows for all `n_classes`),
        optionally weighting each example."""
        from sklearn.svm import LinearSVC

        settings, vec, x = fit_vectorizer(texts, ngram_range, min_df, max_features)
        settings.update({"classifier": "LinearSVC", "C": C})
        svm = LinearSVC(C=C, random_state=seed).fit(x, np.asarray(y), sample_weight=sample_weight)
        coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
        intercept = np.full(n_classes, ABSENT_INTERCEPT, dtype=np.float32)
        classes = [int(c) for c in svm.classes_]
        if len(classes) == 2:  # binary LinearSVC has one score d for the second class: use [-d, d]
            coef[classes[0]], coef[classes[1]] = -svm.coef_[0], svm.coef_[0]
            intercept[classes[0]], intercept[classes[1]] = -svm.intercept_[0], svm.intercept_[0]
        else:
            coef[classes] = svm.coef_
            intercept[classes] = svm.intercept_
        head = cls(settings, vocabulary_of(vec), vec.idf_, coef, intercept)
        head.vectorizer, head.svm = vec, svm
        return head

    def calibrate(self, texts: list[str], y: list[int]) -> float:
        """Fit the softmax temperature of the linear scores on validation data (NLL); returns it."""

        self.temperature = fit_temperature(self.scores(texts), np.asarray(y))
        return self.temperature

    # ----- inference -----
    def transform(self, texts: list[str]):
        """TF-IDF features (scipy CSR, float64) exactly as TfidfVectorizer(sublinear_tf, l2) computes them."""
        from sklearn.preprocessing import normalize

        x = self.counter.transform(texts).tocsr()
        if self.settings.get("sublinear_tf", True):
            np.log(x.data, out=x.data)
            x.data += 1.0
        x = x.multiply(self.idf[None, :]).tocsr()
        return normalize(x, norm=self.settings.get("norm", "l2"), copy=False)

    def scores(self, texts: list[str]) -> np.ndarray:
        """Linear scores [N, C] (float64)."""
        if not texts:
            return np.zeros((0, len(self.intercept)))
        x = self.transform(texts)
        return np.asarray(x @ self.coef.T.astype(np.float64)) + self.intercept.astype(np.float64)

    def proba(self, texts: list[str]) -> np.ndarray:
        """Calibrated probabilities (softmax of scores / temperature)."""

        if not texts:
            return np.zeros((0, len(self.intercept)))
        return softmax(self.scores(texts), self.temperature)

    # ----- files -----
    def save(self, bundle_dir: Path) -> None:
        from safetensors.numpy import save_file

        bundle_dir = Path(bundle_dir)
        doc = {"format": FORMAT, **self.settings, "n_features": len(self.vocabulary), "vocabulary": self.vocabulary}
        (bundle_dir / TFIDF_JSON).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        save_file({"idf": np.ascontiguousarray(self.idf, dtype=np.float64),
                   "coef": np.ascontiguousarray(self.coef, dtype=np.float32),
                   "intercept": np.ascontiguousarray(self.intercept, dtype=np.float32),
                   "temperature": np.array([self.temperature], dtype=np.float64)},
                  str(bundle_dir / TFIDF_TENSORS))

    @classmethod
    def load(cls, bundle_dir: Path, n_classes: int) -> TfidfHead:
        """Read tfidf.json + tfidf_head.safetensors; ModelError on an unreadable or inconsistent head."""
        from safetensors.numpy import load_file

        bundle_dir = Path(bundle_dir)
        try:
            doc = json.loads((bundle_dir / TFIDF_JSON).read_text(encoding="utf-8"))
            t = load_file(str(bundle_dir / TFIDF_TENSORS))
            vocab = doc.pop("vocabulary")
            idf, coef, intercept, temp = t["idf"], t["coef"], t["intercept"], float(t["temperature"][0])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{bundle_dir}: unreadable {TFIDF_JSON}/{TFIDF_TENSORS} ({exc})") from exc
        if doc.get("format") != FORMAT:
            raise ModelError(f"{bundle_dir}/{TFIDF_JSON}: unsupported format {doc.get('format')!r} (expected {FORMAT})")
        n = len(vocab)
        if idf.shape != (n,) or coef.shape != (n_classes, n) or intercept.shape != (n_classes,) \
                or sorted(vocab.values()) != list(range(n)):
            raise ModelError(f"{bundle_dir}: TF-IDF head shapes do not match ({n} terms, idf {idf.shape}, "
                             f"coef {coef.shape}, {n_classes} labels)")
        doc.pop("n_features", None)
        doc.pop("format", None)
        return cls(doc, vocab, idf, coef, intercept, temp)
