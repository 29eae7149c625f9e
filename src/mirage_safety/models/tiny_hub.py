"""Tiny random-weight checkpoints of real VLM families, laid out as Hub snapshots.

``mirage tiny-hub --family qwen2_vl --cache DIR`` builds, for each family, a checkpoint
with the real model's config class, processor class, special tokens and *published* chat
template (Qwen/Qwen2-VL-2B-Instruct, OpenGVLab/InternVL3-1B-hf, google/gemma-3-4b-it),
scaled down to a few hundred thousand parameters, and writes it where a download would
leave it in the Hugging Face cache::

    DIR/models--mirage-tiny--qwen2-vl/refs/main            -> "<commit>"
    DIR/models--mirage-tiny--qwen2-vl/snapshots/<commit>/   config.json, model.safetensors,
                                                            tokenizer*, chat_template.jinja,
                                                            processor_config.json, ...

so ``base.source: hub`` with ``base.hub.model_id: mirage-tiny/qwen2-vl`` and ``revision:
<commit>`` (or ``main``) resolves offline through ``huggingface_hub`` exactly as a real
model does online.  The commit is the SHA-1 of the snapshot's files (names and bytes), so
the same family and seed give the same commit on every machine.

What differs from the real snapshots, and why: the tokenizer is a byte-level BPE trained
on the embedded world's text (with the family's special tokens, in the family's roles)
instead of the real 150k-262k vocabulary; images are 32-56 px and become 4 tokens each;
and the Qwen2-VL and InternVL snapshots have no ``video_preprocessor_config.json``, since
their video processors need torchvision, which this project's CPU installs lack (see
:mod:`mirage_safety.models.families`).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mirage_safety.data.corpus import world_label_corpus
from mirage_safety.models.families import (
    FAMILIES,
    GEMMA3,
    INTERNVL,
    QWEN2_VL,
    Family,
    image_only_processor_class,
)
from mirage_safety.models.tiny_vlm import train_bpe

log = logging.getLogger(__name__)

ORG = "mirage-tiny"
REPO_NAMES = {"qwen2_vl": "qwen2-vl", "internvl": "internvl3", "gemma3": "gemma-3"}
VOCAB_SIZE = 1200

# Published chat templates, verbatim in behaviour.
# Qwen/Qwen2-VL-2B-Instruct (chat_template.json)
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# OpenGVLab/InternVL3-*-hf (transformers' convert_internvl_weights_to_hf.py)
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
# google/gemma-3-*-it (chat_template.json)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# the text model every tiny checkpoint shares (per-family key names differ)
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def repo_id(family: Family) -> str:
    return f"{ORG}/{REPO_NAMES[family.name]}"


def repo_dir(cache_dir: str | os.PathLike[str], family: str) -> Path:
    """The family's repo folder in a Hugging Face hub cache (``models--org--name``)."""
    return Path(cache_dir) / f"models--{repo_id(FAMILIES[family]).replace('/', '--')}"


def snapshot_dir(cache_dir: str | os.PathLike[str], family: str, commit: str) -> Path:
    return repo_dir(cache_dir, family) / "snapshots" / commit


def _corpus() -> Iterable[str]:

    yield from world_label_corpus()
    yield "You are a helpful assistant. user model assistant system"


def _tokenizer(special: list[str], **kwargs: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(_corpus(), VOCAB_SIZE, special)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        clean_up_tokenization_spaces=False,
        model_max_length=TEXT["max_position_embeddings"],
        **kwargs,
    )


# --------------------------------------------------------------------------- families
def _qwen2_vl() -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = _tokenizer(
        special,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=special[1:],
        padding_side="right",
    )
    ids = tok.convert_tokens_to_ids
    # 56 x 56 px -> 4 x 4 patches of 14 px -> 2 x 2 merged tokens per image
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = image_only_processor_class(QWEN2_VL)(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN2_VL_TEMPLATE
    )
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    config = Qwen2VLConfig(
        text_config={
            **TEXT,
            "vocab_size": len(tok),
            "bos_token_id": None,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False,
            # sections sum to head_dim / 2 (temporal, height, width)
            "rope_scaling": {
                "type": "mrope",
                "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
            },
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": TEXT["hidden_size"],
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_chans": 3,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2VLForConditionalGeneration(config), processor


def _internvl() -> tuple[Any, Any]:
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<quad>",
        "</quad>",
        "<ref>",
        "</ref>",
        "<box>",
        "</box>",
        "<video>",
    ]
    tok = _tokenizer(
        special,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=special[1:],
        padding_side="right",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    # 32 px tiles, 8 px patches, pixel shuffle 0.5 -> 4 tokens per tile; one tile per image
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32},
        crop_to_patches=False,
        min_patches=1,
        max_patches=1,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = image_only_processor_class(INTERNVL)(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=4,
        chat_template=INTERNVL_TEMPLATE,
    )
    config = InternVLConfig(
        text_config={
            **TEXT,
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": [32, 32],
            "patch_size": [8, 8],
            "use_absolute_position_embeddings": True,
        },
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return InternVLForConditionalGeneration(config), processor


def _gemma3() -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import (
        Gemma3ImageProcessorPil,
    )

    special = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    tok = _tokenizer(
        special,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        additional_special_tokens=special[4:],
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    # 32 px, 8 px patches -> 4 x 4 patches, average-pooled to 2 x 2 = 4 tokens per image
    image_processor = Gemma3ImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=4,
        chat_template=GEMMA3_TEMPLATE,
    )
    config = Gemma3Config(
        text_config={
            **TEXT,
            "head_dim": 16,
            "vocab_size": len(tok),
            "sliding_window": 512,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(config)
    # the -it generation config stops at <end_of_turn> as well as <eos>
    model.generation_config.eos_token_id = [
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<end_of_turn>"),
    ]
    return model, processor


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    QWEN2_VL.name: _qwen2_vl,
    INTERNVL.name: _internvl,
    GEMMA3.name: _gemma3,
}


def build_tiny(family: str, seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of a tiny random-weight checkpoint of ``family``."""
    import torch

    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r} (have {', '.join(BUILDERS)})")
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.eval(), processor


# --------------------------------------------------------------------------- snapshot
def _content_commit(root: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def write_snapshot(
    family: str, cache_dir: str | os.PathLike[str], *, seed: int = 0, revision: str = "main"
) -> tuple[str, str]:
    """Build ``family``'s tiny checkpoint into ``cache_dir`` as a Hub snapshot.

    Returns ``(repo_id, commit)``.  Idempotent: the same family and seed give the same
    commit, and an existing snapshot of it is left alone.
    """
    rid = repo_id(FAMILIES[family])
    repo = repo_dir(cache_dir, family)
    staging = repo / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    model, processor = build_tiny(family, seed)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    commit = _content_commit(staging)
    snap = snapshot_dir(cache_dir, family, commit)
    if snap.is_dir():
        shutil.rmtree(staging)
    else:
        snap.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    ref = repo / "refs" / revision
    tmp = ref.with_name(f".{ref.name}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)
    return rid, commit


def _handler(args: argparse.Namespace) -> int:
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = Path(args.cache or HF_HUB_CACHE)
    names = list(BUILDERS) if args.family == "all" else [args.family]
    for name in names:
        rid, commit = write_snapshot(name, cache, seed=args.seed)
        print(f"{name}\t{rid}\t{commit}\t{cache}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tiny-hub",
        help="build tiny random-weight Hub snapshots of real VLM families",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--family", choices=[*BUILDERS, "all"], default="all")
    p.add_argument(
        "--cache", default=None, help="Hugging Face hub cache to write into (default: HF_HUB_CACHE)"
    )
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.set_defaults(func=_handler)
    return p
