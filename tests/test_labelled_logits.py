"""``train.labelled_logits``: the LM head and loss at labelled positions only give the full
loss and gradients (fp32, 1e-5), padded or packed, for LLaVA and Qwen2-VL."""

from __future__ import annotations

import pytest
import torch

from mirage_safety.training.collator import IGNORE_INDEX, ChatCollator
from mirage_safety.training.labelled_logits import LabelledLogits, keep_labelled
from mirage_safety.training.packing import PackedCollator, qwen2_vl_mrope, use_varlen_attention
from test_packing import _loss_and_grads, _records
from tiny_world import tiny_model, world_data


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def _same(model, full, labelled):
    loss_a, grads_a = _loss_and_grads(model, full)
    loss_b, grads_b = _loss_and_grads(model, labelled)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4)


def test_keep_labelled_positions():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX],
                           [IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX]])
    batch = keep_labelled({"labels": labels})
    assert batch["logits_to_keep"].tolist() == [0, 1, 2]  # next token labelled in some row
    assert batch["shift_labels"].tolist() == [[IGNORE_INDEX, 5, 6], [7, 8, IGNORE_INDEX]]
    assert batch["labels"] is labels  # the Trainer's token counts still see them
    empty = keep_labelled({"labels": torch.full((1, 3), IGNORE_INDEX)})
    assert empty["logits_to_keep"].tolist() == [0]


def test_labelled_logits_llava_padded_and_packed(tmp_path_factory):
    from mirage_safety.models.loading import load_for_inference

    data = world_data(tmp_path_factory)
    model, processor = load_for_inference(tiny_model(tmp_path_factory), device="cpu",
                                          dtype="float32")
    model.train()
    collator = ChatCollator(processor, root=data / "mis")
    recs = _records(data, 4)
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
        (padded["labels"] != IGNORE_INDEX).sum())
    with use_varlen_attention(model):
        _same(model, padded, packed_labelled)
        _same(model, packed, packed_labelled)


def test_labelled_logits_qwen2_vl_packed(tmp_path_factory):
    from mirage_safety.config import HubDataConfig
    from mirage_safety.data.importers import load_mis
    from mirage_safety.models.loading import ModelSource, load_pretrained
    from mirage_safety.models.tiny_hub import snapshot_dir, write_snapshot
    from realdata_fixtures import build_mis

    cache = tmp_path_factory.mktemp("hf-labelled")
    _, commit = write_snapshot("qwen2_vl", cache)
    model, processor = load_pretrained(ModelSource(str(snapshot_dir(cache, "qwen2_vl", commit))),
                                       dtype="float32")
    model.train()
    mis = build_mis(tmp_path_factory.mktemp("mis-labelled") / "mis", n_train=3)
    recs = load_mis(HubDataConfig(local_dir=str(mis)), progress=False)
    collator = ChatCollator(processor, root=recs.root)
    rows = recs.train[:3]
    padded = collator(rows)
    _same(model, padded, LabelledLogits(collator)(rows))
    packer = PackedCollator(collator, mrope=qwen2_vl_mrope(model))
    with use_varlen_attention(model):
        _same(model, padded, LabelledLogits(packer)(rows))
