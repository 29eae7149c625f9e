"""Shared builders for the tracking / registry / pyfunc / summary tests.

Expensive things are built once per pytest session and cached under the session's base
temp dir: a tiny untrained LLaVA checkpoint (real ``transformers`` classes, a BPE trained
on world text) and an empty, fully migrated MLflow SQLite database that each test copies
(creating one runs MLflow's schema migrations, ~5 s on two cores).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mirage_safety.config import BuiltinModelConfig, Params, parse_params

IMAGE_SIZE = 32
TINY = BuiltinModelConfig(
    vision_hidden=16,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    intermediate_size=64,
    vocab_size=300,
)

# environment that would route runs elsewhere or change parenting: cleared in every test
MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
    "MIRAGE_PARENT_RUN_ID",
    "MIRAGE_PIPELINE_ID",
    "DVC_ROOT",
    "DVC_STAGE",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "MIRAGE_PROFILE",
)


def world_corpus() -> list[str]:
    """Questions, perceptions and answers of the embedded world (tokenizer training)."""
    from mirage_safety.data import world

    names = world.OBJECT_NAMES
    texts = [world.question_text(t) for t in (*world.REQUEST_TEMPLATES, *world.BENIGN_TEMPLATES)]
    texts += [world.perception(a, b) for a in names[:12] for b in names[12:24]]
    texts += [
        world.helpful_answer(a, b, world.REQUEST_TEMPLATES[0])
        for a, b in zip(names[:20], names[20:40], strict=True)
    ]
    texts += [world.REFUSAL, world.DECLINE, world.SAFE_QUESTION_NOTE]
    return texts


def _session_dir(factory: pytest.TempPathFactory) -> Path:
    d = factory.getbasetemp() / "registry-fixtures"
    d.mkdir(exist_ok=True)
    return d


def tiny_model_dir(factory: pytest.TempPathFactory) -> Path:
    """A full tiny checkpoint plus a trainer checkpoint dir that must never be packaged.

    The special tokens' rows of the (tied) embedding are zeroed: an untrained tied model
    otherwise echoes its last prompt token (``<|assistant|>``) or stops, which decodes to
    "".  This way its greedy answers are non-empty word soup, and equality of answers
    across code paths is a real comparison.
    """
    out = _session_dir(factory) / "tiny-full"
    if (out / "config.json").is_file():
        return out
    import torch

    from mirage_safety.models.tiny_vlm import build_tiny_vlm, save_tiny_vlm

    torch.set_num_threads(1)
    model, processor = build_tiny_vlm(world_corpus(), TINY, IMAGE_SIZE, seed=0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[processor.tokenizer.all_special_ids] = 0.0
    tmp = out.with_name("tiny-full.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tiny_vlm(model, processor, tmp)
    ckpt = tmp / "checkpoint-7"
    ckpt.mkdir()
    (ckpt / "optimizer.pt").write_bytes(b"optimizer state: never in the registry")
    (ckpt / "trainer_state.json").write_text("{}")
    tmp.rename(out)
    return out


def write_images(root: Path) -> list[Path]:
    """Two small distinct PNGs."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (bg, fg) in enumerate((((200, 30, 30), (250, 250, 0)), ((30, 30, 200), (0, 0, 0)))):
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
        ImageDraw.Draw(img).ellipse((6, 6, 20 + 4 * i, 24), fill=fg)
        path = root / f"img{i}.png"
        img.save(path)
        paths.append(path)
    return paths


def template_db(factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store (created once per session)."""
    path = _session_dir(factory) / "template-mlflow.db"
    if not path.is_file():
        import mlflow

        tmp = path.with_name("template-mlflow.tmp.db")
        tmp.unlink(missing_ok=True)
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        tmp.rename(path)
    return path


def fresh_store(factory: pytest.TempPathFactory, dest: Path) -> str:
    """Copy the template store to ``dest``; return its ``sqlite:///`` URI."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template_db(factory), dest)
    return f"sqlite:///{dest}"


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


def reset_mlflow() -> None:
    """End fluent runs a failed test left active and forget its tracking URI."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    # the experiment set_experiment() made active belongs to the test's store; MLflow has
    # no public way to forget it
    mlflow.tracking.fluent._active_experiment_id = None


def make_params(tracking_uri: str, **registry: Any) -> Params:
    return parse_params(
        {
            "tracking": {"tracking_uri": tracking_uri, "experiment": "mirage-test"},
            "registry": {"model_name": "mirage", **registry},
            "eval": {"max_new_tokens": 4, "batch_size": 2},
        }
    )


# --------------------------------------------------------------------------- eval.json
def summary(
    *,
    easy: float = 2.0,
    hard: float = 4.0,
    benign_asr: float = 0.0,
    over_refusal: float = 5.0,
    helpfulness: float = 90.0,
    accuracy: float = 60.0,
) -> dict[str, Any]:
    """A MIRage/base summary in the layout of metrics/eval.json (percentages)."""
    return {
        "test_easy": {"asr": easy, "rsr": 100.0 - easy, "rr": 0.0, "hr": 0.0, "n": 28},
        "test_hard": {"asr": hard, "rsr": 100.0 - hard, "rr": 0.0, "hr": 0.0, "n": 28},
        "test_benign": {
            "asr": benign_asr,
            "over_refusal": over_refusal,
            "helpfulness": helpfulness,
            "n": 28,
        },
        "general": {"accuracy": accuracy, "n": 40},
        "categories": {"Violent": {"asr": easy, "n": 10}},
    }


def eval_json(
    mirage: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "base": copy.deepcopy(base)
        if base is not None
        else summary(easy=80.0, hard=85.0, over_refusal=4.0, helpfulness=95.0, accuracy=58.0),
        "mirage": copy.deepcopy(mirage) if mirage is not None else summary(),
        "agreement": {"kappa": 0.9},
        "judges": {"primary": "world", "second": "keyword"},
    }


def no_leftover_tmp(directory: Path) -> bool:
    return not [p for p in os.listdir(directory) if p.endswith(".tmp")]
