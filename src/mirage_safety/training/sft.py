"""Supervised fine-tuning set-up shared by base pre-training and the MIRage ``train`` stage.

The work is done by ``transformers.Trainer``; this module only decides *how*:

* data: canonical train records from one or more JSON files (each with its own image
  root), validated up front (errors name file, record and field), mixed at a seeded ratio;
* batches: :class:`~mirage_safety.training.collator.ChatCollator` (assistant-only labels,
  dynamic right padding) fed by a random sampler (length grouping is available but off:
  see ``SFTConfig.group_by_length``);
* checkpoints every ``save_steps`` in a checkpoint dir *outside* the DVC output (DVC wipes
  outs before re-running a stage); a later run with the same fingerprint (params, data,
  base) resumes from the last checkpoint, a changed one starts fresh;
* CPU speed: torch threads = cores (per process), no evaluation during training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mirage_safety.config import SFTConfig
from mirage_safety.data.schema import read_train_file
from mirage_safety.io import read_json, write_json_atomic, write_text_atomic
from mirage_safety.models.families import family_of
from mirage_safety.models.folder import write_model_meta
from mirage_safety.training import preprocess as P
from mirage_safety.training import vision_cache
from mirage_safety.training.collator import (
    ChatCollator,
    reset_tokenizer_state,
    tokens_per_image,
)
from mirage_safety.training.compile import compiled_decoder_layers
from mirage_safety.training.labelled_logits import LabelledLogits
from mirage_safety.training.packing import PackedCollator, qwen2_vl_mrope, use_varlen_attention
from mirage_safety.training.preprocess import PaddingCollator

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
#: where ``train.preprocess: once`` keeps its datasets (one per content hash)
PREPROCESS_CACHE = Path(".cache/preprocessed")


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Row:
    """One training sample: a canonical record and the directory its image paths are under."""

    record: dict[str, Any]
    root: Path


def load_train_records(
    path: str | os.PathLike[str],
    *,
    image_root: Path | None = None,
    check_images: bool = False,
    max_errors_shown: int = 20,
) -> list[Row]:
    """Read + validate a canonical train JSON file; image paths are relative to
    ``image_root`` (default: the file's directory)."""

    root = Path(image_root) if image_root is not None else Path(path).parent
    records = read_train_file(
        path, image_root=root, check_images=check_images, max_errors_shown=max_errors_shown
    )
    return [Row(r, root) for r in records]


def mix_general(
    safety: Sequence[Row], general: Sequence[Row], ratio: float, seed: int
) -> list[Row]:
    """``safety`` plus general rows making up ``ratio`` of the final mix, seeded.

    General rows are drawn without replacement while they last (cycled in a fresh seeded
    order beyond that), so the mix is reproducible from ``seed`` alone.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"general_ratio must be in [0, 1) (got {ratio})")
    n_general = round(ratio * len(safety) / (1 - ratio)) if ratio else 0
    if n_general and not general:
        raise ValueError(f"general_ratio {ratio} needs general records but none were given")
    rng = random.Random(seed)
    picked: list[Row] = []
    while len(picked) < n_general:
        order = list(general)
        rng.shuffle(order)
        picked.extend(order[: n_general - len(picked)])
    mix = [*safety, *picked]
    rng.shuffle(mix)
    return mix


def build_dataset(
    rows: Sequence[Row],
    collator: ChatCollator,
    image_size: int,
    *,
    preprocess: str = "per_batch",
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Any:
    """A ``datasets.Dataset`` for the Trainer: ``{record (JSON), root, length}`` rows that
    the collator turns into tensors per batch, or (``preprocess="once"``) the samples'
    tensors themselves, computed once and cached under ``cache_dir``
    (:mod:`.preprocess`).

    ``length`` (text tokens + image expansion) drives length-grouped batching, the same
    estimate either way (so the sampler draws the same batches); computing it also fills
    the collator's per-record text cache.
    """
    from datasets import Dataset

    if not rows:
        raise ValueError("no training records")
    per_image = tokens_per_image(collator.processor, image_size)
    lengths = [collator.estimate_length(r.record, r.root, per_image) for r in rows]
    if preprocess == "once":
        return P.build(
            rows, collator, lengths, cache_dir=cache_dir or PREPROCESS_CACHE, progress=progress
        )
    return Dataset.from_dict(
        {
            "record": [json.dumps(r.record, ensure_ascii=False) for r in rows],
            "root": [str(r.root) for r in rows],
            "length": lengths,
        }
    )


# --------------------------------------------------------------------------- callbacks
class ThroughputCallback(TrainerCallback):
    """Samples/s and non-padding tokens/s of *this* session's optimisation steps.

    The window runs from the end of the session's first step to the end of its last one,
    so it holds, for every step in it, the batch's loading + collation and its forward,
    backward and optimizer step, and nothing else: model load, dataset build, a resumed
    checkpoint's restore, the first step's warm-up and checkpoint saves after the last
    step are outside.  A one-step session is timed over that step.
    """

    def __init__(self) -> None:
        self.t_first: float | None = None
        self.first: tuple[float, int, int] | None = None  # (time, step, tokens) after step 1
        self.elapsed = 0.0
        self.steps = 0
        self.tokens = 0
        self.tokens_first = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
            self.tokens_first = state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, state.global_step, state.num_input_tokens_seen)
            assert self.t_first is not None
            # fallback for a one-step session
            self.elapsed = now - self.t_first
            self.steps = 1
            self.tokens = state.num_input_tokens_seen - self.tokens_first
            return
        t0, step0, tokens0 = self.first
        self.elapsed = now - t0
        self.steps = state.global_step - step0
        self.tokens = state.num_input_tokens_seen - tokens0


class LogLastStep(TrainerCallback):
    """Log the final optimisation step too, so ``final_loss`` is the last step's window
    and the logged windows cover every step (``train_loss`` is computed from them)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True


class StopAfterSteps(TrainerCallback):
    """Simulate an interruption: raise once ``global_step`` reaches ``steps``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.steps:
            raise KeyboardInterrupt(f"simulated interruption at step {state.global_step}")


# --------------------------------------------------------------------------- resume
def checkpoint_key_renamer(model: Any) -> Callable[[str], str] | None:
    """Saved (original-format) weight name -> the model's own parameter name, or None.

    ``save_pretrained`` writes checkpoints in the original Hub layout (LLaVA:
    ``language_model.model.layers...``) while the live model says
    ``model.language_model.layers...``; ``from_pretrained`` renames on load, but the
    Trainer's resume loads the raw state dict, so without this every weight of a
    resumed run would be silently skipped (the run would continue from the base).
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    if not hasattr(model, "base_model_prefix"):
        return None
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions or [] if isinstance(c, WeightRenaming)]
    if not renamings:
        return None
    native = model.state_dict()

    def rename(key: str) -> str:
        if key in native:
            return key
        return rename_source_key(key, renamings, [], model.base_model_prefix, native)[0]

    return rename


def make_trainer_class() -> type:
    """``Trainer`` whose checkpoint resume maps saved weight names to the model's."""
    from transformers import Trainer

    class ResumableTrainer(Trainer):
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            target = self.model if model is None else model
            rename = None if self.is_fsdp_enabled else checkpoint_key_renamer(target)
            if rename is None:  # PEFT adapters, FSDP shards: already in the model's names
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            # a renamer exists only for a model (checkpoint_key_renamer(None) is None)
            assert target is not None
            original = target.load_state_dict
            aliases: dict[int, list[str]] = {}  # tied weights: one tensor, several names
            for name, param in target.named_parameters(remove_duplicate=False):
                aliases.setdefault(id(param), []).append(name)

            def load_renamed(state_dict: Any, strict: bool = True, **kw: Any) -> Any:
                renamed = {rename(k): v for k, v in state_dict.items()}
                result = original(renamed, strict, **kw)
                # a resume that loads nothing must never pass silently
                if renamed and len(result.unexpected_keys) == len(renamed):
                    raise RuntimeError(
                        f"{resume_from_checkpoint}: no checkpoint weight "
                        "matches the model; cannot resume"
                    )
                # a tied weight (lm_head = embeddings) is saved once: loaded via its alias
                tied = {
                    n
                    for names in aliases.values()
                    if len(names) > 1 and any(a in renamed for a in names)
                    for n in names
                }
                return result._replace(
                    missing_keys=[k for k in result.missing_keys if k not in tied]
                )

            # an instance attribute shadowing the method for this one load (deleted below)
            target.load_state_dict = load_renamed  # type: ignore[method-assign]
            try:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            finally:
                del target.load_state_dict

    return ResumableTrainer


# --------------------------------------------------------------------------- runtime
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def set_cpu_threads() -> int:
    """torch threads = cores / processes on this node (DDP on CPU shares the cores).

    An explicit ``OMP_NUM_THREADS`` wins (shared CI machines, tests, benchmarks).
    """
    import torch

    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        threads = int(explicit)
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, (os.cpu_count() or 1) // max(local, 1))
    torch.set_num_threads(threads)
    return threads


def history_mean_loss(history: Sequence[dict[str, float]]) -> float:
    """Mean per-step loss over all logged windows (each window weighted by its steps).

    Unlike the Trainer's ``training_loss`` this also covers the steps of an interrupted
    session that a resumed run restored from its checkpoint's log history.
    """
    total = 0.0
    prev = 0
    for h in history:
        step = int(h["step"])
        total += h["loss"] * (step - prev)
        prev = step
    return total / prev if prev else float("nan")


def prepare_checkpoint_dir(checkpoint_dir: Path, fingerprint: dict[str, Any]) -> str | None:
    """Last checkpoint to resume from, or None; a stale dir (other fingerprint) is cleared."""
    fp_path = checkpoint_dir / FINGERPRINT_FILE
    if checkpoint_dir.is_dir():
        old = read_json(fp_path) if fp_path.is_file() else None
        if old != fingerprint:
            if is_main_process():
                log.info(
                    "checkpoints in %s belong to other params/data: starting fresh", checkpoint_dir
                )
                shutil.rmtree(checkpoint_dir)
        else:
            last = _last_complete_checkpoint(checkpoint_dir)
            if last:
                log.info("resuming from %s", last)
            return last
    return None


def _last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end.  The Trainer writes a checkpoint
    in place and its ``trainer_state.json`` last, so a run killed while saving (SIGKILL,
    OOM, preemption) leaves a directory without it: that one is removed and the previous
    one is resumed from."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    steps = []
    for path in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        if is_main_process():
            log.warning("%s was not finished (killed while saving?): removed", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


@dataclass
class SFTResult:
    global_step: int
    final_loss: float
    train_loss: float
    wall_s: float
    train_s: float
    samples_per_s: float
    tokens_per_s: float
    resumed_from: str | None
    loss_history: list[dict[str, float]] = field(default_factory=list)
    # train.cache_vision_features: images served from the cache / run through the tower
    vision_cache_hits: int = 0
    vision_cache_misses: int = 0

    def metrics(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("loss_history")
        return out


def run_sft(
    model: Any,
    processor: Any,
    rows: Sequence[Row],
    settings: SFTConfig,
    checkpoint_dir: str | os.PathLike[str],
    *,
    image_size: int,
    fingerprint: dict[str, Any] | None = None,
    report_to: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    run_name: str | None = None,
    on_trainer: Callable[[Any], None] | None = None,
    progress: bool | None = None,
    preprocess_cache: Path | None = None,
) -> tuple[Any, SFTResult]:
    """Train ``model`` on ``rows`` with the Trainer; resume from ``checkpoint_dir`` if valid.

    ``fingerprint`` identifies what is trained (params, data, base); checkpoints made under
    another fingerprint are discarded.  ``progress`` None = a bar when stderr is a terminal.
    Returns the trainer (whose ``model`` is trained; save it with :func:`save_trained`)
    and a summary.
    """
    import torch
    from transformers import TrainingArguments

    t_start = time.perf_counter()
    set_cpu_threads()
    ckpt = Path(checkpoint_dir)
    # JSON round trip: the comparison with the stored file must not trip on tuples
    fp = json.loads(
        json.dumps(
            {"settings": settings.model_dump(mode="json"), **(fingerprint or {})},
            sort_keys=True,
            default=str,
        )
    )
    resume = prepare_checkpoint_dir(ckpt, fp)
    if is_main_process():
        ckpt.mkdir(parents=True, exist_ok=True)
        write_json_atomic(ckpt / FINGERPRINT_FILE, fp)

    pad_to = 8 if torch.cuda.is_available() else None
    collator = ChatCollator(processor, max_length=settings.max_length, pad_to_multiple_of=pad_to)
    dataset = build_dataset(
        rows,
        collator,
        image_size,
        preprocess=settings.preprocess,
        cache_dir=preprocess_cache,
        progress=bool(progress),
    )
    batcher: Any = collator
    if settings.preprocess == "once":
        tok = getattr(processor, "tokenizer", processor)
        batcher = PaddingCollator(tok.pad_token_id, pad_to_multiple_of=pad_to)
    varlen_family = False
    if settings.packing:
        family = family_of(model)
        mrope = qwen2_vl_mrope(model) if family.positions == "mrope" else None
        batcher = PackedCollator(batcher, mrope=mrope)
        varlen_family = family.causal_text
    if settings.labelled_logits:
        batcher = LabelledLogits(batcher)
    text_only = any(not r.record.get("images") for r in rows)
    cuda = torch.cuda.is_available()
    use_bf16 = settings.bf16 and cuda and torch.cuda.is_bf16_supported()
    if settings.bf16 and not use_bf16:
        log.warning("bf16 requested but not supported here: training in float32")

    args = TrainingArguments(
        output_dir=str(ckpt),
        run_name=run_name,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        eval_strategy="no",
        report_to=list(report_to) or "none",
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=use_bf16,
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=settings.dataloader_workers,
        dataloader_persistent_workers=settings.dataloader_workers > 0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,  # the collator needs record/root
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        length_column_name="length",
        # a packed row has no padding and no attention mask: its every token counts (and
        # "non_padding" would warn on every step that it cannot find the padding)
        include_num_input_tokens_seen="all" if settings.packing else "non_padding",
        # images-free batches leave the projector/vision tower without gradients
        ddp_find_unused_parameters=text_only,
        disable_tqdm=not is_main_process() or not (os.isatty(2) if progress is None else progress),
        # `accelerate launch` (torchrun) without GPUs: gloo DDP on CPU processes; the
        # Trainer only picks the CPU backend when told so
        use_cpu=not cuda and world_size() > 1,
        save_only_model=False,  # optimizer + scheduler + RNG states: exact resume
    )
    throughput = ThroughputCallback()
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=batcher,
        processing_class=processor,
        callbacks=[throughput, LogLastStep(), *callbacks],
    )
    if on_trainer:
        on_trainer(trainer)
    cache = None
    if settings.cache_vision_features:
        skip = vision_cache.why_not(model) if settings.cache_vision_features == "auto" else None
        if skip:  # auto: on where the family allows it
            log.info("vision features not cached (train.cache_vision_features: auto): %s", skip)
        else:
            cache = vision_cache.install(model)
    try:
        with contextlib.ExitStack() as stack:
            if varlen_family and stack.enter_context(use_varlen_attention(model)):
                log.info("packed rows attend sample by sample (mirage_varlen)")
            if settings.compile:
                n = stack.enter_context(compiled_decoder_layers(model))
                log.info("%d decoder layers compiled (torch.compile, dynamic shapes)", n)
            train_out = trainer.train(resume_from_checkpoint=resume)
    finally:
        if cache is not None:
            log.info("vision cache: %d hits, %d images computed", cache.hits, cache.misses)
            vision_cache.uninstall(model)

    history = [
        {"step": int(e["step"]), "loss": float(e["loss"])}
        for e in trainer.state.log_history
        if "loss" in e and "step" in e
    ]
    final_loss = history[-1]["loss"] if history else float("nan")
    per_step = settings.batch_size * settings.grad_accum * world_size()
    elapsed = throughput.elapsed or float("nan")
    result = SFTResult(
        global_step=int(trainer.state.global_step),
        final_loss=final_loss,
        train_loss=history_mean_loss(history) if history else float(train_out.training_loss),
        wall_s=time.perf_counter() - t_start,
        train_s=throughput.elapsed,
        samples_per_s=throughput.steps * per_step / elapsed if throughput.steps else 0.0,
        tokens_per_s=throughput.tokens / elapsed if throughput.steps else 0.0,
        resumed_from=resume,
        loss_history=history,
        vision_cache_hits=cache.hits if cache is not None else 0,
        vision_cache_misses=cache.misses if cache is not None else 0,
    )
    if not math.isfinite(final_loss):
        raise RuntimeError(f"training ended with a non-finite loss ({final_loss})")
    return trainer, result


def save_trained(
    trainer: Any,
    processor: Any,
    out_dir: str | os.PathLike[str],
    model_meta: dict[str, Any] | None = None,
) -> None:
    """Atomically publish the trained model (+ processor, + JSON side files) at ``out_dir``.

    Every process calls this (a sharded FSDP model is gathered collectively); the main
    process builds ``out_dir`` in a sibling temp dir and swaps it in, so a crash never
    leaves a half-written model for DVC to cache.
    """
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-final")
    if trainer.is_world_process_zero() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    if getattr(trainer, "is_fsdp_enabled", False):
        # checkpoints may be sharded (fast, per rank); the published model must be one
        # standard safetensors checkpoint that from_pretrained loads
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        reset_tokenizer_state(processor)
        processor.save_pretrained(tmp)
        if model_meta is not None:
            write_model_meta(tmp, model_meta)
        for junk in ("training_args.bin",):  # the run's args: not part of the model
            (tmp / junk).unlink(missing_ok=True)
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def write_loss_curve(path: str | os.PathLike[str], history: Sequence[dict[str, float]]) -> None:
    """``step,loss`` CSV for ``dvc plots`` (atomic)."""

    lines = ["step,loss"] + [f"{int(h['step'])},{h['loss']:.6f}" for h in history]
    write_text_atomic(path, "\n".join(lines) + "\n")
