"""ONNX Runtime backends (`backend="onnx"` / `"onnx-int8"`): the base's layers in segments, each bundle's top.

Files are exported once with torch.onnx.export (TorchScript exporter, dynamic batch and sequence axes) and,
for onnx-int8, dynamically quantized (onnxruntime.quantization.quantize_dynamic, per-channel int8 weights),
then cached under the cache directory (written to a temp name, then renamed):

    base-<fingerprint[:16]>/layers-<a>-<b>[.int8].onnx   the base's embeddings (a = 0) and layers a..b-1: shared
                                                         by every bundle and the embedder on that base
    <task>-<bundle version>/top[.int8].onnx               a bundle's own layers + mean pooling + head

(onnx-int8 keeps only the .int8.onnx files: the fp32 export is removed once quantized).

`OnnxStack` and `OnnxTop` have the interfaces of models.stack.TorchStack and TorchTop, so a bundle or embedder
builds the right one at load (models.stack.base_stack) and nothing is patched afterwards. Tokenization,
calibration and label formatting stay the bundle's own: ONNX answers differ from PyTorch's only by numerical
error (fp32) or quantization error (int8; eval/reports/service_onnx_accuracy.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError
from xinfang.models.stack import BaseStack

log = logging.getLogger(__name__)

OPSET = 17
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


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # like OMP_WAIT_POLICY=PASSIVE
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _export(module, config, inputs: tuple, input_names: list[str], output: str, path: Path) -> None:
    """torch.onnx.export with dynamic batch and sequence axes, to a temporary name then renamed. Eager attention
    while exporting: plain ops export cleanly."""
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    attn = getattr(config, "_attn_implementation", None)
    axes = {name: {0: "batch", 1: "seq"} for name in input_names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "seq"}
    try:
        if attn is not None:
            config._attn_implementation = "eager"
        with torch.no_grad():
            torch.onnx.export(module.eval(), inputs, str(tmp), dynamo=False, input_names=input_names,
                              output_names=[output], opset_version=OPSET, dynamic_axes=axes)
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


def _cached(fp32: Path, int8: bool, export, what: str) -> Path:
    """The cached file for fp32 or int8, exporting (`export(path)`) and quantizing on first use. The int8 cache
    keeps only the quantized file (the fp32 export is an intermediate, removed once quantized)."""
    t0 = time.perf_counter()
    q = fp32.with_name(fp32.stem + ".int8.onnx")
    try:
        if int8 and q.exists():
            return q
        fp32.parent.mkdir(parents=True, exist_ok=True)
        if not fp32.exists():
            export(fp32)
            log.info("exported %s to ONNX in %.1fs", what, time.perf_counter() - t0)
        if not int8:
            return fp32
        _quantize(fp32, q)
        fp32.unlink(missing_ok=True)
        log.info("quantized %s to int8 in %.1fs", what, time.perf_counter() - t0)
        return q
    except ModelError:
        raise
    except Exception as exc:  # export/quantization failures are model problems the caller reports
        raise ModelError(f"{what}: cannot convert to {'onnx-int8' if int8 else 'onnx'}: {exc}") from exc


def _sample(base, n: int = 2):
    enc = base.tokenize(["样例文本 example", "第二条较长的样例文本，用于导出动态长度"][:n], 32, "pt")
    return enc["input_ids"], enc["attention_mask"]


class _Segment:
    """torch module of the base's embeddings (a == 0) and layers a..b-1, for export."""

    def __new__(cls, model, a: int, b: int):
        import torch

        from xinfang.models.encoder import encoder_layers
        from xinfang.models.stack import run_layers

        class Segment(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                self.layers = encoder_layers(model)[a:b]

            def forward(self, x, attention_mask):
                hidden = self.model.embeddings(input_ids=x) if a == 0 else x
                return run_layers(self.model, self.layers, hidden, attention_mask)

        return Segment()


class OnnxStack(BaseStack):
    """The base's segments as ONNX Runtime sessions (one file per segment, shared by all bundles)."""

    def __init__(self, base, int8: bool, cache_dir: Path, threads: int = 2) -> None:
        super().__init__(base)
        self.backend = "onnx-int8" if int8 else "onnx"
        self.int8, self.threads = int8, threads
        self.folder = Path(cache_dir) / f"base-{base.fingerprint[:16]}"
        self._sessions: dict[tuple[int, int], object] = {}
        self._files: dict[tuple[int, int], Path] = {}
        self._lock = threading.Lock()

    def segment_file(self, a: int, b: int) -> Path:
        """The ONNX file of segment [a, b) (exported/quantized on first use)."""
        self.prepare(a, b)
        return self._files[(a, b)]

    def prepare(self, a: int, b: int) -> None:
        if a > 0 and b <= a:
            return
        with self._lock:
            if (a, b) in self._sessions:
                return

            def export(path: Path) -> None:
                model = self.base.load_model()
                ids, mask = _sample(self.base)
                x = ids if a == 0 else model.embeddings(input_ids=ids).detach()
                _export(_Segment(model, a, b), model.config, (x, mask), ["x", "attention_mask"], "hidden", path)

            path = _cached(self.folder / f"layers-{a}-{b}.onnx", self.int8, export,
                           f"{self.base.path} layers {a}-{b}")
            self._files[(a, b)] = path
            self._sessions[(a, b)] = _session(path, self.threads)

    def run(self, x, mask, a: int, b: int):
        if a > 0 and b <= a:
            return x
        self.prepare(a, b)
        x = np.asarray(x)
        feeds = {"x": x.astype(np.int64) if a == 0 else x.astype(np.float32),
                 "attention_mask": np.asarray(mask).astype(np.int64)}
        return self._sessions[(a, b)].run(["hidden"], feeds)[0]


class OnnxTop:
    """A bundle's own layers + mean pooling + head as one ONNX Runtime session (cached per bundle version)."""

    def __init__(self, bundle, cache_dir: Path, int8: bool, threads: int = 2) -> None:
        if cache_dir is None:
            raise ModelError(f"{bundle.path}: backend {bundle.backend} needs an ONNX cache directory")
        folder = cache_folder(cache_dir, bundle.task, bundle.version)

        def export(path: Path) -> None:
            import torch

            from xinfang.models.stack import TorchTop, mean_pool, run_layers

            model = bundle.base.load_model()
            top = TorchTop(model, bundle.shared_layers, bundle.layers, bundle.head_w, bundle.head_b)

            class Top(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model, self.layers = model, top.layers
                    self.register_buffer("w", top.head_w.detach().clone())
                    self.register_buffer("b", top.head_b.detach().clone())

                def forward(self, hidden, attention_mask):
                    h = run_layers(self.model, self.layers, hidden, attention_mask)
                    return mean_pool(h, attention_mask) @ self.w.T + self.b

            ids, mask = _sample(bundle.base)
            with torch.no_grad():
                hidden = _Segment(model, 0, bundle.shared_layers)(ids, mask)
            _export(Top(), model.config, (hidden, mask), ["hidden", "attention_mask"], "logits", path)

        self.path = _cached(folder / "top.onnx", int8, export, f"{bundle.path}")
        self.session = _session(self.path, threads)

    def logits(self, hidden, mask) -> np.ndarray:
        feeds = {"hidden": np.asarray(hidden).astype(np.float32), "attention_mask": np.asarray(mask).astype(np.int64)}
        return self.session.run(["logits"], feeds)[0]


def int8_fingerprint(fp32_fingerprint: str, int8_files: list[Path]) -> str:
    """Fingerprint of an int8 embedder: the fp32 one plus the quantized files' bytes. Its vectors approximate the
    fp32 ones, so an index built by one is refused by the other (rebuilt from the store)."""
    from xinfang.hashing import sha256_file

    digests = ",".join(sha256_file(p) for p in int8_files)
    return hashlib.sha256(f"{fp32_fingerprint};onnx-int8={digests}".encode()).hexdigest()
