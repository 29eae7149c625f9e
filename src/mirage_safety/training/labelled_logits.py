"""The LM head and the loss only where a label is (``train.labelled_logits``).

A causal LM's loss at position ``t`` is the cross-entropy of the logits there against the
token at ``t + 1``; every position whose next token carries no label (the prompt, the image
tokens, padding) is computed and thrown away.  For assistant-only SFT that is most of a
row, and the LM head is a large share of a small model's FLOPs (a 2,048-token vocabulary on
a width-128 decoder: 44 % of its matmuls).

Both pieces are transformers' own: a 1-D ``logits_to_keep`` tensor makes the model apply
its head to those positions only, and ``shift_labels`` (the already shifted labels at the
same positions) makes its ``ForCausalLMLoss`` compare them directly.  The Trainer counts
``num_items_in_batch`` from ``shift_labels`` when present, so gradient accumulation and
multi-device token averaging stay exact.  In a padded batch the kept positions are the
union over its rows, so the loss is the same with fewer rows left out; a packed batch is
one row, so only labelled positions remain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mirage_safety.training.collator import IGNORE_INDEX


def keep_labelled(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``logits_to_keep`` (positions whose next token is labelled, in any
    row) and ``shift_labels`` (the labels of those next tokens); ``labels`` stay."""
    import torch

    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = (shifted != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    if keep.numel() == 0:  # a batch without a label: one position, loss 0 / 0 as before
        keep = torch.zeros(1, dtype=torch.long)
    return {**batch, "logits_to_keep": keep, "shift_labels": shifted[:, keep].contiguous()}


class LabelledLogits:
    """A collator whose batches ask the model for logits at labelled positions only."""

    def __init__(self, collator: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]):
        self.collator = collator

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return keep_labelled(self.collator(features))
