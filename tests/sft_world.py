"""A tiny generated MIS world with a tiny LLaVA base, and the `train` stage run on it with
fast settings: shared by the training and compile tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mirage_safety.config import BuiltinModelConfig, parse_params
from mirage_safety.data.generate import generate
from mirage_safety.training.train import run_train
from tiny_world import label_and_curate

TINY = BuiltinModelConfig(
    vision_hidden=16,
    vision_layers=1,
    vision_heads=2,
    patch_size=8,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    intermediate_size=64,
    vocab_size=400,
)
IMAGE_SIZE = 32
WORLD = {
    "image_size": IMAGE_SIZE,
    "n_train": 48,
    "n_test_per_split": 4,
    "n_general_train": 24,
    "n_general_test": 4,
    "n_instruct": 4,
}
FAST = {
    "batch_size": 4,
    "max_steps": 4,
    "save_steps": 2,
    "logging_steps": 1,
    "general_ratio": 0.2,
    "learning_rate": 5e-3,
}


@pytest.fixture(scope="module")
def sft_world(tmp_path_factory) -> dict[str, Path]:
    """A tiny generated MIS world and a tiny LLaVA base saved as a standard checkpoint."""
    from mirage_safety.models.tiny_vlm import build_tiny_vlm, save_tiny_vlm

    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    generate(parse_params({"data": {"world": WORLD}}).data, data, workers=1, progress=False)
    label_and_curate(data)
    corpus = [
        turn["value"].replace("<image>", " ")
        for name in ("mis/train.json", "general/train.json")
        for rec in json.loads((data / name).read_text())
        for turn in rec["conversations"]
    ]
    model, processor = build_tiny_vlm(corpus, TINY, IMAGE_SIZE, seed=0)
    base = save_tiny_vlm(model, processor, root / "base")
    return {"data": data, "base": base}


def sft_cfg(**train):
    return parse_params(
        {"data": {"world": {"image_size": IMAGE_SIZE}}, "train": {**FAST, **train}}
    ).train


def run_sft_stage(world: dict[str, Path], out: Path, cfg, **kw):
    return run_train(
        cfg,
        data_dir=world["data"],
        base_dir=world["base"],
        out_dir=out / "model",
        metrics_dir=out / "metrics",
        plots_dir=out / "plots",
        checkpoint_dir=out / "ckpt",
        image_size=IMAGE_SIZE,
        progress=False,
        **kw,
    )


def state_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
