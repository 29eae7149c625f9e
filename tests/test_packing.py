"""Padding-free packed batches: the same loss and gradients as the padded batch (fp32, 1e-5),
for the builtin LLaVA (1-D positions) and Qwen2-VL (M-RoPE, 4-row position ids)."""

from __future__ import annotations

import json

import pytest
import torch

from mirage_safety.training.collator import IGNORE_INDEX, ChatCollator
from mirage_safety.training.packing import (
    VARLEN,
    PackedCollator,
    qwen2_vl_mrope,
    use_varlen_attention,
    varlen_sdpa,
)
from tiny_world import tiny_model, world_data


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


def assert_same(reference, other):
    """Two ``_loss_and_grads`` results agree: loss and every gradient to 1e-5 (fp32)."""
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    assert grads_a and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4)


def _check_equal(model, padded, packed):
    """The packed row gives the padded batch's loss and gradients, both through
    transformers' block-diagonal mask and through per-sample (varlen) attention."""
    reference = _loss_and_grads(model, padded)
    text = model.config.text_config
    before = text._attn_implementation
    with use_varlen_attention(model) as switched:
        assert switched and text._attn_implementation == VARLEN
        varlen = _loss_and_grads(model, packed)
    assert text._attn_implementation == before  # restored: saving / generation untouched
    assert_same(reference, _loss_and_grads(model, packed))  # through the mask
    assert_same(reference, varlen)


def _records(data, n):
    recs = json.loads((data / "mis" / "train.json").read_text())
    # different lengths, so the padded batch really pads
    return sorted(recs, key=lambda r: len(r["conversations"][-1]["value"]))[:: len(recs) // n][:n]


def llava_batch(tmp_path_factory):
    """(the builtin LLaVA in training mode, its collator, 4 records of different lengths)"""
    from mirage_safety.models.loading import load_for_inference

    data = world_data(tmp_path_factory)
    model, processor = load_for_inference(tiny_model(tmp_path_factory), device="cpu",
                                          dtype="float32")
    model.train()
    return model, ChatCollator(processor, root=data / "mis"), _records(data, 4)


def qwen2_vl_batch(tmp_path_factory):
    """(a tiny Qwen2-VL in training mode, its collator, 3 MIS records, one answer short)"""
    from mirage_safety.config import HubDataConfig
    from mirage_safety.data.importers import load_mis
    from mirage_safety.models.loading import ModelSource, load_pretrained
    from mirage_safety.models.tiny_hub import snapshot_dir, write_snapshot
    from realdata_fixtures import build_mis

    cache = tmp_path_factory.mktemp("hf-qwen2-vl")
    _, commit = write_snapshot("qwen2_vl", cache)
    model, processor = load_pretrained(ModelSource(str(snapshot_dir(cache, "qwen2_vl", commit))),
                                       dtype="float32")
    model.train()
    mis = build_mis(tmp_path_factory.mktemp("mis-qwen2-vl") / "mis", n_train=3)
    dataset = load_mis(HubDataConfig(local_dir=str(mis)), progress=False)
    recs = dataset.train[:3]
    recs[1] = {**recs[1], "conversations": [recs[1]["conversations"][0],
                                            {"from": "gpt", "value": "Short."}]}
    return model, ChatCollator(processor, root=dataset.root), recs


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
        (padded["labels"] != IGNORE_INDEX).sum())
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
    alone, _ = varlen_sdpa(Causal(), q[:, :, 3:], q[:, :, 3:], q[:, :, 3:], None,
                           position_ids=positions[:, :3])
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
