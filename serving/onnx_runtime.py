"""ONNX Runtime path for the classification bundles (XINFANG_RUNTIME=onnx|onnx-int8).

Each bundle's encoder + mean pooling + linear head is exported once to ONNX (torch.onnx.export, TorchScript
exporter, dynamic batch and sequence axes) and, for onnx-int8, dynamically quantized
(onnxruntime.quantization.quantize_dynamic, per-channel int8 weights for MatMul/Gather). Files are cached under
`<data dir>/onnx/<task>-<bundle version>/` (written to a temp name, then renamed), so a restart or a reload
of the same bundle does not export again.

`use_onnx(pipeline, ...)` replaces each bundle's `logits(texts)` on the loaded instance with the ONNX one;
tokenization, calibration (temperature), label formatting and review thresholds stay the bundle's own, so
the ONNX answers differ from PyTorch's only by numerical error (measured in eval/bench_service.py).

`use_onnx_embedder(embedder, ...)` does the same for the repeat-search embedder: fp32 keeps its fingerprint,
int8 gives it its own (stored vectors of one are never compared with queries of the other).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError

log = logging.getLogger(__name__)

OPSET = 17


def _export(bundle, path: Path) -> None:
    import torch

    from xinfang.models.classifier import mean_pool

    class EncoderHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = bundle.encoder
            self.register_buffer("w", bundle.head_w.detach().float().clone())
            self.register_buffer("b", bundle.head_b.detach().float().clone())

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pool(hidden, attention_mask) @ self.w.T + self.b

    enc = bundle._tokenize(["样例文本 example", "第二条较长的样例文本，用于导出动态长度"])
    _export_module(EncoderHead().eval(), bundle.encoder.config, enc, "logits", path)


def _export_module(model, config, enc, output: str, path: Path) -> None:
    """torch.onnx.export of `model(input_ids, attention_mask) -> output` with dynamic batch and sequence axes,
    written to a temporary name then renamed. Eager attention while exporting: plain ops export cleanly."""
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    attn = getattr(config, "_attn_implementation", None)
    try:
        if attn is not None:
            config._attn_implementation = "eager"
        with torch.no_grad():
            torch.onnx.export(
                model, (enc["input_ids"], enc["attention_mask"]), str(tmp), dynamo=False,
                input_names=["input_ids", "attention_mask"], output_names=[output], opset_version=OPSET,
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                              output: {0: "batch"}})
        os.replace(tmp, path)
    finally:
        if attn is not None:
            config._attn_implementation = attn
        tmp.unlink(missing_ok=True)


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every tensor on the root logger
    try:
        # per-channel weight scales: top-1 agreement with PyTorch 0.97 instead of 0.93 (per-tensor) on 300 real
        # petitions, see eval/reports/service_onnx_accuracy.md
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, dst)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)


_CACHE_NAME = re.compile(r"[a-z]{1,32}-[0-9a-f]{16}")


def cache_folder(cache_dir: Path, task: str, version: str) -> Path:
    """`<cache>/<task>-<version>`, refused (ModelError) unless it is a plain name inside the cache: the version
    is the 16-hex-digit hash recomputed from the bundle's files (models.classifier.read_manifest)."""
    name = f"{task}-{version}"
    root = Path(cache_dir).resolve()
    folder = root / name
    if not _CACHE_NAME.fullmatch(name) or folder.resolve().parent != root:
        raise ModelError(f"bundle task/version {name[:80]!r} cannot name an ONNX cache folder")
    return folder


def onnx_model_path(bundle, runtime: str, cache_dir: Path) -> Path:
    """The cached ONNX file of a bundle for `runtime` (exported/quantized on first use)."""
    folder = cache_folder(cache_dir, bundle.task, bundle.version)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    t0 = time.perf_counter()
    try:
        if not fp32.exists():
            _export(bundle, fp32)
            log.info("exported %s to ONNX in %.1fs", bundle.path, time.perf_counter() - t0)
        if runtime == "onnx":
            return fp32
        int8 = folder / "model.int8-per-channel.onnx"
        if not int8.exists():
            _quantize(fp32, int8)
            log.info("quantized %s to int8 in %.1fs", bundle.path, time.perf_counter() - t0)
        return int8
    except Exception as exc:  # export/quantization failures are model problems the caller reports
        raise ModelError(f"{bundle.path}: cannot convert to {runtime}: {exc}") from exc


class OnnxLogits:
    """`logits(texts)` of a bundle computed by ONNX Runtime (same tokenization and batching as the bundle)."""

    def __init__(self, bundle, model_path: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # like OMP_WAIT_POLICY=PASSIVE
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.bundle = bundle
        self.path = model_path

    def __call__(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        n_labels = len(self.bundle.labels)
        if not texts:
            return np.zeros((0, n_labels), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), n_labels), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.bundle._tokenize([texts[i] for i in idx])
            feeds = {"input_ids": enc["input_ids"].numpy().astype(np.int64),
                     "attention_mask": enc["attention_mask"].numpy().astype(np.int64)}
            out[idx] = self.session.run(["logits"], feeds)[0]
        return out


def _export_embedder(embedder, path: Path) -> None:
    import torch

    from xinfang.models.classifier import mean_pool

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = embedder._model

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return torch.nn.functional.normalize(mean_pool(hidden, attention_mask), p=2, dim=1)

    enc = embedder._tokenizer([embedder.prefix + "样例文本", embedder.prefix + "第二条较长的样例文本，用于导出"],
                              padding=True, truncation=True, max_length=embedder.max_length, return_tensors="pt")
    _export_module(Pooled().eval(), embedder._model.config, enc, "embedding", path)


class OnnxEncode:
    """`Embedder.encode(texts)` by ONNX Runtime (same prefix, truncation, pooling and normalisation)."""

    def __init__(self, embedder, model_path: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.embedder = embedder
        self.path = model_path

    def __call__(self, texts: list[str]) -> np.ndarray:
        e = self.embedder
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        out = np.zeros((len(texts), e.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i] or ""))
        for start in range(0, len(order), e.batch_size):
            idx = order[start:start + e.batch_size]
            enc = e._tokenizer([e.prefix + (texts[i] or "") for i in idx], padding=True, truncation=True,
                               max_length=e.max_length, return_tensors="np")
            out[idx] = self.session.run(["embedding"], {"input_ids": enc["input_ids"].astype(np.int64),
                                                        "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        return out


def int8_fingerprint(fp32_fingerprint: str, int8_path: Path) -> str:
    """Fingerprint of the int8 embedder: the fp32 one plus the quantized file's bytes. Its vectors are an
    approximation of the fp32 ones, so an index built by one is refused by the other (rebuilt from the store)."""
    from xinfang.hashing import sha256_file

    return hashlib.sha256(f"{fp32_fingerprint};onnx-int8={sha256_file(int8_path)}".encode()).hexdigest()


def use_onnx_embedder(embedder, cache_dir: Path, threads: int = 2, int8: bool = False) -> str:
    """Switch an Embedder's encode() to ONNX Runtime (exported once per fingerprint); returns the file used.

    fp32 keeps the embedder's fingerprint (same vectors as PyTorch up to float rounding). int8 (dynamic,
    per-channel weights) sets `embedder.fingerprint` to `int8_fingerprint(...)`: about twice as fast on CPU,
    cosine with fp32 ~0.99 (eval/reports/service_quiet.md)."""
    folder = Path(cache_dir) / f"embedder-{embedder.fingerprint[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    t0 = time.perf_counter()
    try:  # as onnx_model_path: export once, quantize once, both cached
        if not path.exists():
            _export_embedder(embedder, path)
            log.info("exported the embedder to ONNX in %.1fs", time.perf_counter() - t0)
        if int8:
            fp32, path = path, folder / "model.int8-per-channel.onnx"
            if not path.exists():
                _quantize(fp32, path)
                log.info("quantized the embedder to int8 in %.1fs", time.perf_counter() - t0)
    except Exception as exc:  # export/quantization failures are model problems the caller reports
        raise ModelError(f"{embedder.encoder_dir}: cannot convert the embedder to "
                         f"{'onnx-int8' if int8 else 'onnx'}: {exc}") from exc
    if int8:
        embedder.fingerprint = int8_fingerprint(embedder.fingerprint, path)
    embedder.encode = OnnxEncode(embedder, path, threads)
    embedder._model = None  # the session replaces it: frees the PyTorch weights
    return str(path)


def use_onnx(pipeline, runtime: str, cache_dir: Path, threads: int = 2) -> dict[str, str]:
    """Switch every bundle of `pipeline` to ONNX Runtime; returns task -> ONNX file used."""
    if runtime not in ("onnx", "onnx-int8"):
        raise ModelError(f"unknown ONNX runtime {runtime!r}")
    used = {}
    for task, bundle in pipeline.bundles.items():
        path = onnx_model_path(bundle, runtime, cache_dir)
        bundle.logits = OnnxLogits(bundle, path, threads)
        bundle.encoder = None  # the session replaces it: frees the PyTorch weights (~470 MB for e5-small)
        used[task] = str(path)
    return used
