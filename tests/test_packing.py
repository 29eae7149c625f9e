"""Padding-free packed batches: the same loss and gradients as the padded batch (fp32, 1e-5),
for the builtin LLaVA (1-D positions) and Qwen2-VL (M-RoPE, 4-row position ids)."""

from __future__ import annotations

import pytest
import torch

from exact_batches import assert_same, llava_batch, loss_and_grads, qwen2_vl_batch
from mirage_safety.training.collator import IGNORE_INDEX
from mirage_safety.training.packing import (
    VARLEN,
    PackedCollator,
    qwen2_vl_mrope,
    use_varlen_attention,
    varlen_sdpa,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _check_equal(model, padded, packed):
    """The packed row gives the padded batch's loss and gradients, both through
    transformers' block-diagonal mask and through per-sample (varlen) attention."""
    reference = loss_and_grads(model, padded)
    text = model.config.text_config
    before = text._attn_implementation
    with use_varlen_attention(model) as switched:
        assert switched and text._attn_implementation == VARLEN
        varlen = loss_and_grads(model, packed)
    assert text._attn_implementation == before  # restored: saving / generation untouched
    assert_same(reference, loss_and_grads(model, packed))  # through the mask
    assert_same(reference, varlen)


def test_packed_llava_batch_equals_the_padded_one(tmp_path_factory):
    model, collator, recs = llava_batch(tmp_path_factory)
    padded = collator(recs)
    assert (padded["attention_mask"] == 0).any()  # there is padding to remove
    packed = PackedCollator(collator)(recs)
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    assert "attention_mask" not in packed
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 4 and starts[0] == 0
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int(
        (padded["labels"] != IGNORE_INDEX).sum()
    )
    _check_equal(model, padded, packed)
    # without the position resets attention would cross samples: the loss changes
    crossing = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    with torch.no_grad():
        masked = model(**padded).loss  # transformers' sdpa with the padding mask
        assert abs(float(model(**crossing).loss) - float(masked)) > 1e-4
        with use_varlen_attention(model):  # varlen reads the samples off the same resets
            assert abs(float(model(**crossing).loss) - float(masked)) > 1e-4
            # a right-padded batch: no mask is built for a custom attention, so plain
            # causal sdpa, exact because padding only follows the tokens that carry loss
            torch.testing.assert_close(model(**padded).loss, masked, atol=1e-5, rtol=0)


def test_varlen_attention_refuses_what_it_cannot_do():
    class Causal(torch.nn.Module):
        is_causal = True
        sliding_window = 4

    q = torch.randn(1, 2, 6, 8)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with pytest.raises(ValueError, match="causal_text"):
        varlen_sdpa(Causal(), q, q, q, None, position_ids=positions)
    Causal.sliding_window = None
    with pytest.raises(ValueError, match="position 0"):
        varlen_sdpa(Causal(), q, q, q, None, position_ids=positions + 1)
    # two samples of three: each attends only to itself
    out, _ = varlen_sdpa(Causal(), q, q, q, None, position_ids=positions)
    alone, _ = varlen_sdpa(
        Causal(), q[:, :, 3:], q[:, :, 3:], q[:, :, 3:], None, position_ids=positions[:, :3]
    )
    torch.testing.assert_close(out[:, 3:], alone)


def test_packed_qwen2_vl_batch_with_mrope_equals_the_padded_one(tmp_path_factory):
    model, collator, recs = qwen2_vl_batch(tmp_path_factory)
    padded = collator(recs)
    assert (padded["attention_mask"] == 0).any()
    packed = PackedCollator(collator, mrope=qwen2_vl_mrope(model))(recs)
    assert packed["position_ids"].shape == (4, 1, packed["input_ids"].shape[1])
    # rows 1-3 are the samples' own M-RoPE ids: image tokens get 2-D grid positions
    assert not torch.equal(packed["position_ids"][1], packed["position_ids"][2])
    _check_equal(model, padded, packed)
