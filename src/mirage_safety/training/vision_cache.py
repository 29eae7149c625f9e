"""Frozen vision-tower outputs computed once per image and reused (``train.cache_vision_features``).

With the vision tower frozen (the paper's full fine-tune, and every LoRA run) and no image
augmentation, a training image's tower output is the same in every epoch; only the
projector and the language model above it change.  :func:`install` memoises the tower's
``forward``: outputs are keyed by the BLAKE2 hash of each image's *processed* pixels, so
the same pixels always give the stored output and anything else (another image, another
resize) is computed live.  The first time an image is seen its output comes from the live
tower in the live batch, so the first epoch is the uncached run; a hit returns the tensor
that forward produced then (identical up to the ULP-level differences a different batch
composition gives the live tower too).

Only what the model reads is kept: ``last_hidden_state`` and the ``hidden_states`` entries
at ``config.vision_feature_layer``; the rest of the tuple is ``None``.  The cache lives in
memory (per process; a 64 px image of the embedded model costs 4-8 KB).

Families whose projector sits *inside* the vision module (Qwen2-VL's ``visual.merger``)
cannot be cached this way and train with the live tower (:attr:`Family.cacheable_tower`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from mirage_safety.models.families import family_of

log = logging.getLogger(__name__)


class VisionCacheError(ValueError):
    """The vision tower cannot be cached (not frozen, or not a cacheable family)."""


def find_tower(model: Any, vision_keys: tuple[str, ...]) -> tuple[str, Any]:
    """``(name, module)`` of the outermost vision-tower module of ``model`` (PEFT too)."""
    best: tuple[str, Any] | None = None
    for name, module in model.named_modules():
        if name.split(".")[-1] in vision_keys and (best is None or len(name) < len(best[0])):
            best = (name, module)
    if best is None:
        raise VisionCacheError(f"no vision tower found (looked for {', '.join(vision_keys)})")
    return best


class CachedForward:
    """The memoising ``forward`` installed on a frozen vision tower."""

    def __init__(self, tower: Any, layers: tuple[int, ...]):
        self.live = tower.forward
        self.n_states = int(tower.config.num_hidden_layers) + 1
        self.layers = tuple(sorted({i % self.n_states for i in layers}))
        self.store: dict[bytes, tuple[Any, dict[int, Any]]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(pixels: Any) -> bytes:
        import torch

        raw = pixels.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        return hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).digest()

    def __call__(self, pixel_values: Any = None, **kwargs: Any) -> Any:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if pixel_values is None or kwargs.get("image_sizes") is not None:
            return self.live(pixel_values=pixel_values, **kwargs)
        keys = [self._key(p) for p in pixel_values]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            kwargs = {**kwargs, "output_hidden_states": True, "return_dict": True}
            with torch.no_grad():
                out = self.live(pixel_values=pixel_values[missing], **kwargs)
            for j, i in enumerate(missing):
                self.store[keys[i]] = (
                    out.last_hidden_state[j],
                    {n: out.hidden_states[n][j] for n in self.layers},
                )
        last = torch.stack([self.store[k][0] for k in keys])
        hidden: list[Any] = [None] * self.n_states
        for n in self.layers:
            hidden[n] = torch.stack([self.store[k][1][n] for k in keys])
        return BaseModelOutputWithPooling(last_hidden_state=last, hidden_states=tuple(hidden))


def why_not(model: Any) -> str | None:
    """Why ``model``'s vision tower cannot be cached, or None when it can."""

    family = family_of(model)
    if not family.cacheable_tower:
        return (
            f"{family.name}: the projector sits inside the vision module (it trains), so "
            "the tower output cannot be cached"
        )
    name, tower = find_tower(model, family.vision_keys)
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    if trainable:
        return (
            f"train.cache_vision_features needs a frozen vision tower, but "
            f"{name}.{trainable[0]} (and {len(trainable) - 1} more) train "
            "(train.freeze_vision: false)"
        )
    return None


def install(model: Any) -> CachedForward:
    """Memoise ``model``'s frozen vision tower; undo with :func:`uninstall`."""

    reason = why_not(model)
    if reason:
        raise VisionCacheError(
            f"{reason}; set train.cache_vision_features: false, or auto to cache only where it can"
        )
    family = family_of(model)
    name, tower = find_tower(model, family.vision_keys)
    layer = getattr(model.config, "vision_feature_layer", None)
    layers = list(layer) if isinstance(layer, list | tuple) else [-1 if layer is None else layer]
    cached = CachedForward(tower, (*layers, -1))  # -1: last_hidden_state's layer
    tower.forward = cached
    log.info("caching %s outputs per image (layers %s)", name, cached.layers)
    return cached


def uninstall(model: Any) -> None:
    """Restore the live tower ``forward`` (and free the cache)."""
    for _name, module in model.named_modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, CachedForward):
            forward.store.clear()
            del module.forward
