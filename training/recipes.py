"""Training recipes: the knobs of a classifier fine-tuning run, by name (`xinfang train --recipe`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from xinfang.errors import DataError

__all__ = ["Recipe", "RECIPES", "resolve_recipe", "recipe_with", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """Training knobs. Embeddings are always frozen; `trainable_layers` top layers are fine-tuned."""

    name: str = "default"
    max_length: int = 128
    trainable_layers: int = 4
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1.5e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    dropout: float = 0.1
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    target_precision: float = 0.95
    min_class_count: int = 2
    tfidf: bool = True  # also fit the char TF-IDF head and ship the validated ensemble (see calibrate)
    text_only: bool = False  # no encoder at all: the channel's TF-IDF + keyword regression (training/channel_text.py)


RECIPES: dict[str, Recipe] = {
    # 3 epochs: topic 5-fold macro-F1 0.920 vs 0.916 with 2 (eval/reports/classification.md)
    "default": Recipe(epochs=3),
    # small label sets with many classes (department: ~1.4k rows, 24 labels): more epochs, larger validation
    # review threshold: auto-routed answers at precision >= 0.95 (a wrong department is a petition passed on)
    "department": Recipe(name="department", max_length=64, trainable_layers=2, epochs=4, lr=1.5e-4, head_lr=3e-3,
                         val_fraction=0.15, target_precision=0.95),
    # department default since 2026-11-28: 256 tokens read the whole of most petitions (5-fold accuracy 0.683 vs
    # 0.649 for `department`; eval/reports/classification.md)
    "department-long": Recipe(name="department-long", max_length=256, trainable_layers=4, epochs=4, lr=1.5e-4,
                              head_lr=3e-3, val_fraction=0.15, target_precision=0.95),
    # topic at 256 tokens: about twice the default's cost
    "topic-long": Recipe(name="topic-long", max_length=256, trainable_layers=4),
    # for a GPU: every encoder layer trained (the embeddings stay frozen); far too slow for the 2-core CPU
    "full": Recipe(name="full", trainable_layers=12, epochs=3, lr=5e-5),
    "department-full": Recipe(name="department-full", max_length=256, trainable_layers=12, epochs=6, lr=5e-5,
                              head_lr=3e-3, val_fraction=0.15, target_precision=0.95),
    # a quarter of the default's cost, for a crowded CPU (topic fold 0: 0.876 fine-tuned, 0.910 ensemble vs the
    # default's 0.904 / 0.917; eval/reports/classification.md)
    "fast": Recipe(name="fast", max_length=64, trainable_layers=2),
    # legal channel (诉访分离) with an encoder (the default until 2026-12-02): ~300 hand labels with rare classes plus
    # weak labels from replies; the TF-IDF half of the ensemble and the channel table's keywords carry much of it:
    # the top layer only, 128 tokens, a larger validation part (eval/reports/channels.md)
    "channel": Recipe(name="channel", max_length=128, trainable_layers=1, epochs=4, lr=2e-4, head_lr=3e-3,
                      val_fraction=0.2, target_precision=0.9),
    # legal channel default since 2026-12-02: no encoder layer (classify pays a TF-IDF transform, not 4 encoder
    # layers); char TF-IDF + the table's keywords in one regression matched the encoder bundle in grouped CV
    # (eval/reports/channels.md); review target 0.95: at 0.90 its auto-decided (信访) answers were 92 % right, the
    # encoder bundle's 97 %
    "channel-text": Recipe(name="channel-text", trainable_layers=0, epochs=0, val_fraction=0.0, target_precision=0.95,
                           text_only=True),
    # seconds on the demo data / a tiny encoder: CI and the default demo model build
    "tiny": Recipe(name="tiny", max_length=64, trainable_layers=1, epochs=8, batch_size=8, lr=3e-4,
                   head_lr=5e-3, val_fraction=0.25, target_precision=0.9),
}


def resolve_recipe(task: str, name: str) -> str:
    """'auto' -> the task's default recipe name (topic: default, department: department-long, channel:
    channel-text)."""
    if name == "auto":
        return {"department": "department-long", "channel": "channel-text"}.get(task, "default")
    if name not in RECIPES:
        raise DataError(f"unknown recipe '{name}'; choose one of: auto, {', '.join(RECIPES)}")
    return name


def recipe_with(recipe: Recipe | str, **overrides) -> Recipe:
    """A recipe with some knobs overridden (None values ignored)."""
    if recipe == "auto":
        raise ValueError("resolve 'auto' with resolve_recipe(task, name) first")
    base = RECIPES[recipe] if isinstance(recipe, str) else recipe
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def get_recipe(recipe: Recipe | str, task: str = "topic") -> Recipe:
    """A Recipe from a name ('auto' = the task's default) or a Recipe; DataError for an unknown name."""
    if isinstance(recipe, Recipe):
        return recipe
    return RECIPES[resolve_recipe(task, recipe)]
