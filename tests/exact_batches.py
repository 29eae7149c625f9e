"""Batches for the exact-training tests (packing, labelled logits): a tiny LLaVA and a tiny
Qwen2-VL in training mode with their collators, and the loss-and-gradients comparison both
test files make (fp32, 1e-5)."""

from __future__ import annotations

import json

import torch

from mirage_safety.training.collator import ChatCollator
from tiny_world import tiny_model, world_data


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def assert_same(reference, other):
    """Two :func:`loss_and_grads` results agree: loss and every gradient to 1e-5 (fp32)."""
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    assert grads_a and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4)


def _records(data, n):
    recs = json.loads((data / "mis" / "train.json").read_text())
    # different lengths, so the padded batch really pads
    return sorted(recs, key=lambda r: len(r["conversations"][-1]["value"]))[:: len(recs) // n][:n]


def llava_batch(tmp_path_factory):
    """(the builtin LLaVA in training mode, its collator, 4 records of different lengths)"""
    from mirage_safety.models.loading import load_for_inference

    data = world_data(tmp_path_factory)
    model, processor = load_for_inference(
        tiny_model(tmp_path_factory), device="cpu", dtype="float32"
    )
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
    model, processor = load_pretrained(
        ModelSource(str(snapshot_dir(cache, "qwen2_vl", commit))), dtype="float32"
    )
    model.train()
    mis = build_mis(tmp_path_factory.mktemp("mis-qwen2-vl") / "mis", n_train=3)
    dataset = load_mis(HubDataConfig(local_dir=str(mis)), progress=False)
    recs = dataset.train[:3]
    recs[1] = {
        **recs[1],
        "conversations": [recs[1]["conversations"][0], {"from": "gpt", "value": "Short."}],
    }
    return model, ChatCollator(processor, root=dataset.root), recs
