"""Classifier model bundles: a fine-tuned encoder + linear head, loaded, verified and used for prediction.

A bundle is one directory (written by `xinfang train`, see xinfang.training.classifier):

    encoder/              fine-tuned encoder (config.json, model.safetensors, tokenizer files)
    head.safetensors      linear head over mean-pooled token states: weight [C, H], bias [C]
    labels.json           label list (index = head row)
    config.json           task, base encoder, max_length, text prefix, normalisation, recipe, seed,
                          data fingerprint, temperature, review threshold and its stated precision,
                          ensemble (weight, final temperature; null for an encoder-only bundle)
    tfidf.json, tfidf_head.safetensors
                          char TF-IDF + linear head of the ensemble (xinfang.models.tfidf_head); present when
                          config.json has an ensemble (bundles from before the ensemble have neither)
    metrics.json          validation metrics (before/after calibration)
    MODEL_CARD.md, confusion_matrix.png
    manifest.json         sha256 of every other file; checked on load (ModelError naming the file)

No pickle anywhere: tensors are safetensors, everything else JSON/markdown/PNG.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path, PurePosixPath

import numpy as np

from xinfang.errors import DataError, ModelError
from xinfang.hashing import sha256_file

__all__ = ["ClassifierBundle", "write_manifest", "verify_manifest", "read_manifest", "manifest_version", "mean_pool",
           "petition_input"]

BUNDLE_FORMAT = "xinfang-classifier/1"
MANIFEST = "manifest.json"
ENCODER_DIR = "encoder"
DUTY_LIST_FILE = "duty_list.yaml"  # department bundles: the duty list they were trained with (routing evidence)
_SHA256 = re.compile(r"[0-9a-f]{64}")
REQUIRED = ("head.safetensors", "labels.json", "config.json", f"{ENCODER_DIR}/config.json")




def manifest_version(files: dict[str, str]) -> str:
    """The bundle version: the first 16 hex digits of the sha256 of the manifest's {file: sha256} map."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(bundle_dir: Path) -> str:
    """Hash every file of the bundle into manifest.json; return the bundle version (hash of the hashes)."""
    bundle_dir = Path(bundle_dir)
    files = {p.relative_to(bundle_dir).as_posix(): sha256_file(p)
             for p in sorted(bundle_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    version = manifest_version(files)
    (bundle_dir / MANIFEST).write_text(json.dumps({"format": BUNDLE_FORMAT, "version": version, "files": files},
                                                  indent=2, ensure_ascii=False), encoding="utf-8")
    return version


def verify_manifest(bundle_dir: Path) -> dict:
    """Check every file listed in manifest.json against its sha256; raise ModelError naming the first bad one."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.exists():
        raise ModelError(f"{bundle_dir}: not a model bundle (no {MANIFEST})")
    manifest = read_manifest(bundle_dir)
    files = manifest["files"]
    for name in REQUIRED:
        if name not in files:
            raise ModelError(f"{bundle_dir}: manifest does not list required file {name}")
    for name, digest in files.items():
        f = bundle_dir / name
        if not f.is_file():
            raise ModelError(f"{bundle_dir}: file {name} listed in the manifest is missing")
        if sha256_file(f) != digest:
            raise ModelError(f"{bundle_dir}: file {name} does not match its sha256 in the manifest "
                             "(modified or corrupted)")
    return manifest


def read_manifest(bundle_dir: Path) -> dict:
    """manifest.json of a bundle, checked for shape: every entry a relative path that stays inside the bundle
    with a sha256 digest, and `version` the one computed from the entries (ModelError naming what is wrong).
    The file digests themselves are checked by verify_manifest."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from exc
    root = bundle_dir.resolve()
    for name, digest in files.items():
        rel = PurePosixPath(name)
        if (not name or rel.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in name.split("/"))
                or not (root / rel).resolve().is_relative_to(root)):
            raise ModelError(f"{path}: manifest entry {name!r} is not a relative path inside the bundle")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelError(f"{path}: manifest entry {name!r} has no sha256 digest")
    version = manifest_version(files)
    if manifest.get("version") != version:
        raise ModelError(f"{path}: manifest version {str(manifest.get('version'))[:40]!r} is not the one its files "
                         f"give ({version})")
    return manifest


def mean_pool(hidden, mask):
    """Mean of token states over the attention mask ([B, L, H], [B, L] -> [B, H])."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def petition_input(petition: dict, max_chars: int = 8000, where: str = "") -> str:
    """Normalised model input of one petition dict (title and/or text); DataError when both are empty."""
    from xinfang.models.normalize import petition_text

    if not isinstance(petition, dict):
        raise DataError(f"{where or 'petition'}: expected an object with title/text, got {type(petition).__name__}")
    text = petition_text(petition.get("title"), petition.get("text"), max_chars)
    if not text:
        pid = petition.get("id")
        raise DataError(f"{where or 'petition'}{f' (id {pid})' if pid is not None else ''}: "
                        "title and text are both empty or whitespace")
    return text


class ClassifierBundle:
    """A loaded, verified classifier bundle. Inference is thread-safe (read-only model, locked tokenizer)."""

    def __init__(self, path: Path, config: dict, labels: list[str], tokenizer, encoder, head_w, head_b,
                 version: str, metrics: dict | None = None, tfidf=None, duty_list=None, routing=None) -> None:
        self.path = Path(path)
        self.config = config
        self.labels = list(labels)
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head_w = head_w
        self.head_b = head_b
        self.version = version
        self.metrics = metrics or {}
        self.tfidf = tfidf  # TfidfHead of the ensemble, or None (encoder only)
        self.duty_list = duty_list  # DutyList the bundle was trained with (department), or None
        self.routing = routing  # RoutingModel over model + duty-list evidence (department), or None
        self._tok_lock = threading.Lock()  # HF fast tokenizers are not safe to call concurrently

    # ----- identity -----
    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def name(self) -> str:
        return self.config.get("name") or f"{self.task}-{self.version[:8]}"

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.config.get("review", {}).get("threshold", 0.0))

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    def info(self) -> dict:
        review = self.config.get("review", {})
        return {"name": self.name, "task": self.task, "version": self.version, "labels": self.labels,
                "base_encoder": self.config.get("base_encoder"), "review_threshold": self.threshold,
                "review_target_precision": review.get("target_precision"), "path": str(self.path)}

    # ----- loading -----
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> ClassifierBundle:
        """Load a bundle directory; with `verify` every file is checked against manifest.json first."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"{path}: model bundle directory not found")
        manifest = verify_manifest(path) if verify else read_manifest(path)
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            labels = json.loads((path / "labels.json").read_text(encoding="utf-8"))
            metrics = json.loads((path / "metrics.json").read_text("utf-8")) if (path / "metrics.json").exists() else {}
        except ValueError as exc:
            raise ModelError(f"{path}: unreadable config.json/labels.json ({exc})") from exc
        if config.get("format") != BUNDLE_FORMAT:
            raise ModelError(f"{path}: unsupported bundle format {config.get('format')!r} (expected {BUNDLE_FORMAT})")
        try:
            head = load_file(str(path / "head.safetensors"))
            tokenizer = AutoTokenizer.from_pretrained(path / ENCODER_DIR, local_files_only=True)
            # safetensors only: a bundle whose encoder weights are a pickle is refused, never unpickled
            encoder = AutoModel.from_pretrained(path / ENCODER_DIR, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot load encoder/head ({exc})") from exc
        encoder.eval()
        if head["weight"].shape[0] != len(labels):
            raise ModelError(f"{path}: head has {head['weight'].shape[0]} rows but labels.json lists {len(labels)}")
        tfidf = None
        if config.get("ensemble"):
            from xinfang.models.tfidf_head import TFIDF_JSON, TFIDF_TENSORS, TfidfHead

            for name in (TFIDF_JSON, TFIDF_TENSORS):
                if verify and name not in manifest["files"]:
                    raise ModelError(f"{path}: config.json has an ensemble but the manifest does not list {name}")
            tfidf = TfidfHead.load(path, len(labels))
        duty = None
        if config.get("duty_list"):
            from xinfang.models.duty_list import DutyList

            duty = DutyList.load(path / DUTY_LIST_FILE)
        routing = None
        if config.get("routing"):
            from xinfang.models.routing import ROUTING_FILE, RoutingModel

            routing = RoutingModel.load(path / ROUTING_FILE)
            if routing.labels != labels:
                raise ModelError(f"{path}: {ROUTING_FILE} labels differ from labels.json")
        return cls(path, config, labels, tokenizer, encoder, head["weight"], head["bias"], manifest["version"], metrics,
                   tfidf, duty, routing)

    # ----- inference -----
    def _tokenize(self, texts: list[str]):
        prefix = self.config.get("text_prefix", "")
        with self._tok_lock:
            return self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length,
                                  padding=True, return_tensors="pt")

    def logits(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Raw head logits for normalised texts (batched, length-sorted for dynamic padding, order kept)."""
        import torch

        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc=f"predict {self.task}", unit="petition")
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = self._tokenize([texts[i] for i in idx])
                hidden = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                pooled = mean_pool(hidden, enc["attention_mask"])
                out[idx] = (pooled @ self.head_w.T + self.head_b).float().numpy()
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    @property
    def ensemble(self) -> dict | None:
        """The ensemble settings of config.json (weight, final temperature), or None for an encoder-only bundle."""
        return self.config.get("ensemble") or None

    def proba_texts(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Calibrated probabilities for normalised texts: softmax(logits / temperature) of the encoder, mixed
        with the TF-IDF head's when the bundle has the ensemble (see xinfang.models.calibration.ensemble_proba)."""
        from xinfang.models.calibration import ensemble_proba, softmax

        p = softmax(self.logits(texts, batch_size, progress), self.temperature)
        ens = self.ensemble
        if ens is None:
            return p

        weight = float(ens["weight"])
        p_tfidf = self.tfidf.proba(texts) if weight < 1.0 else None
        return ensemble_proba(p, p_tfidf, weight, float(ens.get("temperature", 1.0)))

    def predict_proba(self, petitions: list[dict], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        max_chars = int(self.config.get("normalization", {}).get("max_chars", 8000))
        texts = [petition_input(p, max_chars, f"petition {i + 1}") for i, p in enumerate(petitions)]
        return self.proba_texts(texts, batch_size, progress)

    def format(self, probs: np.ndarray, top_k: int = 3) -> list[dict]:
        k = max(1, min(top_k, len(self.labels)))
        rows = []
        for p in probs:
            top = np.argsort(-p, kind="stable")[:k]
            rows.append({"label": self.labels[top[0]], "score": round(float(p[top[0]]), 6),
                         "top": [{"label": self.labels[j], "score": round(float(p[j]), 6)} for j in top]})
        return rows

    def predict(self, petitions: list[dict], batch_size: int = 32, top_k: int = 3) -> list[dict]:
        """One `{"label", "score", "top": [{"label", "score"}, ...]}` per petition, in input order."""
        return self.format(self.predict_proba(petitions, batch_size), top_k)

    def needs_review(self, score: float) -> bool:
        """True when a calibrated top score is under the review threshold chosen on validation data."""
        return float(score) < self.threshold
