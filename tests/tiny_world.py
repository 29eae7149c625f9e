"""Shared builders for the inference / evaluate / base-stage tests.

A tiny generated MIS world (a few records per split, 32 px images) and tiny untrained
LLaVA checkpoints (real ``transformers`` classes, a BPE trained on the world's text), each
built once per pytest session under the session's base temp dir and reused read-only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mirage_safety.config import BuiltinModelConfig, parse_params

IMAGE_SIZE = 32
TINY = BuiltinModelConfig(
    vision_hidden=16,
    vision_layers=1,
    vision_heads=2,
    patch_size=16,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    intermediate_size=64,
    vocab_size=400,
)
# smoke-sized world: enough records for 6 samples per test split and a little pre-training
WORLD = {
    "image_size": IMAGE_SIZE,
    "n_train": 24,
    "n_test_per_split": 8,
    "n_general_train": 24,
    "n_general_test": 8,
    "n_instruct": 8,
}


def _session_dir(factory: pytest.TempPathFactory) -> Path:
    d = factory.getbasetemp() / "tiny-world"
    d.mkdir(exist_ok=True)
    return d


REPO = Path(__file__).resolve().parents[1]
POLICIES, PROMPTS = str(REPO / "policies"), str(REPO / "prompts")
#: a world with enough train records (140: ten per rule) for the noise model to plant every
#: kind of defect; generated (not labelled) once per session
LABEL_WORLD = {
    "n_train": 140,
    "n_test_per_split": 4,
    "n_general_train": 4,
    "n_general_test": 4,
    "n_instruct": 2,
    "image_size": 32,
}


def label_and_curate(data: Path, **label: Any) -> Path:
    """``data/labelled`` and ``data/curated`` as the pipeline writes them (world teacher,
    world judge; ``label`` overrides the label params), so ``train`` can read ``data``."""
    from mirage_safety.config import CurateConfig, LabelConfig
    from mirage_safety.labelling.curate import run_curate
    from mirage_safety.labelling.label import run_label

    policies, prompts = POLICIES, PROMPTS
    run_label(
        LabelConfig(policies=policies, prompts=prompts, **label),
        data_dir=data,
        out_dir=data / "labelled",
        metrics_path=data / "label_metrics.json",
        cache_dir=None,
        progress=False,
    )
    run_curate(
        CurateConfig(rubric=str(REPO / "prompts" / "curate_rubric.yaml")),
        policies_dir=policies,
        prompts_dir=prompts,
        data_dir=data,
        out_dir=data / "curated",
        metrics_path=data / "curate_metrics.json",
        plots_path=data / "curate_scores.csv",
        cache_dir=None,
        progress=False,
    )
    return data


def label_world(factory: pytest.TempPathFactory) -> Path:
    """``data/`` of :data:`LABEL_WORLD` as ``generate`` writes it; treat as read-only."""
    from mirage_safety.data.generate import generate

    out = _session_dir(factory) / "label-world"
    if not (out / "manifest.json").is_file():
        generate(
            parse_params({"data": {"world": LABEL_WORLD}}).data, out, workers=1, progress=False
        )
    return out


def world_data(factory: pytest.TempPathFactory) -> Path:
    """``data/`` of a tiny generated world (``mis/`` + ``general/``, labelled and curated as
    the pipeline does); treat as read-only."""
    from mirage_safety.data.generate import generate

    out = _session_dir(factory) / "data"
    if not (out / "curated" / "train.json").is_file():
        generate(parse_params({"data": {"world": WORLD}}).data, out, workers=1, progress=False)
        label_and_curate(out)
    return out


def copy_world(factory: pytest.TempPathFactory, dest: Path) -> Path:
    """A private copy of the world a test may damage (delete images, edit records)."""
    shutil.copytree(world_data(factory), dest)
    return dest


def world_corpus(data: Path) -> list[str]:
    """Every conversation turn and question of the world (tokenizer training)."""
    texts: list[str] = []
    for name in ("mis/train.json", "general/train.json", "general/instruct.json"):
        for rec in json.loads((data / name).read_text()):
            texts += [t["value"].replace("<image>", " ") for t in rec["conversations"]]
    for name in (
        "mis/test_easy.json",
        "mis/test_hard.json",
        "mis/test_benign.json",
        "mis/test_benign_shift.json",
        "general/test.json",
    ):
        texts += [rec["question"] for rec in json.loads((data / name).read_text())]
    return texts


def tiny_model(factory: pytest.TempPathFactory, seed: int = 0) -> Path:
    """A saved tiny untrained VLM whose greedy answers depend on the prompt and images.

    With the default init (std 0.02) an untrained model repeats one token whatever it is
    asked, so comparing two decoding paths would prove little.  Matrices are re-drawn with
    std 0.3 instead: answers become prompt-dependent byte soup, and a padding bug (e.g.
    right padding) changes them.  The special tokens' rows of the (tied) embedding are
    zeroed so the model never echoes ``<|assistant|>`` or stops at once (answers "").
    """
    out = _session_dir(factory) / f"model-{seed}"
    if (out / "config.json").is_file():
        return out
    import torch

    from mirage_safety.models.tiny_vlm import build_tiny_vlm, save_tiny_vlm

    model, processor = build_tiny_vlm(
        world_corpus(world_data(factory)), TINY, IMAGE_SIZE, seed=seed
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3, generator=gen)
        model.get_input_embeddings().weight[processor.tokenizer.all_special_ids] = 0.0
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tiny_vlm(model, processor, tmp)
    tmp.rename(out)
    return out


def copy_model(factory: pytest.TempPathFactory, dest: Path, seed: int = 0) -> Path:
    shutil.copytree(tiny_model(factory, seed), dest)
    return dest


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
