"""The `base` stage: Hub pinning offline (cached / not cached) and the builtin tiny VLM build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirage_safety.data.image_packs import image_at
from tiny_world import IMAGE_SIZE, TINY, world_data

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- hub
def _fake_cache(hub: Path, model_id: str, refs: dict[str, str]) -> None:
    """The Hugging Face cache layout a download leaves: refs/<rev> -> snapshots/<commit>/."""
    repo = hub / f"models--{model_id.replace('/', '--')}"
    for ref, commit in refs.items():
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text('{"model_type": "llava"}')
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def _mirage_base(
    tmp_path: Path, hub: dict, *, offline: bool = True
) -> subprocess.CompletedProcess[str]:
    """``mirage base`` in a fresh process: huggingface_hub reads its env at import time."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"source": "hub", "hub": hub}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        MIRAGE_PROFILE="default",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mirage_safety.cli",
            "base",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "models" / "base"),
            "--metrics",
            str(tmp_path / "metrics"),
            "--no-mlflow",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hub_model_not_cached_offline_fails_naming_it(tmp_path):
    _fake_cache(tmp_path / "hf" / "hub", "org/other", {"main": COMMIT})  # a different model
    proc = _mirage_base(tmp_path, {"model_id": "org/not-cached"})
    assert proc.returncode == 2  # a clear one-line error, not a traceback
    assert proc.stderr.startswith("error: cannot resolve Hub model")
    assert "Traceback" not in proc.stderr
    assert (
        "'org/not-cached'" in proc.stderr and "not in the local Hugging Face cache" in proc.stderr
    )
    assert not (tmp_path / "models").exists()  # nothing half-written for DVC to cache
    assert not (tmp_path / "metrics" / "base.json").exists()


@pytest.mark.slow
def test_hub_model_cached_offline_is_pinned_to_the_snapshot_commit(tmp_path):
    _fake_cache(tmp_path / "hf" / "hub", "org/name", {"main": COMMIT, "v1": OTHER})
    proc = _mirage_base(tmp_path, {"model_id": "org/name"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pinned org/name at {COMMIT}" in proc.stdout
    out = tmp_path / "models" / "base"
    assert sorted(p.name for p in out.iterdir()) == ["pin.json"]  # weights stay in the cache
    pin = json.loads((out / "pin.json").read_text())
    assert pin == {
        "model_id": "org/name",
        "revision": None,
        "commit": COMMIT,
        "trust_remote_code": False,
        "dtype": "auto",
    }
    metrics = json.loads((tmp_path / "metrics" / "base.json").read_text())
    assert metrics["source"] == "hub" and metrics["commit"] == COMMIT

    # a branch resolves through its own ref; a revision that is a commit needs no lookup
    proc = _mirage_base(tmp_path, {"model_id": "org/name", "revision": "v1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "pin.json").read_text())["commit"] == OTHER
    proc = _mirage_base(tmp_path, {"model_id": "org/uncached", "revision": COMMIT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "pin.json").read_text())["commit"] == COMMIT

    # a branch the cache does not have is an error, and the previous pin stays as it was
    proc = _mirage_base(tmp_path, {"model_id": "org/name", "revision": "v2"})
    assert proc.returncode != 0 and "'v2'" in proc.stderr
    assert json.loads((out / "pin.json").read_text())["model_id"] == "org/uncached"


# --------------------------------------------------------------------------- builtin
def _builtin(tmp_path: Path, data: Path, name: str) -> tuple[int, Path]:
    from mirage_safety.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "profiles": {
                    "tiny": {
                        "data": {"world": {"image_size": IMAGE_SIZE}},
                        "base": {
                            "builtin": {
                                **TINY.model_dump(),
                                "vision_pretrain_steps": 20,
                                "vision_pretrain_batch_size": 16,
                                "pretrain_steps": 10,
                                "pretrain_batch_size": 4,
                            }
                        },
                    }
                }
            }
        )
    )
    work = tmp_path / name
    rc = main(
        [
            "base",
            "--params",
            str(params),
            "--profile",
            "tiny",
            "--data",
            str(data),
            "--out",
            str(work / "models" / "base"),
            "--metrics",
            str(work / "metrics"),
            "--checkpoints",
            str(work / "ckpt"),
            "--no-mlflow",
            "--no-progress",
        ]
    )
    return rc, work


@pytest.mark.slow
def test_builtin_base_builds_a_loadable_checkpoint_with_metrics(tmp_path, tmp_path_factory, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mirage_safety.models.inference import generate_one

    data = world_data(tmp_path_factory)
    rc, work = _builtin(tmp_path, data, "a")
    assert rc == 0
    assert "base: general accuracy" in capsys.readouterr().out
    metrics = json.loads((work / "metrics" / "base.json").read_text())
    assert metrics["source"] == "builtin"
    assert 0.0 <= metrics["general_accuracy"] <= 100.0 and metrics["general_test_n"] == 8
    assert 0.0 <= metrics["vision_probe_accuracy"] <= 100.0
    assert metrics["vision_pretrain_steps"] == 20 and metrics["global_step"] == 10
    assert metrics["vocab_size"] <= TINY.vocab_size
    assert not (work / "ckpt").exists()  # superseded by the published model

    model_dir = work / "models" / "base"
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.hidden_size == TINY.text_hidden
    assert model.config.vision_config.image_size == IMAGE_SIZE
    rec = json.loads((data / "general" / "test.json").read_text())[0]
    images = [image_at(data / "general", rec[k]) for k in ("image_path1", "image_path2")]
    assert isinstance(
        generate_one(model, processor, rec["question"], images, max_new_tokens=4), str
    )

    # seeded: the same params build the same weights
    rc, again = _builtin(tmp_path, data, "b")
    assert rc == 0
    assert (again / "models" / "base" / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()


def test_builtin_base_without_general_data_fails_before_training(tmp_path):
    (tmp_path / "data" / "general").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"general/train\.json.*mirage generate"):
        _builtin(tmp_path, tmp_path / "data", "x")
    assert not (tmp_path / "x" / "models").exists()
