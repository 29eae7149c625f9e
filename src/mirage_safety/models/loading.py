"""Load a model directory for training or inference, builtin or Hub, full or LoRA (the
directory kinds are :mod:`mirage_safety.models.folder`'s)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirage_safety.models.families import GENERIC, family_of, load_processor
from mirage_safety.models.folder import (
    PIN_FILE,
    ModelDirError,
    find_base,
    has_processor,
    read_model_meta,
    read_pin,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a local dir, or a Hub id at a pinned commit."""

    path: str  # local dir or Hub model id
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    is_hub: bool = False

    def describe(self) -> str:
        return f"{self.path}@{self.revision}" if self.revision else self.path


def resolve_source(model_dir: str | os.PathLike[str]) -> ModelSource:
    """A base dir (checkpoint or ``pin.json``) -> where to load its weights from."""
    d = Path(model_dir)
    pin = read_pin(d)
    if pin is not None:
        return ModelSource(
            pin["model_id"],
            pin["commit"],
            bool(pin.get("trust_remote_code")),
            str(pin.get("dtype") or "auto"),
            is_hub=True,
        )
    if (d / "config.json").is_file():
        return ModelSource(str(d))
    raise ModelDirError(
        f"{d}: neither a checkpoint (config.json) nor a Hub pin ({PIN_FILE}); "
        "run `mirage base` first"
    )


def _torch_dtype(name: str) -> Any:
    import torch

    return {
        "auto": "auto",
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[name]


def load_pretrained(
    source: ModelSource, *, dtype: str | None = None, device_map: Any = None
) -> tuple[Any, Any]:
    """``(model, processor)`` from a local dir or a pinned Hub commit."""
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {
        "revision": source.revision,
        "trust_remote_code": source.trust_remote_code,
        "dtype": _torch_dtype(dtype or source.dtype),
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForImageTextToText.from_pretrained(source.path, **kwargs)
    except ValueError as exc:
        # remote-code VLMs (e.g. the original InternVL2.5 repos) register only AutoModel /
        # AutoModelForCausalLM
        if not source.trust_remote_code:
            raise ModelDirError(
                f"{source.describe()}: not loadable as an image-text-to-text "
                f"model ({exc}); set base.hub.trust_remote_code if the "
                "repo ships its own modelling code"
            ) from exc
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        raise ModelDirError(f"{source.describe()}: cannot load weights: {exc}") from exc
    processor = load_processor(
        source.path,
        revision=source.revision,
        trust_remote_code=source.trust_remote_code,
        model_type=getattr(model.config, "model_type", None),
    )
    return model, processor


# --------------------------------------------------------------------------- training
def freeze_vision_tower(model: Any) -> tuple[int, int]:
    """Freeze the vision encoder, keep the projector and language model trainable.

    Returns (frozen, trainable) parameter counts.  This is the paper's set-up for full
    fine-tuning (LLM + projector updated, vision tower frozen).
    """
    family = family_of(model)
    frozen = trainable = 0
    for name, param in model.named_parameters():
        parts = name.split(".")
        in_vision = any(k in parts for k in family.vision_keys)
        is_projector = any(k in parts for k in family.projector_keys)
        if in_vision and not is_projector:
            param.requires_grad_(False)
            frozen += param.numel()
        elif param.requires_grad:
            trainable += param.numel()
    if frozen == 0:
        log.warning(
            "freeze_vision: no vision-tower parameters found (looked for %s)",
            ", ".join(family.vision_keys),
        )
    return frozen, trainable


def lora_target_regex(
    modules: list[str], vision_keys: tuple[str, ...] = GENERIC.vision_keys
) -> str:
    """PEFT ``target_modules`` regex: the named linear layers of the language model only.

    A plain list would also wrap the CLIP/ViT attention projections (same names), which
    must stay frozen.
    """
    vision = "|".join(vision_keys)
    names = "|".join(re.escape(m) for m in modules)
    return rf"^(?!.*\b(?:{vision})\b).*\.(?:{names})$"


def unwrap_peft(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (the model itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_lora(
    model: Any,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    seed: int | None = None,
) -> Any:
    """``model`` with LoRA adapters.  lora_A's random initialisation is drawn in a forked
    RNG (the global one left as it was), from ``seed`` when given."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_regex(target_modules, family_of(model).vision_keys),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelDirError(
            f"LoRA target modules {target_modules} match no language-model layer: {exc}"
        ) from exc


# --------------------------------------------------------------------------- inference
def base_source(meta: dict[str, Any], model_dir: Path) -> ModelSource:
    """Where a trained dir's base weights come from (:func:`~.folder.find_base`)."""
    base = find_base(meta, model_dir)
    if isinstance(base, Path):
        return resolve_source(base)
    return ModelSource(
        base, meta.get("base_revision"), bool(meta.get("trust_remote_code")), is_hub=True
    )


def load_for_inference(
    model_dir: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """``(model, processor)`` ready for :func:`generate_responses`, a LoRA adapter merged
    into its base (merged weights run as fast as a full checkpoint and need no peft later).

    ``model_dir`` is a base dir (checkpoint or pin) or a trained dir with
    ``mirage_model.json``.  ``base_dir`` (a LoRA adapter's base packaged next to it, as in a
    registered model) replaces the metadata's ``base_path``, which points into the training
    workspace and does not exist where the registered model is served.
    """
    import torch

    d = Path(model_dir)
    if not d.is_dir():
        raise ModelDirError(f"{d}: model directory not found")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = read_model_meta(d)
    # a bf16-trained model is saved from fp32 master weights; serve it in bf16
    dtype = dtype or (meta or {}).get("dtype")
    if meta and meta["method"] == "lora":
        from peft import PeftModel

        base = resolve_source(base_dir) if base_dir is not None else base_source(meta, d)
        model, processor = load_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(d)).merge_and_unload()
        if has_processor(d):
            processor = load_processor(
                str(d),
                trust_remote_code=base.trust_remote_code,
                model_type=getattr(model.config, "model_type", None),
            )
    else:
        source = (
            resolve_source(d)
            if meta is None
            else ModelSource(str(d), trust_remote_code=bool(meta.get("trust_remote_code")))
        )
        model, processor = load_pretrained(source, dtype=dtype)
    model.to(device)
    model.eval()
    return model, processor
