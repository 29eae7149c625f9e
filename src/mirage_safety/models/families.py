"""Per-family plugins: everything that differs between VLM families lives here.

The rest of the pipeline is family-agnostic: the collator renders the processor's own chat
template and lets the processor expand image placeholders, the Trainer calls the model's
own ``forward`` (which builds Qwen2-VL's M-RoPE position ids from ``image_grid_thw`` and
Gemma 3's bidirectional image attention from ``token_type_ids``), and generation is
``model.generate``.  What cannot be read off the processor or the model is declared here:

* which parameters are the vision tower (frozen for full fine-tuning, never LoRA-wrapped)
  and which are the projector that stays trainable;
* the tokens an image becomes, for the collator's masking checks;
* how positions are laid out (1-D, or Qwen2-VL's 3-row M-RoPE), for packing;
* whether the language model's attention is plain causal, so packed rows can attend sample
  by sample on CPU (training/packing.py);
* whether the frozen vision module's output can be cached (training/vision_cache.py);
* whether the processor carries a video processor.  Those need torchvision, which CPU
  installs of this project do not have (torch is pinned CPU-only), so the processor is then
  loaded image-only: the same class, the same saved files, without its video half.
  Images are unaffected; a video input would be refused by the processor.

A model type not listed falls back to :data:`GENERIC` (the union of the known module
names), with a warning.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values this family covers
    processor_class: str  # transformers class name
    reference: str  # the published checkpoint whose layout the tiny snapshot mirrors
    vision_keys: tuple[str, ...]  # parameter-name parts of the vision encoder ...
    projector_keys: tuple[str, ...]  # ... and of the projector inside / next to it
    image_tokens: tuple[str, ...]  # tokens an image expands to (placeholder, start, end)
    positions: Literal["1d", "mrope"] = "1d"
    video: bool = False  # the processor has a video processor (torchvision)
    token_type_ids: bool = False  # the processor marks image tokens, the model needs them
    # the vision module's output feeds a projector outside it, so a frozen tower's output
    # can be cached per image (training/vision_cache.py); not Qwen2-VL (merger inside)
    cacheable_tower: bool = True
    # the language model's attention is plain causal (no bidirectional image blocks, no
    # sliding window), so a packed row can attend sample by sample (packing.varlen_sdpa)
    causal_text: bool = True


LLAVA = Family(
    "llava",
    ("llava",),
    "LlavaProcessor",
    "llava-hf/llava-1.5-7b-hf",
    vision_keys=("vision_tower",),
    projector_keys=("multi_modal_projector",),
    image_tokens=("<image>",),
)
QWEN2_VL = Family(
    "qwen2_vl",
    ("qwen2_vl", "qwen2_5_vl"),
    "Qwen2VLProcessor",
    "Qwen/Qwen2-VL-2B-Instruct",
    # the projector is visual.merger, inside the vision module
    vision_keys=("visual",),
    projector_keys=("merger",),
    image_tokens=("<|image_pad|>", "<|vision_start|>", "<|vision_end|>"),
    positions="mrope",
    video=True,
    cacheable_tower=False,
)
INTERNVL = Family(
    "internvl",
    ("internvl",),
    "InternVLProcessor",
    "OpenGVLab/InternVL3-1B-hf",
    vision_keys=("vision_tower",),
    projector_keys=("multi_modal_projector",),
    image_tokens=("<IMG_CONTEXT>", "<img>", "</img>"),
    video=True,
)
GEMMA3 = Family(
    "gemma3",
    ("gemma3",),
    "Gemma3Processor",
    "google/gemma-3-4b-it",
    vision_keys=("vision_tower",),
    projector_keys=("multi_modal_projector",),
    image_tokens=("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
    token_type_ids=True,
    causal_text=False,
)
GENERIC = Family(
    "generic",
    (),
    "AutoProcessor",
    "",
    # InternVL / Phi remote code: vision_model; its projector: mlp1
    vision_keys=("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder"),
    projector_keys=("multi_modal_projector", "merger", "mlp1", "projector"),
    image_tokens=(),
    cacheable_tower=False,
    causal_text=False,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAVA, QWEN2_VL, INTERNVL, GEMMA3)}


@functools.cache  # one warning per unknown type, not one per lookup
def family_for_type(model_type: str | None) -> Family:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    log.warning(
        "model type %r is not a known family (%s): using generic module names",
        model_type,
        ", ".join(FAMILIES),
    )
    return GENERIC


def family_of(model: Any) -> Family:
    """The family of a model (or a PEFT-wrapped model, or a config)."""
    config = getattr(model, "config", model)
    return family_for_type(getattr(config, "model_type", None))


def processor_family(processor: Any) -> Family:
    """The family a processor belongs to, by its class (image-only subclasses included)."""
    for cls in type(processor).__mro__:
        for fam in FAMILIES.values():
            if cls.__name__ == fam.processor_class:
                return fam
    return GENERIC


# --------------------------------------------------------------------------- processors
def _image_only(cls: type[Any]) -> type[Any]:
    """``cls`` without its video processor, under the same class name.

    ``ProcessorMixin`` reads its attributes from the ``__init__`` signature, so a subclass
    whose ``__init__`` does not take ``video_processor`` loads, saves and calls with the
    image processor and tokenizer only; keeping the name keeps the saved
    ``processor_config.json`` loadable by the stock class where torchvision exists.
    """
    import inspect

    # transformers reads a processor's accepted processor_config.json keys off its
    # __init__'s code object, so the subclass needs a real function with the parent's
    # parameters (image_seq_length, chat_template, ...) minus video_processor
    parent = inspect.signature(cls.__init__).parameters.values()
    names = [
        p.name
        for p in parent
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "video_processor")
    ]
    defaults = {p.name: p.default for p in parent if p.name in names}
    source = (
        f"def __init__(self, {', '.join(f'{n}=_defaults[{n!r}]' for n in names)}, "
        f"**kwargs):\n    _parent(self, {', '.join(f'{n}={n}' for n in names)}, "
        f"video_processor=None, **kwargs)\n"
    )
    scope: dict[str, Any] = {
        "_defaults": {
            k: (None if v is inspect.Parameter.empty else v) for k, v in defaults.items()
        },
        "_parent": cls.__init__,
    }
    exec(source, scope)
    __init__ = scope["__init__"]
    return type(
        cls.__name__,
        (cls,),
        {"__init__": __init__, "__module__": cls.__module__, "__doc__": cls.__doc__},
    )


@functools.cache  # one class per family: saved and reloaded processors share it
def image_only_processor_class(family: Family) -> type[Any]:
    """The family's processor class, image-only when it has a video half."""
    import transformers

    cls = getattr(transformers, family.processor_class)
    return _image_only(cls) if family.video else cls


def load_processor(
    path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    model_type: str | None = None,
) -> Any:
    """``AutoProcessor.from_pretrained`` that also works without torchvision.

    Families whose processor has a video half are loaded image-only when torchvision is
    missing (the class and files are the same; see the module docstring).
    """
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    family = family_for_type(model_type) if model_type else None
    if family is not None and family.video and not is_torchvision_available():
        log.info(
            "torchvision not installed: loading %s without its video processor",
            family.processor_class,
        )
        return image_only_processor_class(family).from_pretrained(path, revision=revision)
    return AutoProcessor.from_pretrained(
        path, revision=revision, trust_remote_code=trust_remote_code
    )
