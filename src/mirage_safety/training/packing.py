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

Attention on CPU: transformers' sdpa / eager mask for a packed row is block-diagonal over the
whole row, so the kernel still computes every cross-sample score and masks it -- cost grows
with the square of the row length (measured 0.59x the padded batches on the embedded
model).  :func:`use_varlen_attention` registers ``mirage_varlen`` through transformers'
``AttentionInterface`` instead: one causal sdpa call per sample, the samples found from the
position resets, the way flash-attention's varlen kernel reads them on GPUs.  Being a
custom implementation, transformers builds no mask for it at all.

The loss is the same as unpacked: HF's causal-LM loss shifts labels inside the row, and the
token that would be predicted across a boundary is a sample's first token, which never
carries loss (it is template text).  :class:`PackedCollator` checks that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from mirage_safety.models.loading import unwrap_peft
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
            raise ValueError(
                "a packed sample starts with a loss token: the boundary token "
                "would be trained on the previous sample's context"
            )
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

    inner = unwrap_peft(model)
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
                grids = grid[bounds[b] : bounds[b + 1]]
                pos, _ = get_rope_index(
                    ids,
                    mm_token_type_ids=mm,
                    image_grid_thw=grids if len(grids) else None,
                    attention_mask=torch.ones_like(ids),
                )
                rows.append(pos)
        return torch.cat(rows, dim=-1)

    return positions


VARLEN = "mirage_varlen"


def varlen_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention of a packed row, one sdpa call per sample (an AttentionInterface
    function).  Anything else (a vision tower, a padded batch) goes to plain sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.get("position_ids")
    if not getattr(module, "is_causal", False) or positions is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    if attention_mask is not None or getattr(module, "sliding_window", None):
        raise ValueError(
            f"{VARLEN} attention is for plain causal attention over packed rows "
            "without an attention mask (models.families: causal_text)"
        )
    row = positions.reshape(-1, query.shape[2])[0]  # M-RoPE: the text positions row
    starts = (row == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a packed row must start with position 0")
    lengths = [b - a for a, b in zip(starts, [*starts[1:], query.shape[2]], strict=True)]
    # split, not slicing: split's backward is one concatenation, where each slice's
    # backward would fill a zero tensor of the whole row
    outs = [
        sdpa_attention_forward(
            module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True
        )[0]
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat(outs, dim=1), None


@contextmanager
def use_varlen_attention(model: Any) -> Iterator[bool]:
    """While inside: the language model attends per sample when it used sdpa or eager
    (flash-attention already reads packed rows as varlen).  Yields whether it switched;
    the previous implementation is restored on the way out, so saved models and later
    generation are untouched."""
    from transformers import AttentionInterface

    inner = unwrap_peft(model)
    # the language model's sub-config; a text-only model has none
    key = "text_config" if "text_config" in getattr(inner.config, "sub_configs", {}) else None
    config = getattr(inner.config, key) if key else inner.config
    before = config._attn_implementation
    if before not in ("sdpa", "eager"):
        yield False
        return
    AttentionInterface.register(VARLEN, varlen_sdpa)
    inner.set_attn_implementation({key: VARLEN} if key else VARLEN)
    try:
        yield True
    finally:
        inner.set_attn_implementation({key: before} if key else before)
