"""Labelled examples a department bundle keeps as routing evidence: the labels of a petition's nearest neighbours.

The examples are the bundle's training part (hand labels and weighted history labels) as vectors of the bundle's
own char TF-IDF head (models/tfidf_head.py). For a petition, the evidence of department d is the share of d
among its `k` nearest examples (cosine), each counted by its similarity and its label weight; shares sum to 1
(all 0 when no example shares a character n-gram). Saved as `neighbours.safetensors` (CSR arrays, labels,
weights); no text is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xinfang.errors import ModelError

__all__ = ["NEIGHBOURS_FILE", "Neighbours"]

NEIGHBOURS_FILE = "neighbours.safetensors"
DEFAULT_K = 10


class Neighbours:
    def __init__(self, x, y: np.ndarray, w: np.ndarray, n_labels: int, k: int = DEFAULT_K) -> None:
        self.x = x.tocsr().astype(np.float32)  # (n_examples, n_features), rows L2-normalised
        self.y = np.asarray(y, dtype=np.int64)
        self.w = np.asarray(w, dtype=np.float32)
        self.n_labels = int(n_labels)
        self.k = int(k)
        if self.x.shape[0] != len(self.y) or len(self.y) != len(self.w) or (len(self.y) and
                                                                          self.y.max() >= self.n_labels):
            raise ModelError(f"neighbours: {self.x.shape[0]} vectors, {len(self.y)} labels, {len(self.w)} weights "
                             f"for {self.n_labels} classes do not fit")

    def shares(self, q) -> np.ndarray:
        """(n, n_labels) similarity- and weight-weighted label shares among the k nearest examples of rows `q`."""
        out = np.zeros((q.shape[0], self.n_labels))
        if q.shape[0] == 0 or self.x.shape[0] == 0:
            return out
        sims = np.asarray((q.astype(np.float32) @ self.x.T).todense())
        k = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows = np.arange(q.shape[0])[:, None]
        np.add.at(out, (rows, self.y[idx]), np.clip(sims[rows, idx], 0.0, None) * self.w[idx])
        return out / np.clip(out.sum(1, keepdims=True), 1e-12, None)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"data": self.x.data.astype(np.float32), "indices": self.x.indices.astype(np.int64),
                   "indptr": self.x.indptr.astype(np.int64), "labels": self.y, "weights": self.w,
                   "shape": np.array([*self.x.shape, self.n_labels, self.k], dtype=np.int64)}, str(path))

    @classmethod
    def load(cls, path: Path) -> Neighbours:
        from safetensors.numpy import load_file
        from scipy.sparse import csr_matrix

        try:
            t = load_file(str(path))
            n, f, n_labels, k = (int(v) for v in t["shape"])
            x = csr_matrix((t["data"], t["indices"], t["indptr"]), shape=(n, f))
            return cls(x, t["labels"], t["weights"], n_labels, k)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: unreadable neighbours file ({exc})") from exc
