"""The ``train`` stage: MIRage supervised fine-tuning on safety-CoT labels.

Reads ``data/curated/train.json`` (safety SFT records as labelled by the teacher and kept
by the curation judge; their images under ``data/mis``) and
``data/general/train.json`` (general multi-image VQA, images under ``data/general``),
mixes general records in at ``train.general_ratio`` of the final mix (seeded), loads the
base model (``models/base``: a checkpoint, or a Hub pin), and fine-tunes it:

* ``train.method: full`` -- language model + projector, vision tower frozen when
  ``train.freeze_vision`` (the paper's set-up);
* ``train.method: lora`` -- a PEFT LoRA adapter on the language model's ``train.lora``
  target modules (merged at inference time).

Checkpoints go every ``train.save_steps`` to ``--checkpoints`` (outside the DVC out); an
interrupted run started again with the same params, data and base resumes from the last
one.  Writes, atomically:

* ``models/mirage/``: full weights or the adapter, the processor, and
  ``mirage_model.json`` (method, base path, Hub id + commit of a pinned base...) so
  ``mirage_safety.models.loading.load_for_inference`` loads either kind;
* ``metrics/train.json``: steps, final / mean loss, throughput, data and parameter counts;
* ``plots/train_loss.csv``: ``step,loss`` for ``dvc plots``.

MLflow (unless ``--no-track``): a ``train`` child run of the pipeline run with the train
params, per-step loss / learning rate / grad norm from the Trainer's MLflow callback and
the summary metrics.  Checkpoints are never copied to MLflow.

Multi-GPU / multi-process: ``accelerate launch --config_file infra/accelerate/<cfg>.yaml
-m mirage_safety.cli train``; every process trains, only rank 0 writes metrics, plots
and tracking.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirage_safety import numerics, paths
from mirage_safety.config import (
    ConfigError,
    Params,
    TrackingConfig,
    TrainConfig,
    add_run_arguments,
    tracking_wanted,
)
from mirage_safety.data.chat import load_image, resolve_image
from mirage_safety.io import sha256_file, write_json_atomic
from mirage_safety.models.folder import PIN_FILE
from mirage_safety.models.loading import (
    apply_lora,
    freeze_vision_tower,
    load_pretrained,
    resolve_source,
)
from mirage_safety.tracking import policies_tags, stage_run

log = logging.getLogger(__name__)

SAFETY_FILE = Path("curated") / "train.json"
SAFETY_IMAGES = Path("mis")  # the curated records' image paths are relative to this
GENERAL_FILE = Path("general") / "train.json"
METRICS_FILE = "train.json"
LOSS_CURVE_FILE = "train_loss.csv"


# --------------------------------------------------------------------------- data
def load_mix(cfg: TrainConfig, data_dir: Path) -> tuple[list[Any], int, int]:
    """``(rows, n_safety, n_general)``: safety records plus the seeded general share."""
    from mirage_safety.training.sft import load_train_records, mix_general

    safety = load_train_records(data_dir / SAFETY_FILE, image_root=data_dir / SAFETY_IMAGES)
    general_path = data_dir / GENERAL_FILE
    general = load_train_records(general_path) if cfg.general_ratio > 0 else []
    if cfg.general_ratio > 0 and not general:
        raise ConfigError(
            f"train.general_ratio is {cfg.general_ratio} but {general_path} holds no records "
            "(a real source imports general data only with data.general): set data.general "
            "(e.g. M4-Instruct, see infra/params.real.yaml) and re-run generate, or set "
            "train.general_ratio: 0"
        )
    rows = mix_general(safety, general, cfg.general_ratio, cfg.seed)
    return rows, len(safety), len(rows) - len(safety)


def probe_image_size(rows: Sequence[Any]) -> int:
    """The longer side of the first training image (for length-grouping estimates)."""

    for row in rows:
        images = row.record.get("images") or []
        if images:
            path = resolve_image(row.root, images[0], rid=str(row.record.get("id")))
            return max(load_image(path).size)
    return 64  # text-only data: the estimate is unused


def _tree_identity(path: Path) -> str:
    """Cheap identity of a base dir: a pin's content, or names + sizes + config hash."""

    pin = path / PIN_FILE
    if pin.is_file():
        return sha256_file(pin)
    parts = [
        f"{p.relative_to(path).as_posix()}:{p.stat().st_size}"
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
    config = path / "config.json"
    parts.append(sha256_file(config) if config.is_file() else "")
    weights = sorted(path.glob("*.safetensors"))
    # small (builtin) weights are hashed; multi-GB Hub checkpoints are identified by size
    if weights and sum(w.stat().st_size for w in weights) < 256 << 20:
        parts += [sha256_file(w) for w in weights]
    return "|".join(parts)


# --------------------------------------------------------------------------- model
def prepare_model(cfg: TrainConfig, base_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Load the base and make the right parameters trainable; returns (model, processor, meta)."""
    import torch

    source = resolve_source(base_dir)
    # Full fine-tuning keeps float32 master weights (bf16 compute comes from autocast /
    # FSDP mixed precision); a LoRA base is frozen, so bf16 storage halves its memory.
    lora_bf16 = cfg.method == "lora" and cfg.bf16 and torch.cuda.is_available()
    model, processor = load_pretrained(source, dtype="bfloat16" if lora_bf16 else "float32")
    meta: dict[str, Any] = {
        "method": cfg.method,
        "base_path": str(base_dir),
        "trust_remote_code": source.trust_remote_code,
    }
    if source.is_hub:
        meta.update(base_model_id=source.path, base_revision=source.revision)
    if cfg.bf16:
        meta["dtype"] = "bfloat16"  # weights are saved from fp32 masters; serve in bf16
    if cfg.method == "full":
        frozen = 0
        if cfg.freeze_vision:
            frozen, _ = freeze_vision_tower(model)
        meta.update(freeze_vision=cfg.freeze_vision, frozen_params=frozen)
    else:
        lora = cfg.lora
        model = apply_lora(
            model,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            seed=cfg.seed,
        )
        meta["lora"] = lora.model_dump(mode="json")
    if cfg.gradient_checkpointing and hasattr(model, "config"):
        model.config.use_cache = False  # incompatible with checkpointing; generation re-enables
    return model, processor, meta


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


# --------------------------------------------------------------------------- stage
def run_train(
    cfg: TrainConfig,
    *,
    data_dir: Path,
    base_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    checkpoint_dir: Path,
    image_size: int | None = None,
    tracking: TrackingConfig | None = None,
    profile: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run the stage; returns the metrics (written to ``metrics_dir/train.json`` on rank 0).

    ``image_size`` (the embedded world's) sizes the length estimate for length-grouped
    batching; None probes the first training image.  ``callbacks`` are extra Trainer
    callbacks (tests use :class:`~mirage_safety.training.sft.StopAfterSteps`).
    """
    if tracking is not None:
        from mirage_safety.training.sft import is_main_process

        if is_main_process():
            # checkpoints are DVC's business, never MLflow artefacts
            os.environ["HF_MLFLOW_LOG_ARTIFACTS"] = "FALSE"
            # namespaced: the Trainer's MLflow callback logs TrainingArguments and the
            # model config as top-level params, and MLflow refuses to overwrite one
            run_params = {
                "train": cfg.model_dump(mode="json"),
                "stage": {
                    "image_size": image_size,
                    "base_dir": str(base_dir),
                    "data_dir": str(data_dir),
                },
            }
            with stage_run(
                "train", tracking, run_params, profile=profile, tags=policies_tags(data_dir)
            ):
                metrics = _train(
                    cfg,
                    data_dir,
                    base_dir,
                    out_dir,
                    metrics_dir,
                    plots_dir,
                    checkpoint_dir,
                    image_size,
                    ["mlflow"],
                    progress,
                    callbacks,
                )
                _log_summary(metrics)
            return metrics
    return _train(
        cfg,
        data_dir,
        base_dir,
        out_dir,
        metrics_dir,
        plots_dir,
        checkpoint_dir,
        image_size,
        [],
        progress,
        callbacks,
    )


def _log_summary(metrics: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )


def _train(
    cfg: TrainConfig,
    data_dir: Path,
    base_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    checkpoint_dir: Path,
    image_size: int | None,
    report_to: list[str],
    progress: bool,
    callbacks: Sequence[Any],
) -> dict[str, Any]:
    from mirage_safety.training.sft import (
        is_main_process,
        run_sft,
        save_trained,
        world_size,
        write_loss_curve,
    )

    t0 = time.perf_counter()
    rows, n_safety, n_general = load_mix(cfg, data_dir)
    if image_size is None:
        image_size = probe_image_size(rows)
    model, processor, meta = prepare_model(cfg, base_dir)
    trainable, total = count_params(model)
    log.info(
        "train: %d safety + %d general records, method %s, %d / %d parameters trainable",
        n_safety,
        n_general,
        cfg.method,
        trainable,
        total,
    )

    fingerprint = {
        "stage": "train",
        "train": cfg.model_dump(mode="json"),
        "image_size": image_size,
        "data": [
            sha256_file(data_dir / SAFETY_FILE),
            sha256_file(data_dir / GENERAL_FILE) if n_general else None,
        ],
        "base": _tree_identity(base_dir),
    }
    trainer, result = run_sft(
        model,
        processor,
        rows,
        cfg,
        checkpoint_dir,
        image_size=image_size,
        fingerprint=fingerprint,
        # train.preprocess once: kept beside the checkpoints, reused
        preprocess_cache=checkpoint_dir.parent / "preprocessed",
        report_to=report_to,
        callbacks=callbacks,
        run_name="train",
        progress=progress,
    )
    meta["global_step"] = result.global_step
    save_trained(trainer, processor, out_dir, model_meta=meta)

    metrics: dict[str, Any] = {
        **result.metrics(),
        "wall_s": time.perf_counter() - t0,  # the whole stage, loading and saving included
        "n_train": len(rows),
        "n_safety": n_safety,
        "n_general": n_general,
        "general_fraction": n_general / len(rows),
        "method": cfg.method,
        "trainable_params": trainable,
        "total_params": total,
        "world_size": world_size(),
        "numerics": numerics.describe(),
    }
    if is_main_process():
        write_json_atomic(metrics_dir / METRICS_FILE, metrics)
        write_loss_curve(plots_dir / LOSS_CURVE_FILE, result.loss_history)
        # the published model supersedes the checkpoints (a full 8B optimizer state is
        # ~100 GB); a crash before this line still leaves them to resume from
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics


# --------------------------------------------------------------------------- CLI
def _handler(args: argparse.Namespace, params: Params) -> int:
    world = params.data.source == "world"
    metrics = run_train(
        params.train,
        data_dir=Path(args.data),
        base_dir=Path(args.base),
        out_dir=Path(args.out),
        metrics_dir=Path(args.metrics),
        plots_dir=Path(args.plots),
        checkpoint_dir=Path(args.checkpoints),
        image_size=params.data.world.image_size if world else None,
        tracking=params.tracking if tracking_wanted(args) else None,
        profile=params.profile,
        progress=not args.no_progress,
    )
    from mirage_safety.training.sft import is_main_process

    if is_main_process():
        resumed = f", resumed from {metrics['resumed_from']}" if metrics["resumed_from"] else ""
        print(
            f"train: {metrics['method']} SFT, {metrics['global_step']} steps on "
            f"{metrics['n_train']} records ({metrics['n_general']} general), final loss "
            f"{metrics['final_loss']:.4f}, {metrics['tokens_per_s']:.0f} tokens/s{resumed} "
            f"-> {args.out}"
        )
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="MIRage SFT of the base model on safety-CoT data (+ general mix)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=paths.DATA,
        help="dataset root holding curated/train.json (images under mis/) and "
        "general/train.json "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--base",
        default=paths.BASE_MODEL,
        help="base model dir: a checkpoint or a Hub pin (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default=paths.MODEL,
        help="trained model dir, replaced atomically (default: %(default)s)",
    )
    p.add_argument(
        "--metrics", default=paths.METRICS, help="metrics dir for train.json (default: %(default)s)"
    )
    p.add_argument(
        "--plots", default=paths.PLOTS, help="plots dir for train_loss.csv (default: %(default)s)"
    )
    p.add_argument(
        "--checkpoints",
        default=paths.TRAIN_CHECKPOINTS,
        help="resumable checkpoints, outside DVC outs; removed after success "
        "(default: %(default)s)",
    )
    add_run_arguments(p)
    p.set_defaults(func=_handler, params_section="train")
    return p
