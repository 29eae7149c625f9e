"""Padding-free packed batches for vision data (``train.packing``).

The batch's samples are laid end to end in one row; ``position_ids`` restart at 0 at each
sample and there is no ``attention_mask``, which is transformers' own packed format: its
mask builder (``masking_utils.find_packed_sequence_indices``) turns the position resets
into a block-diagonal causal mask for eager / sdpa / flex attention, and flash-attention
reads them as varlen boundaries, so attention never crosses a sample.  Image features need
no bookkeeping: ``pixel_values`` keep the samples' order and the model scatters them into
the image tokens in order, so each sample's images land in its own segment.

Positions: 1-D for LLaVA / InternVL / Gemma 3; for Qwen2-VL the 3-row M-RoPE ids of each
sample (from the model's own ``get_rope_index``) are concatenated and the 1-D text
positions prepended as a 4th row, the layout ``Qwen2VLModel`` reads packed positions in.

The loss is the same as unpacked: HF's causal-LM loss shifts labels inside the row, and the
token that would be predicted across a boundary is a sample's first token, which never
carries loss (it is template text).  :class:`PackedCollator` checks that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mirage_safety.training.collator import IGNORE_INDEX, ChatCollator

#: (padded batch, per-row lengths) -> M-RoPE position ids [3, 1, total] of the packed row
PositionFn = Callable[[Mapping[str, Any], list[int]], Any]


class PackedCollator:
    """A :class:`ChatCollator` (or a :class:`~.preprocess.PaddingCollator` of
    preprocessed samples) whose batches are one padding-free packed row."""

    def __init__(self, collator: ChatCollator | Any, *, mrope: PositionFn | None = None):
        self.collator = collator
        self.mrope = mrope

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.collator(features)
        mask = batch.pop("attention_mask").bool()
        lengths = mask.sum(dim=1).tolist()
        seq = mask.shape[1]
        out: dict[str, Any] = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == seq:
                out[key] = torch.cat([value[b, :n] for b, n in enumerate(lengths)])[None]
            else:  # pixel_values, image_grid_thw, ...: per image, already in sample order
                out[key] = value
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        if (out["labels"][0, starts] != IGNORE_INDEX).any():
            raise ValueError("a packed sample starts with a loss token: the boundary token "
                             "would be trained on the previous sample's context")
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        if self.mrope is not None:
            rope = self.mrope(batch, lengths)
            positions = torch.cat([positions[None], rope], dim=0)  # [4, 1, total]
        out["position_ids"] = positions
        out["use_cache"] = False  # a cache would switch the packed-mask detection off
        return out


def qwen2_vl_mrope(model: Any) -> PositionFn:
    """Per-sample M-RoPE ids from the model's own ``get_rope_index``."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_rope_index = inner.model.get_rope_index
    merge = inner.config.vision_config.spatial_merge_size

    def positions(batch: Mapping[str, Any], lengths: list[int]) -> Any:
        # which images are whose: images come in sample order, each taking t*h*w / merge^2
        # of its sample's image tokens
        grid = batch["image_grid_thw"]
        per_image = (grid.prod(dim=-1) // merge**2).tolist()
        counts = (batch["input_ids"] == inner.config.image_token_id).sum(dim=1).tolist()
        bounds, k = [0], 0
        for need in counts:
            while need > 0:
                need -= per_image[k]
                k += 1
            bounds.append(k)
        rows = []
        with torch.no_grad():
            for b, n in enumerate(lengths):
                ids = batch["input_ids"][b, :n][None]
                mm = batch["mm_token_type_ids"][b, :n][None]
                grids = grid[bounds[b]:bounds[b + 1]]
                pos, _ = get_rope_index(ids, mm_token_type_ids=mm,
                                        image_grid_thw=grids if len(grids) else None,
                                        attention_mask=torch.ones_like(ids))
                rows.append(pos)
        return torch.cat(rows, dim=-1)

    return positions
