"""The ``base`` stage: the model MIRage starts from.

``base.source: builtin`` (embedded world): build the tiny LLaVA-architecture VLM (tokenizer
trained on the world's text) and pre-train it on general multi-image VQA plus helpful-only
instruction data, so it names objects correctly and answers every request helpfully -- the
"capable but unsafe" starting point of the paper.  Writes ``models/base/`` (a
``save_pretrained`` checkpoint + processor) and ``metrics/base.json`` (exact-match accuracy
on the held-out general test, measured with the project's batched inference).

The base deliberately does not read ``data/mis/train.json``: the label style of the
safety data (CoT / refusal / text-only) is an experiment variable, and all of them must
start from the same base.  The tokenizer still knows every label style's words because
its corpus includes the world's label texts for all styles.

``base.source: hub``: resolve ``base.hub.model_id`` + ``revision`` to a commit with
``huggingface_hub`` (the local cache when offline) and write ``models/base/pin.json``;
the weights stay in the Hub cache, loaded at that exact commit by later stages.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mirage_safety import numerics, paths
from mirage_safety.config import (
    BaseConfig,
    BuiltinModelConfig,
    Params,
    SFTConfig,
    TrackingConfig,
    add_run_arguments,
    tracking_wanted,
)
from mirage_safety.data.chat import load_image, resolve_image
from mirage_safety.data.corpus import file_corpus, world_label_corpus
from mirage_safety.io import atomic_dir, read_json, write_json_atomic
from mirage_safety.labelling.formats import exact_match
from mirage_safety.models.folder import PIN_FILE
from mirage_safety.models.inference import generate_responses
from mirage_safety.models.loading import freeze_vision_tower
from mirage_safety.models.tiny_vlm import build_tiny_vlm, count_parameters
from mirage_safety.tracking import stage_run

log = logging.getLogger(__name__)


class HubResolveError(RuntimeError):
    """A Hub model that cannot be pinned (offline and not cached, unknown id...)."""


# --------------------------------------------------------------------------- accuracy
def general_accuracy(
    model: Any,
    processor: Any,
    records: Sequence[Mapping[str, Any]],
    root: Path,
    *,
    batch_size: int,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Exact-match accuracy (0-100) on general test records (images under ``root``),
    overall and per task.  ``max_new_tokens`` defaults to the longest reference answer plus
    its end-of-turn token and one more, so a response can always show that it runs on past
    the reference, whatever the world's answer format."""

    records = records[: limit or None]
    if max_new_tokens is None:
        tok = getattr(processor, "tokenizer", processor)
        max_new_tokens = 2 + max(
            (len(tok(str(r["answer"]), add_special_tokens=False)["input_ids"]) for r in records),
            default=0,
        )
    prompts = [
        (
            r["question"],
            [
                resolve_image(root, r[k], rid=r["id"], field=k)
                for k in ("image_path1", "image_path2")
                if r.get(k)
            ],
        )
        for r in records
    ]
    answers = generate_responses(
        model,
        processor,
        prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    per_task: dict[str, list[bool]] = defaultdict(list)
    for rec, ans in zip(records, answers, strict=True):
        per_task[str(rec.get("sub_category") or "all")].append(exact_match(ans, str(rec["answer"])))
    hits = [h for v in per_task.values() for h in v]
    return {
        "general_accuracy": 100.0 * sum(hits) / max(len(hits), 1),
        "general_accuracy_per_task": {
            k: 100.0 * sum(v) / len(v) for k, v in sorted(per_task.items())
        },
        "general_test_n": len(hits),
        "examples": [
            {"id": r["id"], "question": r["question"], "answer": r["answer"], "response": a}
            for r, a in list(zip(records, answers, strict=True))[:5]
        ],
    }


# --------------------------------------------------------------------------- vision
def labelled_images(
    records: Iterable[tuple[Mapping[str, Any], Path]],
) -> tuple[list[Any], list[str]]:
    """(image, object name) pairs from (record, image root) pairs whose records list
    their ``objects`` per image."""

    images: list[Any] = []
    names: list[str] = []
    for rec, root in records:
        objects = rec.get("objects") or []
        rels = rec.get("images") or [
            rec.get(k) for k in ("image_path1", "image_path2") if rec.get(k)
        ]
        if len(objects) != len(rels):
            continue
        for k, (rel, name) in enumerate(zip(rels, objects, strict=True)):
            images.append(resolve_image(root, rel, rid=str(rec.get("id")), field=f"images[{k}]"))
            names.append(str(name))
    return images, names


def _pixels(paths: Sequence[Any]) -> Any:
    """Images -> uint8 NCHW tensor (4x smaller than floats: the default world has ~50k)."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(load_image(p)) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _normalise(x: Any, processor: Any) -> Any:
    """uint8 pixels -> the normalised floats the CLIP image processor would produce."""
    import torch

    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _augment(x: Any, gen: Any) -> Any:
    """Dihedral augmentation (flips, 90-degree turns): an object stays itself under it, the
    hazard frame too, and the probe stops memorising the 12k training views."""
    import torch

    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def pretrain_vision(
    model: Any,
    processor: Any,
    train: Sequence[tuple[Mapping[str, Any], Path]],
    test: Sequence[tuple[Mapping[str, Any], Path]],
    cfg: BuiltinModelConfig,
    *,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Phase 1: teach the vision tower the world's objects.

    A linear probe on the mean of the patch features the projector will read (the tower's
    last hidden state, CLS dropped) is trained with the tower on every labelled image of the
    general data; the probe is then thrown away.  This stands in for the contrastive
    pre-training a Hub VLM's vision encoder brings along, and makes the LLM's job in phase 2
    (turning features into names) learnable in minutes.  Returns probe accuracy on the
    held-out general test images.
    """
    import torch
    from tqdm.auto import tqdm

    tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
    paths, names = labelled_images(train)
    if not paths:
        raise ValueError(
            "no labelled images for vision pre-training (no general record lists its 'objects')"
        )
    classes = sorted(set(names))
    index = {n: i for i, n in enumerate(classes)}
    x = _pixels(paths)
    y = torch.tensor([index[n] for n in names])
    t_paths, t_names = labelled_images(test)
    keep = [i for i, n in enumerate(t_names) if n in index]
    tx = _pixels([t_paths[i] for i in keep]) if keep else None
    ty = torch.tensor([index[t_names[i]] for i in keep])

    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(tower.config.hidden_size, len(classes))
    params = [*tower.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.vision_pretrain_lr, weight_decay=0.01)
    steps = cfg.vision_pretrain_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, cfg.vision_pretrain_lr, total_steps=steps, pct_start=0.1
    )

    def features(pixels: Any) -> Any:
        x = _normalise(pixels, processor)
        return tower(pixel_values=x).last_hidden_state[:, 1:].mean(dim=1)

    tower.train()
    loss_value = float("nan")
    bar = tqdm(range(steps), desc="vision pre-training", disable=not progress, unit="step")
    for _ in bar:
        idx = torch.randint(0, len(y), (cfg.vision_pretrain_batch_size,), generator=gen)
        loss = torch.nn.functional.cross_entropy(head(features(_augment(x[idx], gen))), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    tower.eval()
    accuracy = None
    if tx is not None:
        with torch.no_grad():
            pred = torch.cat(
                [head(features(tx[i : i + 256])).argmax(-1) for i in range(0, len(ty), 256)]
            )
        accuracy = 100.0 * float((pred == ty).float().mean())
    log.info(
        "vision pre-training: %d steps, final loss %.3f, probe accuracy %s%%",
        steps,
        loss_value,
        "n/a" if accuracy is None else f"{accuracy:.1f}",
    )
    return {
        "vision_pretrain_steps": steps,
        "vision_pretrain_loss": loss_value,
        "vision_probe_accuracy": accuracy,
        "vision_train_images": len(y),
        "vision_classes": len(classes),
    }


# --------------------------------------------------------------------------- builtin
def build_builtin_base(
    cfg: BaseConfig,
    data_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    *,
    image_size: int,
    checkpoint_dir: Path,
    tracking: TrackingConfig | None,
    eval_batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenizer + tiny VLM + pre-training; returns the metrics written to base.json."""
    from mirage_safety.training.sft import (
        is_main_process,
        load_train_records,
        run_sft,
        save_trained,
    )

    b = cfg.builtin
    general = data_dir / "general"
    train_files = [general / "train.json", general / "instruct.json"]
    missing = [str(p) for p in train_files if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"base pre-training data not found: {', '.join(missing)} (run `mirage generate` first)"
        )
    # read once: the records feed the tokenizer corpus, the vision labels and the LM phase
    all_rows = [row for p in train_files for row in load_train_records(p)]
    rows = all_rows
    if b.pretrain_samples and len(rows) > b.pretrain_samples:
        import random

        rows = random.Random(cfg.seed).sample(rows, b.pretrain_samples)
    test_path = general / "test.json"  # held out: the vision probe's test and general accuracy
    test_records = read_json(test_path) if test_path.is_file() else None
    corpus = [*file_corpus(r.record for r in all_rows), *world_label_corpus()]
    model, processor = build_tiny_vlm(corpus, b, image_size, seed=cfg.seed)
    n_params = count_parameters(model)
    log.info("tiny VLM: %d parameters, vocabulary %d", n_params, len(processor.tokenizer))
    vision_metrics: dict[str, Any] = {}
    if b.vision_pretrain_steps:
        vision_metrics = pretrain_vision(
            model,
            processor,
            [(r.record, r.root) for r in all_rows],
            [(rec, general) for rec in test_records or []],
            b,
            seed=cfg.seed,
            progress=progress,
        )
    if b.freeze_vision_in_pretrain:
        freeze_vision_tower(model)

    settings = SFTConfig(
        learning_rate=b.pretrain_lr,
        batch_size=b.pretrain_batch_size,
        max_steps=b.pretrain_steps,
        epochs=1.0,
        warmup_ratio=0.03,
        save_steps=max(50, b.pretrain_steps // 4),
        logging_steps=max(1, min(25, b.pretrain_steps // 20 or 1)),
        max_length=1024,
        seed=cfg.seed,
        packing=b.pretrain_fast,
        labelled_logits=b.pretrain_fast,
        preprocess="once" if b.pretrain_fast else "per_batch",
        cache_vision_features="auto" if b.pretrain_fast else False,
    )
    fingerprint = {
        "stage": "base",
        "config": cfg.model_dump(mode="json"),
        "image_size": image_size,
        "data": [os.path.getsize(p) for p in train_files],
    }
    report_to = ["mlflow"] if tracking is not None else []
    trainer, result = run_sft(
        model,
        processor,
        rows,
        settings,
        checkpoint_dir,
        image_size=image_size,
        fingerprint=fingerprint,
        report_to=report_to,
        run_name="base",
        progress=progress,
        # preprocessing once: kept beside the checkpoints, as train's
        preprocess_cache=checkpoint_dir.parent / "preprocessed",
    )
    save_trained(trainer, processor, out_dir)
    metrics: dict[str, Any] = {
        "source": "builtin",
        "parameters": n_params,
        "vocab_size": len(processor.tokenizer),
        **vision_metrics,
        **result.metrics(),
    }
    if is_main_process():
        if test_records is not None:
            metrics.update(
                general_accuracy(
                    trainer.model,
                    processor,
                    test_records,
                    general,
                    batch_size=eval_batch_size,
                    progress=progress,
                )
            )
        else:
            log.warning("%s not found: general accuracy not measured", test_path)
    return metrics


# --------------------------------------------------------------------------- hub
def resolve_hub_pin(
    model_id: str, revision: str | None, *, trust_remote_code: bool = False, dtype: str = "auto"
) -> dict[str, Any]:
    """``{model_id, commit, trust_remote_code, dtype}`` for ``model_id`` at ``revision``.

    Online: the Hub says which commit the revision is.  Offline (``HF_HUB_OFFLINE`` or no
    network): the local cache's snapshot for that revision; neither -> a clear error.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    commit: str | None = None
    online_error: Exception | None = None
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision  # already a commit: nothing to resolve
    elif os.environ.get("HF_HUB_OFFLINE", "").upper() not in ("1", "ON", "YES", "TRUE"):
        try:
            commit = HfApi().model_info(model_id, revision=revision, timeout=20).sha
        except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as exc:
            online_error = exc
    if commit is None:
        try:
            path = snapshot_download(model_id, revision=revision, local_files_only=True)
            commit = Path(path).name
        except Exception as exc:  # LocalEntryNotFoundError, RevisionNotFoundError...
            why = f"; online lookup failed: {online_error}" if online_error else ""
            raise HubResolveError(
                f"cannot resolve Hub model {model_id!r} (revision {revision or 'main'!r}): it "
                f"is not in the local Hugging Face cache and the Hub is not reachable{why}. "
                f"Download it once with `hf download {model_id}` on a machine "
                f"with network, or set base.hub.model_id to a cached model"
            ) from exc
    return {
        "model_id": model_id,
        "revision": revision,
        "commit": commit,
        "trust_remote_code": trust_remote_code,
        "dtype": dtype,
    }


# --------------------------------------------------------------------------- stage
def run_base(
    cfg: BaseConfig,
    *,
    data_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    image_size: int,
    checkpoint_dir: Path,
    tracking: TrackingConfig | None = None,
    progress: bool = True,
    profile: str | None = None,
) -> dict[str, Any]:
    metrics_path = metrics_dir / "base.json"
    if cfg.source == "hub":
        hub = cfg.hub
        assert hub.model_id  # validated by BaseConfig
        pin = resolve_hub_pin(
            hub.model_id,
            hub.revision,
            trust_remote_code=hub.trust_remote_code,
            dtype=hub.torch_dtype,
        )
        with atomic_dir(out_dir) as tmp:
            write_json_atomic(tmp / PIN_FILE, pin)
        metrics = {"source": "hub", **pin}
        write_json_atomic(metrics_path, metrics)
        log.info("pinned %s at %s", pin["model_id"], pin["commit"])
        return metrics

    from mirage_safety.training.sft import is_main_process

    def _build() -> dict[str, Any]:
        return build_builtin_base(
            cfg,
            data_dir,
            out_dir,
            metrics_dir,
            image_size=image_size,
            checkpoint_dir=checkpoint_dir,
            tracking=tracking,
            progress=progress,
        )

    if tracking is not None and is_main_process():
        import mlflow

        _mlflow_env()
        with stage_run(
            "base",
            tracking,
            {"base": cfg.model_dump(mode="json"), "image_size": image_size},
            profile=profile,
        ):
            metrics = _build()
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
    else:
        metrics = _build()
    if is_main_process():
        metrics["numerics"] = numerics.describe()
        write_json_atomic(metrics_path, metrics)
        import shutil

        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the final model supersedes them
    return metrics


def _mlflow_env() -> None:
    # checkpoints are DVC's business, never MLflow artefacts
    os.environ["HF_MLFLOW_LOG_ARTIFACTS"] = "FALSE"


def _handler(args: argparse.Namespace, params: Params) -> int:
    metrics = run_base(
        params.base,
        data_dir=Path(args.data),
        out_dir=Path(args.out),
        metrics_dir=Path(args.metrics),
        image_size=params.data.world.image_size,
        checkpoint_dir=Path(args.checkpoints),
        tracking=params.tracking if tracking_wanted(args) else None,
        progress=not args.no_progress,
        profile=params.profile,
    )
    if "general_accuracy" in metrics:
        print(
            f"base: general accuracy {metrics['general_accuracy']:.1f}% "
            f"on {metrics['general_test_n']} held-out questions -> {args.out}"
        )
    elif "commit" in metrics:
        print(f"base: pinned {metrics['model_id']} at {metrics['commit']} -> {args.out}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "base",
        help="build/pre-train the builtin tiny VLM, or pin a Hub base model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=paths.DATA, help="dataset root (default: data)")
    p.add_argument("--out", default=paths.BASE_MODEL, help="output dir (default: models/base)")
    p.add_argument("--metrics", default=paths.METRICS, help="metrics dir (default: metrics)")
    p.add_argument(
        "--checkpoints",
        default=paths.BASE_CHECKPOINTS,
        help="resumable checkpoints, outside DVC outs (default: .cache/checkpoints/base)",
    )
    add_run_arguments(p)
    p.set_defaults(func=_handler, params_section="base")
    return p
