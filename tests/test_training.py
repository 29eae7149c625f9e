"""The `train` stage: full and LoRA SFT, general mixing, resume, reload, 2-process DDP."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mirage_safety.config import ConfigError, load_params, parse_params
from mirage_safety.training.sft import StopAfterSteps
from mirage_safety.training.train import load_mix
from sft_world import (
    FAST,
    IMAGE_SIZE,
    run_sft_stage,
    sft_cfg,
    state_file,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _curve(out: Path) -> list[tuple[int, float]]:
    lines = (out / "plots" / "train_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss"
    return [(int(s), float(v)) for s, v in (line.split(",") for line in lines[1:])]


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# --------------------------------------------------------------------------- full
@pytest.mark.slow
def test_full_sft_with_mlflow_frozen_vision_and_reload(sft_world, tmp_path, monkeypatch):
    import mlflow
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mirage_safety.models.loading import load_for_inference

    monkeypatch.chdir(tmp_path)  # mlruns/ and mlflow.db stay in the test dir
    for var in (
        "MLFLOW_TRACKING_URI",
        "MIRAGE_PARENT_RUN_ID",
        "MIRAGE_PIPELINE_ID",
        "DVC_EXP_NAME",
        "DVC_ROOT",
        "MLFLOW_RUN_ID",
        "HF_MLFLOW_LOG_ARTIFACTS",
    ):
        monkeypatch.delenv(var, raising=False)
    tracking = parse_params(
        {"tracking": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "t"}}
    ).tracking
    out = tmp_path / "full"
    metrics = run_sft_stage(
        sft_world, out, sft_cfg(method="full"), tracking=tracking, profile="test"
    )

    assert metrics["global_step"] == 4 and metrics["method"] == "full"
    assert math.isfinite(metrics["final_loss"]) and math.isfinite(metrics["train_loss"])
    assert metrics["tokens_per_s"] > 0 and metrics["samples_per_s"] > 0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]  # vision frozen
    assert (metrics["n_safety"], metrics["n_general"], metrics["n_train"]) == (48, 12, 60)
    assert json.loads((out / "metrics" / "train.json").read_text()) == metrics
    curve = _curve(out)
    assert [s for s, _ in curve] == [1, 2, 3, 4]
    assert curve[-1][1] == pytest.approx(metrics["final_loss"], abs=1e-5)
    assert not (out / "ckpt").exists()  # superseded by the published model

    # MLflow: a `train` child run with per-step losses, the summary, and no artefacts
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name("t").experiment_id], filter_string="tags.stage = 'train'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["train.method"] == "full"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert run.data.metrics["global_step"] == 4
    assert client.list_artifacts(run.info.run_id) == []

    # a standard checkpoint: Auto* classes load it; the vision tower is bit-identical
    model_dir = out / "model"
    meta = json.loads((model_dir / "mirage_model.json").read_text())
    assert meta["method"] == "full" and meta["base_path"] == str(sft_world["base"])
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    AutoProcessor.from_pretrained(model_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    before, after = _state(sft_world["base"]), _state(model_dir)
    vision = [k for k in before if "vision_tower" in k]
    trained = [k for k in before if "language_model" in k or "multi_modal_projector" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    loaded, _ = load_for_inference(model_dir, device="cpu")
    assert not loaded.training


# --------------------------------------------------------------------------- LoRA
def test_lora_sft_saves_adapter_that_merges(sft_world, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mirage_safety.models.loading import load_for_inference

    out = tmp_path / "lora"
    metrics = run_sft_stage(sft_world, out, sft_cfg(method="lora", lora={"r": 4, "alpha": 8}))
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_loss"])
    # r=4 on q/k/v/o of one 32-wide decoder layer: 4 * (32*4 + 4*32) parameters
    assert metrics["trainable_params"] == 4 * 2 * 32 * 4

    model_dir = out / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()  # an adapter, not full weights
    meta = json.loads((model_dir / "mirage_model.json").read_text())
    assert meta["method"] == "lora" and meta["lora"]["r"] == 4
    AutoProcessor.from_pretrained(model_dir)

    merged, _ = load_for_inference(model_dir, device="cpu")
    assert type(merged).__name__ == "LlavaForConditionalGeneration"  # PEFT unwrapped
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    state = merged.state_dict()
    base = AutoModelForImageTextToText.from_pretrained(sft_world["base"]).state_dict()
    q_keys = [k for k in base if "language_model" in k and k.endswith("q_proj.weight")]
    v_keys = [k for k in base if "vision_tower" in k and k.endswith("q_proj.weight")]
    assert q_keys and v_keys
    assert all(not torch.equal(base[k], state[k]) for k in q_keys)  # adapter merged in
    assert all(torch.equal(base[k], state[k]) for k in v_keys)  # vision untouched


# --------------------------------------------------------------------------- mixing
def test_general_mix_ratio_is_exact_and_seeded(sft_world):
    data = sft_world["data"]
    for ratio, n_general in ((0.0, 0), (0.2, 12), (0.11, 6)):
        rows, n_safety, got = load_mix(sft_cfg(general_ratio=ratio), data)
        kinds = [r.record["kind"] for r in rows]
        assert (n_safety, got, kinds.count("general")) == (48, n_general, n_general)
        assert got == round(ratio * 48 / (1 - ratio))
    ids = lambda seed: [r.record["id"] for r in load_mix(sft_cfg(seed=seed), data)[0]]  # noqa: E731
    assert ids(1) == ids(1) and ids(1) != ids(2)
    # more general records than exist: cycled, still the exact share
    rows, _, got = load_mix(sft_cfg(general_ratio=0.5), data)
    assert got == 48 and len({r.record["id"] for r in rows if r.record["kind"] == "general"}) == 24


def test_general_ratio_without_general_data_fails_naming_the_key(sft_world, tmp_path):
    data = tmp_path / "data"
    (data / "general").mkdir(parents=True)
    (data / "general" / "train.json").write_text("[]")
    (data / "mis").symlink_to(sft_world["data"] / "mis")
    (data / "curated").symlink_to(sft_world["data"] / "curated")
    with pytest.raises(ConfigError, match=r"train\.general_ratio"):
        load_mix(sft_cfg(general_ratio=0.11), data)
    assert load_mix(sft_cfg(general_ratio=0.0), data)[2] == 0


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_interrupted_run_resumes_to_the_same_result(sft_world, tmp_path, method, caplog):
    """Weights, optimizer, scheduler, RNG and data order come back from the checkpoint:
    the resumed run's losses equal the uninterrupted run's."""
    cfg = sft_cfg(max_steps=6, method=method)
    straight = run_sft_stage(sft_world, tmp_path / "straight", cfg)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_sft_stage(sft_world, out, cfg, callbacks=[StopAfterSteps(3)])
    assert sorted(p.name for p in (out / "ckpt").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model").exists() and not (out / "metrics").exists()  # nothing published

    resumed = run_sft_stage(sft_world, out, cfg)
    assert "missing keys" not in caplog.text  # every checkpoint weight was restored
    assert resumed["resumed_from"] is not None and resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["global_step"] == straight["global_step"] == 6
    assert math.isfinite(resumed["final_loss"])
    # same data order, RNG and optimizer state: the same losses as the uninterrupted run
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-4)
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-4)
    assert [s for s, _ in _curve(out)] == [1, 2, 3, 4, 5, 6]

    # checkpoints made under other params are discarded, not resumed
    with pytest.raises(KeyboardInterrupt):
        run_sft_stage(sft_world, out, cfg, callbacks=[StopAfterSteps(3)])
    fresh = run_sft_stage(sft_world, out, sft_cfg(max_steps=6, method=method, learning_rate=1e-3))
    assert fresh["resumed_from"] is None and fresh["global_step"] == 6


# --------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_process_accelerate_launch(sft_world, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"data": {"world": {"image_size": IMAGE_SIZE}}, "train": {**FAST, "max_steps": 3}}
        )
    )
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(REPO / "infra/accelerate/cpu_2proc.yaml"),
        "-m",
        "mirage_safety.cli",
        "train",
        "--params",
        str(params),
        "--data",
        str(sft_world["data"]),
        "--base",
        str(sft_world["base"]),
        "--out",
        str(out / "model"),
        "--metrics",
        str(out / "metrics"),
        "--plots",
        str(out / "plots"),
        "--checkpoints",
        str(out / "ckpt"),
        "--no-mlflow",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # both ranks loaded the data; only rank 0 reported and wrote outputs
    assert len(re.findall(r"train: 48 safety \+ 12 general records", log)) == 2
    assert len(re.findall(r"^train: full SFT, 3 steps", proc.stdout, re.M)) == 1
    metrics = json.loads((out / "metrics" / "train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 3
    assert math.isfinite(metrics["final_loss"])
    assert [s for s, _ in _curve(out)] == [1, 2, 3]
    assert sorted(p.name for p in (out / "metrics").iterdir()) == ["train.json"]
    assert (out / "model" / "model.safetensors").is_file() and not (out / "ckpt").exists()


# --------------------------------------------------------------------------- CLI, configs
def test_cli_help_documents_every_option():
    from mirage_safety.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    help_text = sub.choices["train"].format_help()
    for option in (
        "--params",
        "--profile",
        "--data",
        "--base",
        "--out",
        "--metrics",
        "--plots",
        "--checkpoints",
        "--no-mlflow",
        "--no-progress",
    ):
        assert option in help_text
    assert "models/mirage" in help_text and ".cache/checkpoints/train" in help_text


def test_real_params_profile_validates():
    params = load_params(REPO / "infra" / "params.real.yaml")
    assert params.base.source == "hub" and params.data.source == "mis"
    assert re.fullmatch(r"[0-9a-f]{40}", params.base.hub.revision or "")
    t = params.train
    assert (t.method, t.freeze_vision, t.bf16, t.gradient_checkpointing) == (
        "full",
        True,
        True,
        True,
    )
    assert (t.learning_rate, t.epochs, t.warmup_ratio) == (5e-6, 2.0, 0.03)
    # the paper's mix: ~11% general data, 500 samples drawn from M4-Instruct by generate
    g = params.data.general
    assert g is not None and (g.hub_id, g.max_samples) == ("lmms-lab/M4-Instruct-Data", 500)
    assert t.general_ratio == 0.11
    assert params.eval.judge == "openai"
    # the MIS test splits are harmful only: over-refusal comes from a benchmark by default
    from mirage_safety.evaluation.benchmarks.registry import OVER_REFUSAL_METRICS

    assert {
        n
        for n, b in params.eval.benchmarks.items()
        if b.enabled and (b.adapter or n) in OVER_REFUSAL_METRICS
    }
    assert params.registry.allow_safety_only is False
    # and general ability through lmms-eval: the paper's five general benchmarks
    assert set(params.eval.general.tasks) == {
        "qbench_dev",
        "mmstar",
        "mmmu_val",
        "muirbench",
        "mmt_mi_val",
    }
    intern = load_params(REPO / "infra" / "params.real.yaml", profile="internvl3_8b")
    assert intern.base.hub.model_id == "OpenGVLab/InternVL3-8B-hf"
    assert (intern.train.learning_rate, intern.train.epochs) == (2e-6, 3.0)
    served = load_params(REPO / "infra" / "params.real.yaml", profile="served_eval")
    assert served.eval.engine == "openai" and set(served.eval.server.models) == {"base", "mirage"}


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg_dir = REPO / "infra" / "accelerate"
    expected = {
        "cpu_2proc.yaml": "MULTI_GPU",
        "single_gpu.yaml": "NO",
        "multi_gpu_ddp.yaml": "MULTI_GPU",
        "fsdp.yaml": "FSDP",
        "deepspeed_zero3.yaml": "DEEPSPEED",
    }
    for name, kind in expected.items():
        cfg = load_config_from_file(str(cfg_dir / name))
        assert str(cfg.distributed_type).endswith(kind), name
    fsdp = load_config_from_file(str(cfg_dir / "fsdp.yaml"))
    assert fsdp.mixed_precision == "bf16"
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp.fsdp_config["fsdp_version"] == 2
    zero3 = load_config_from_file(str(cfg_dir / "deepspeed_zero3.yaml"))
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.mixed_precision == "bf16"


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_reaches_the_uninterrupted_result(sft_world, tmp_path):
    """``mirage train`` killed with SIGKILL after a checkpoint (and a later checkpoint left
    half-written, as a kill during the save leaves it): the re-run resumes from the last
    complete one and ends where the uninterrupted run ends."""
    import signal
    import time

    from safetensors.torch import load_file

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {"world": {"image_size": IMAGE_SIZE}},
                "train": {**FAST, "max_steps": 8, "save_steps": 2},
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out: Path) -> list[str]:
        return [
            str(Path(sys.executable).with_name("mirage")),
            "train",
            "--params",
            str(params),
            "--data",
            str(sft_world["data"]),
            "--base",
            str(sft_world["base"]),
            "--out",
            str(out / "model"),
            "--metrics",
            str(out / "metrics"),
            "--plots",
            str(out / "plots"),
            "--checkpoints",
            str(out / "ckpt"),
            "--no-mlflow",
            "--no-progress",
        ]

    straight = tmp_path / "straight"
    assert subprocess.run(cmd(straight), env=env, capture_output=True, timeout=600).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (killed / "ckpt" / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()
    for later in (killed / "ckpt").glob("checkpoint-*"):  # the kill point, made exact
        if int(later.name.rsplit("-", 1)[1]) > 4:
            shutil.rmtree(later)
    partial = killed / "ckpt" / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")  # no trainer_state.json
    done = subprocess.run(cmd(killed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((killed / "metrics" / "train.json").read_text())
    want = json.loads((straight / "metrics" / "train.json").read_text())
    assert got["resumed_from"].endswith("checkpoint-4")  # the half-written one was skipped
    assert got["global_step"] == want["global_step"] == 8
    assert got["final_loss"] == pytest.approx(want["final_loss"], rel=1e-4)
    a = load_file(str(killed / "model" / "model.safetensors"))
    b = load_file(str(straight / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


# --------------------------------------------------------------------------- vision cache
def _batch(sft_world, n: int = 4):
    from mirage_safety.models.loading import load_pretrained, resolve_source
    from mirage_safety.training.collator import ChatCollator

    model, processor = load_pretrained(resolve_source(sft_world["base"]), dtype="float32")
    recs = json.loads((sft_world["data"] / "curated" / "train.json").read_text())[:n]
    return model, ChatCollator(processor, root=sft_world["data"] / "mis")(recs)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return float(loss), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_cached_vision_features_equal_the_live_tower(sft_world):
    from mirage_safety.models.loading import freeze_vision_tower
    from mirage_safety.training import vision_cache

    model, batch = _batch(sft_world)
    freeze_vision_tower(model)
    live_loss, live_grads = _loss_and_grads(model, batch)
    cache = vision_cache.install(model)
    try:
        first = _loss_and_grads(model, batch)  # misses: computed by the live tower
        again = _loss_and_grads(model, batch)  # hits: served from the cache
    finally:
        vision_cache.uninstall(model)
    assert cache.misses == batch["pixel_values"].shape[0] and cache.hits == cache.misses
    for loss, grads in (first, again):
        assert loss == pytest.approx(live_loss, abs=1e-6)
        assert grads.keys() == live_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, live_grads[name], atol=1e-6, rtol=1e-5)
    assert "forward" not in model.model.vision_tower.__dict__  # the live tower is back
    assert _loss_and_grads(model, batch)[0] == pytest.approx(live_loss, abs=1e-6)


def test_vision_cache_refuses_a_training_tower_and_an_inner_projector(sft_world):
    from mirage_safety.training import vision_cache

    model, _ = _batch(sft_world, 1)  # nothing frozen
    with pytest.raises(vision_cache.VisionCacheError, match="needs a frozen vision tower"):
        vision_cache.install(model)
    model.config.model_type = "qwen2_vl"  # a family whose projector is inside the tower
    with pytest.raises(vision_cache.VisionCacheError, match="projector sits inside"):
        vision_cache.install(model)
    with pytest.raises(ConfigError, match=r"cache_vision_features needs train\.freeze_vision"):
        parse_params({"train": {"cache_vision_features": True, "freeze_vision": False}})
    # auto (the default params): on where the family allows it, never an error
    assert "projector sits inside" in vision_cache.why_not(model)
    auto = parse_params({"train": {"cache_vision_features": "auto", "freeze_vision": False}})
    assert auto.train.cache_vision_features == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_with_cached_vision_features_reaches_the_same_model(sft_world, tmp_path, method):
    # 20 steps of 4 over 60 rows: a third of the way into the second epoch, cache hits
    cfg = {"method": method, "max_steps": 20, "save_steps": 100}
    live = run_sft_stage(sft_world, tmp_path / "live", sft_cfg(**cfg))
    cached = run_sft_stage(
        sft_world, tmp_path / "cached", sft_cfg(**cfg, cache_vision_features=True)
    )
    # 80 samples drawn from 60 rows: the second epoch's images come from the cache
    assert cached["vision_cache_hits"] > 0 and cached["vision_cache_misses"] > 0
    assert live["vision_cache_hits"] == live["vision_cache_misses"] == 0
    assert cached["final_loss"] == pytest.approx(live["final_loss"], abs=1e-5)
    assert cached["train_loss"] == pytest.approx(live["train_loss"], abs=1e-5)
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = (state_file(tmp_path / run / "model" / name) for run in ("live", "cached"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_packed_training_reaches_the_same_model(sft_world, tmp_path, monkeypatch):
    from mirage_safety.training import packing

    cfg = {"method": "full", "max_steps": 6, "save_steps": 100}
    padded = run_sft_stage(sft_world, tmp_path / "padded", sft_cfg(**cfg))
    calls = []
    varlen = packing.varlen_sdpa
    monkeypatch.setattr(
        packing, "varlen_sdpa", lambda *a, **kw: calls.append(1) or varlen(*a, **kw)
    )
    # packed rows attend sample by sample (mirage_varlen); then also the LM head only at
    # labelled positions
    packed = run_sft_stage(sft_world, tmp_path / "packed", sft_cfg(**cfg, packing=True))
    both = run_sft_stage(
        sft_world, tmp_path / "both", sft_cfg(**cfg, packing=True, labelled_logits=True)
    )
    assert calls  # the language model's attention went through it
    a = state_file(tmp_path / "padded" / "model" / "model.safetensors")
    for run, metrics in (("packed", packed), ("both", both)):
        assert metrics["final_loss"] == pytest.approx(padded["final_loss"], abs=1e-5)
        # the same non-padding tokens were counted (packed rows carry no attention mask)
        tokens = [m["tokens_per_s"] * m["train_s"] for m in (padded, metrics)]
        assert tokens[0] > 0 and tokens[1] == pytest.approx(tokens[0], rel=1e-9)
        b = state_file(tmp_path / run / "model" / "model.safetensors")
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
        # the attention switch was for training only: the saved model loads as it was
        saved = json.loads((tmp_path / run / "model" / "config.json").read_text())
        assert "mirage_varlen" not in json.dumps(saved)


@pytest.mark.slow
def test_packed_lora_training_with_labelled_logits_reaches_the_same_adapter(sft_world, tmp_path):
    # through PEFT's wrapper: the attention switch finds the base model, logits_to_keep and
    # shift_labels pass through its forward.  It also needs lora_A drawn from train.seed:
    # from the process's RNG, the first LoRA run of a process started elsewhere (final
    # losses 4e-4 apart)
    cfg = {"method": "lora", "max_steps": 6, "save_steps": 100}
    padded = run_sft_stage(sft_world, tmp_path / "padded", sft_cfg(**cfg))
    both = run_sft_stage(
        sft_world, tmp_path / "both", sft_cfg(**cfg, packing=True, labelled_logits=True)
    )
    assert both["final_loss"] == pytest.approx(padded["final_loss"], abs=1e-5)
    a, b = (
        state_file(tmp_path / run / "model" / "adapter_model.safetensors")
        for run in ("padded", "both")
    )
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_preprocessed_once_batches_and_training_equal_the_per_batch_ones(sft_world, tmp_path):
    from mirage_safety.models.loading import load_for_inference
    from mirage_safety.training.collator import ChatCollator
    from mirage_safety.training.preprocess import PaddingCollator, build
    from mirage_safety.training.sft import Row

    _, processor = load_for_inference(sft_world["base"], device="cpu", dtype="float32")
    recs = json.loads((sft_world["data"] / "mis" / "train.json").read_text())[:6]
    rows = [Row(r, sft_world["data"] / "mis") for r in recs]
    collator = ChatCollator(processor, max_length=512)
    ds = build(rows, collator, [0] * len(rows), cache_dir=tmp_path / "pre")
    batcher = PaddingCollator(processor.tokenizer.pad_token_id)
    for pad_to in (None, 8):
        batcher.pad_to_multiple_of = collator.pad_to_multiple_of = pad_to
        live = collator([{"record": r, "root": str(sft_world["data"] / "mis")} for r in recs])
        cached = batcher([ds[i] for i in range(len(rows))])
        assert live.keys() == cached.keys()
        for key in live:
            assert live[key].dtype == cached[key].dtype and torch.equal(live[key], cached[key])
    # the same inputs -> the same cached dataset, loaded instead of built again
    (entry,) = [p for p in (tmp_path / "pre").iterdir() if not p.name.startswith(".")]
    stamp = entry.stat().st_mtime_ns
    build(rows, collator, [0] * len(rows), cache_dir=tmp_path / "pre")
    assert entry.stat().st_mtime_ns == stamp
    # a training run on preprocessed samples reaches the same weights, bit for bit
    cfg = {"method": "full", "max_steps": 6, "save_steps": 100}
    per_batch = run_sft_stage(sft_world, tmp_path / "per_batch", sft_cfg(**cfg))
    once = run_sft_stage(sft_world, tmp_path / "once", sft_cfg(**cfg, preprocess="once"))
    assert once["final_loss"] == per_batch["final_loss"]
    a, b = (
        state_file(tmp_path / run / "model" / "model.safetensors") for run in ("per_batch", "once")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any((tmp_path / "once" / "preprocessed").iterdir())


def test_lora_initialisation_is_drawn_from_the_seed(sft_world):
    from mirage_safety.models.loading import apply_lora, load_for_inference

    def adapters(seed):
        model, _ = load_for_inference(sft_world["base"], device="cpu", dtype="float32")
        lora = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], seed=seed)
        return {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_A" in n}

    state = torch.random.get_rng_state()
    first = adapters(7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG left alone
    torch.rand(100)  # whatever the process drew before, the same seed gives the same init
    again, other = adapters(7), adapters(8)
    assert first and first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
