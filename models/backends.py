"""The backend of a loaded model, chosen once: `base_stack(base, backend)` gives the process's one runner of a
base encoder's layers for that backend (models.stack.TorchStack or models.onnx_runtime.OnnxStack)."""

from __future__ import annotations

import threading

from xinfang.errors import ModelError
from xinfang.models.encoder import BaseEncoder
from xinfang.models.stack import BaseStack, TorchStack

__all__ = ["BACKENDS", "base_stack"]

BACKENDS = ("torch", "onnx", "onnx-int8")

_STACKS: dict[tuple, BaseStack] = {}
_STACKS_LOCK = threading.Lock()


def base_stack(base: BaseEncoder, backend: str = "torch", cache_dir=None, threads: int = 2) -> BaseStack:
    """The process's stack for (base, backend): every bundle and embedder on that base shares it."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    key = (base.fingerprint, backend, str(cache_dir) if backend != "torch" else None)
    with _STACKS_LOCK:
        if key not in _STACKS:
            if backend == "torch":
                _STACKS[key] = TorchStack(base)
            else:
                if cache_dir is None:
                    raise ModelError(f"backend {backend} needs an ONNX cache directory")
                from xinfang.models.onnx_runtime import OnnxStack  # onnxruntime only when asked for

                _STACKS[key] = OnnxStack(base, int8=backend == "onnx-int8", cache_dir=cache_dir, threads=threads)
        return _STACKS[key]
