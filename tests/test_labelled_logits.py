"""``train.labelled_logits``: the LM head and loss at labelled positions only give the full
loss and gradients (fp32, 1e-5), padded or packed, for LLaVA and Qwen2-VL."""

from __future__ import annotations

import pytest
import torch

from exact_batches import assert_same, llava_batch, loss_and_grads, qwen2_vl_batch
from mirage_safety.training.collator import IGNORE_INDEX
from mirage_safety.training.labelled_logits import LabelledLogits, keep_labelled
from mirage_safety.training.packing import PackedCollator, qwen2_vl_mrope, use_varlen_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(model, full, labelled):
    assert_same(loss_and_grads(model, full), loss_and_grads(model, labelled))


def test_keep_labelled_positions():
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX],
            [IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX],
        ]
    )
    batch = keep_labelled({"labels": labels})
    assert batch["logits_to_keep"].tolist() == [0, 1, 2]  # next token labelled in some row
    assert batch["shift_labels"].tolist() == [[IGNORE_INDEX, 5, 6], [7, 8, IGNORE_INDEX]]
    assert batch["labels"] is labels  # the Trainer's token counts still see them
    empty = keep_labelled({"labels": torch.full((1, 3), IGNORE_INDEX)})
    assert empty["logits_to_keep"].tolist() == [0]


def test_labelled_logits_llava_padded_and_packed(tmp_path_factory):
    model, collator, recs = llava_batch(tmp_path_factory)
    padded = collator(recs)
    labelled = LabelledLogits(collator)(recs)
    kept = labelled["logits_to_keep"].numel()
    assert kept < padded["input_ids"].shape[1]  # the prompts' positions are left out
    assert model(**labelled).logits.shape[1] == kept
    _same(model, padded, labelled)
    packer = PackedCollator(collator)
    packed, packed_labelled = packer(recs), LabelledLogits(packer)(recs)
    # one row: exactly the labelled tokens' predecessors remain
    assert packed_labelled["logits_to_keep"].numel() == int(
        (padded["labels"] != IGNORE_INDEX).sum()
    )
    with use_varlen_attention(model):
        _same(model, padded, packed_labelled)
        _same(model, packed, packed_labelled)


def test_labelled_logits_qwen2_vl_packed(tmp_path_factory):
    model, collator, rows = qwen2_vl_batch(tmp_path_factory)
    padded = collator(rows)
    _same(model, padded, LabelledLogits(collator)(rows))
    packer = PackedCollator(collator, mrope=qwen2_vl_mrope(model))
    with use_varlen_attention(model):
        _same(model, padded, LabelledLogits(packer)(rows))
