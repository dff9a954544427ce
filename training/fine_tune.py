"""The fine-tuning loop: the top layers of an encoder and a linear head on cached frozen states."""

from __future__ import annotations

import logging
import math
import random
import time

import numpy as np

from xinfang.models.encoder import encoder_layers
from xinfang.models.stack import mean_pool, run_layers
from xinfang.training.frozen_cache import FrozenCache, length_batches, top_logits
from xinfang.training.recipes import Recipe

__all__ = ["fine_tune", "extend_head"]

log = logging.getLogger(__name__)


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

    torch.manual_seed(seed)
    rng = random.Random(seed)
    dev = next(model.parameters()).device
    layers = encoder_layers(model)
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
        for b in length_batches(len(texts), lengths, recipe.batch_size, rng):
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


def extend_head(old_w, old_b, old_labels: list[str], new_labels: list[str], seed: int):
    """Head for ``old_labels + [l for l in new_labels if l not in old_labels]``: old rows copied, new rows a small
    seeded normal init with zero bias (the parent's label order is kept and extended)."""
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
