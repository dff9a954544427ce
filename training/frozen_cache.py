"""The frozen part of the encoder computed once per text: hidden states entering the first trained layer.

The word/position embeddings and the lower `n_frozen` layers are frozen, so their output is deterministic:
it is computed ONCE per text and kept in memory (fp16, trimmed to the text's length); every epoch then runs
only the top layers, which is what makes fine-tuning fit a 2-core CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from xinfang.models.encoder import encoder_layers
from xinfang.models.stack import mean_pool, run_layers

__all__ = ["FrozenCache", "top_logits", "length_batches"]


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
        layers = encoder_layers(model)[: self.n_frozen]
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


def length_batches(n_items: int, lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
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
            out[idx] = (mean_pool(h, mask) @ head_w.T + head_b).float().cpu().numpy()
    return out
