"""Running an encoder in pieces: the base's layers [a, b) once for every task, then each task's own top.

A classifier bundle keeps only the layers it trained (models/classifier.py): its layers [k, L) and head, on a
base whose layers [0, k) it shares. `BaseStack.run(x, mask, a, b)` runs the base's embeddings (when a == 0,
x = input ids) and layers a..b-1; `TorchTop` runs a bundle's own layers + mean pooling + head. The ONNX
versions (models/onnx_runtime.py) have the same two interfaces; models/backends.py picks one, once, at load.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from xinfang.models.encoder import BaseEncoder, encoder_layers

__all__ = ["BaseStack", "TorchStack", "TorchTop", "mean_pool", "run_layers", "layer_state"]

_MASK_KEYWORDS = ("attention_mask", "encoder_attention_mask", "embedding_output", "encoder_hidden_states", "cache",
                  "past_key_values", "cache_position", "position_ids")


def mean_pool(hidden, mask):
    """Mean of token states over the attention mask ([B, L, H], [B, L] -> [B, H])."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


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


def attention_mask(model, mask, hidden):
    """The layer-level attention mask in whatever form this transformers version's layers expect."""
    keywords = _mask_keywords(type(model))
    if keywords is None:
        return model.get_extended_attention_mask(mask, mask.shape)
    values = {"attention_mask": mask, "embedding_output": hidden}
    out = model._create_attention_masks(**{n: values.get(n) for n in keywords})
    return out[0] if isinstance(out, tuple) else out


def run_layers(model, layers, hidden, mask):
    """Hidden states after `layers` (a slice of `model`'s layers or copies of them)."""
    m = attention_mask(model, mask, hidden)
    for layer in layers:
        out = layer(hidden, attention_mask=m)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class BaseStack:
    """The base's embeddings and layers, run in segments; one per (base, backend) in a process."""

    backend = "torch"

    def __init__(self, base: BaseEncoder) -> None:
        self.base = base

    def run(self, x, mask, a: int, b: int):  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, a: int, b: int) -> None:
        """Build what segment [a, b) needs now (ONNX: export/quantize/open), not on the first request."""


class TorchStack(BaseStack):
    """The base's torch model, shared (CPU); with another `device`, a copy of it there."""

    def __init__(self, base: BaseEncoder, device: str = "cpu") -> None:
        super().__init__(base)
        self.device = device
        self._model = base.load_model().to(device) if device != "cpu" else None

    def run(self, x, mask, a: int, b: int):
        import torch

        model = self._model if self._model is not None else self.base.model
        with torch.inference_mode():
            x, mask = torch.as_tensor(x, device=self.device), torch.as_tensor(mask, device=self.device)
            hidden = model.embeddings(input_ids=x) if a == 0 else x
            if b > a:
                hidden = run_layers(model, encoder_layers(model)[a:b], hidden, mask)
            return hidden


class TorchTop:
    """A bundle's own layers (copies of the base's, with its trained weights) + mean pooling + linear head."""

    def __init__(self, model, first: int, layer_state: dict, head_w, head_b) -> None:
        """`model`: the base's torch model (its layers are copied, then given the bundle's weights)."""
        import copy

        import torch

        layers = encoder_layers(model)
        self.model, self.first = model, first
        self.layers = torch.nn.ModuleList(copy.deepcopy(layers[i]) for i in range(first, len(layers)))
        self.layers.load_state_dict({_local_key(k, first): v for k, v in layer_state.items()}, strict=True)
        self.layers.eval()
        for p in self.layers.parameters():
            p.requires_grad = False
        self.head_w, self.head_b = head_w.float(), head_b.float()

    def logits(self, hidden, mask) -> np.ndarray:
        import torch

        with torch.inference_mode():
            hidden, mask = torch.as_tensor(hidden), torch.as_tensor(mask)
            h = run_layers(self.model, self.layers, hidden.cpu(), mask.cpu())
            return (mean_pool(h, mask.cpu()) @ self.head_w.T + self.head_b).float().numpy()


def layer_key(index: int, name: str) -> str:
    """Key of a layer parameter in a bundle's encoder_layers.safetensors: `layer.<index in the base>.<name>`."""
    return f"layer.{index}.{name}"


def _local_key(key: str, first: int) -> str:
    _, index, name = key.split(".", 2)
    return f"{int(index) - first}.{name}"


def layer_state(model, first: int) -> dict:
    """The parameters of `model`'s layers [first, L), keyed as in a bundle (layer_key), contiguous, on the CPU."""
    out = {}
    for i, layer in enumerate(encoder_layers(model)):
        if i >= first:
            for name, t in layer.state_dict().items():
                out[layer_key(i, name)] = t.detach().float().cpu().contiguous().clone()
    return out
