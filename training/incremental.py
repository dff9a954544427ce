"""Incremental training: continue from a trained bundle (usually the promoted registry version).

The parent bundle's fine-tuned encoder is the starting point (same frozen/trainable layer split as the
recipe), and its head is the starting head: each old label keeps its row (weights and bias copied), new
labels (e.g. a new department) get new rows appended (small seeded normal init, zero bias), so the label
order of the parent is preserved and extended. Old labels that are absent from the new data stay in the
head. Everything else (normalisation, group-aware split, frozen-state cache, calibration, review
threshold, bundle format) is the colleague's training code in ``xinfang.training.classifier``; the
bundle's config.json records ``parent`` (bundle version and registry version) and ``incremental``
(kept and new labels). A parent with a TF-IDF head (the ensemble) gets a new one, refitted from scratch on the
new training part (cheap), and the ensemble weight is chosen again (unless ``recipe.tfidf`` is False).
Seeded: the same inputs give the same bundle.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from xinfang.errors import DataError, ModelError

log = logging.getLogger(__name__)


def extend_head(old_w, old_b, old_labels: list[str], new_labels: list[str], seed: int):
    """Head for ``old_labels + [l for l in new_labels if l not in old_labels]``: old rows copied."""
    import torch

    added = [lab for lab in new_labels if lab not in old_labels]
    labels = list(old_labels) + added
    gen = torch.Generator().manual_seed(seed)
    w = torch.empty(len(labels), old_w.shape[1])
    w[: len(old_labels)] = old_w
    if added:
        w[len(old_labels):] = torch.randn(len(added), old_w.shape[1], generator=gen) * 0.02
    b = torch.zeros(len(labels))
    b[: len(old_labels)] = old_b
    return w, b, labels, added


def train_incremental(records: list[dict], *, parent_dir: str | Path, out_dir: str | Path,
                      recipe="tiny", seed: int = 13, label_column: str | None = None,
                      parent_version: str | None = None, source: str = "data", progress: bool = False,
                      cache=None):
    """Continue training the bundle in ``parent_dir`` on ``records``; write a new bundle to ``out_dir``.

    Returns the colleague's ``TrainResult``. Raises DataError when the data's label column is missing.
    ``cache`` (a ``FrozenCache``) is reused when it holds the states entering the same first trainable
    layer with the same length and prefix, and that layer was frozen when the parent was trained (so the
    parent's lower layers equal the base encoder's).
    """
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from xinfang.models.classifier import ENCODER_DIR, verify_manifest
    from xinfang.training.classifier import (
        RECIPES,
        FrozenCache,
        TrainResult,
        _device,
        _layers,
        calibrate,
        fine_tune,
        fit_tfidf,
        prepare_examples,
        run_record,
        save_bundle,
        seeded_group_split,
        top_logits,
    )

    t_start = time.perf_counter()
    parent_dir = Path(parent_dir)
    manifest = verify_manifest(parent_dir)
    pcfg = json.loads((parent_dir / "config.json").read_text("utf-8"))
    old_labels = json.loads((parent_dir / "labels.json").read_text("utf-8"))
    task = pcfg["task"]
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise DataError(f"unknown recipe '{recipe}'; choose one of: {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    label_column = label_column or pcfg.get("label_column") or task
    ex = prepare_examples(records, label_column, source, recipe.min_class_count)
    head = load_file(str(parent_dir / "head.safetensors"))
    head_w, head_b, labels, added = extend_head(head["weight"], head["bias"], old_labels,
                                                sorted(set(ex.labels)), seed)
    y_all = [labels.index(v) for v in ex.labels]
    groups, tr, va = seeded_group_split(ex, recipe.val_fraction, seed, source)

    enc_path = parent_dir / ENCODER_DIR
    try:
        tokenizer = AutoTokenizer.from_pretrained(enc_path, local_files_only=True)
        model = AutoModel.from_pretrained(enc_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the parent encoder from {enc_path}: {exc}") from exc
    dev = _device()
    model.to(dev)
    n_layers = len(_layers(model))
    n_frozen = n_layers - max(0, min(recipe.trainable_layers, n_layers))
    max_length = int(pcfg.get("max_length", recipe.max_length))
    prefix = pcfg.get("text_prefix", "")
    parent_frozen = len(pcfg.get("frozen", {}).get("layers", []))
    if cache is None or (cache.n_frozen, cache.max_length, cache.prefix) != (n_frozen, max_length, prefix) \
            or n_frozen > parent_frozen:
        cache = FrozenCache(enc_path, n_frozen, max_length, prefix)
    cache.fill(model, tokenizer, ex.texts, progress=progress)
    tr_texts, va_texts = [ex.texts[i] for i in tr], [ex.texts[i] for i in va]
    tr_y, va_y = [y_all[i] for i in tr], [y_all[i] for i in va]
    t_ft = time.perf_counter()
    new_w, new_b, epochs = fine_tune(model, cache, tr_texts, tr_y, len(labels), recipe, seed, progress=progress,
                                     init_head=(head_w.to(dev), head_b.to(dev)))
    ft_seconds = time.perf_counter() - t_ft
    top = _layers(model)[n_frozen:]
    va_logits = top_logits(model, top, new_w.to(dev), new_b.to(dev), cache, va_texts, dev)
    tfidf = fit_tfidf(tr_texts, tr_y, len(labels), seed, source) \
        if pcfg.get("ensemble") and getattr(recipe, "tfidf", True) else None
    temperature, review, metrics, ensemble, _ = calibrate(va_logits, va_y, labels, recipe, va_texts, tfidf)
    metrics["epochs"] = epochs
    metrics["split"] = {"n_train": len(tr), "n_val": len(va), "n_groups": len(set(groups))}

    config = dict(pcfg)
    config.update({
        "name": f"{task}-incremental",
        "label_column": label_column,
        "max_length": max_length,
        "recipe": {**pcfg.get("recipe", {}), **{k: getattr(recipe, k) for k in
                                                ("name", "trainable_layers", "epochs", "batch_size", "lr",
                                                 "head_lr", "val_fraction", "target_precision", "tfidf")}},
        **run_record(ex, tr, va, tr_texts, tr_y, labels, recipe, seed, n_frozen, temperature, ensemble, review, dev),
        "fine_tune_seconds": ft_seconds,
        "parent": {"bundle_version": manifest.get("version"), "registry_version": parent_version,
                   "path": str(parent_dir)},
        "incremental": {"kept_labels": list(old_labels), "new_labels": added,
                        "labels_absent_from_data": [lab for lab in old_labels if lab not in set(ex.labels)]},
    })
    config["train_seconds"] = time.perf_counter() - t_start
    version = save_bundle(Path(out_dir), model, tokenizer, new_w, new_b, labels, config, metrics,
                          tfidf if ensemble else None)
    log.info("incremental %s bundle %s from %s: %d labels (%d new) in %.1fs", task, version,
             parent_version or manifest.get("version"), len(labels), len(added), config["train_seconds"])
    return TrainResult(Path(out_dir), version, metrics, config["train_seconds"], len(tr), len(va))
