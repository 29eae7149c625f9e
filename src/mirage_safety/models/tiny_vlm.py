"""The embedded tiny VLM: a real ``LlavaForConditionalGeneration`` a laptop can train.

Architecture (all standard ``transformers`` classes, so every loader, collator, trainer and
generation path is the one a Hub checkpoint goes through):

* vision tower: ``CLIPVisionModel`` on ``image_size`` px images with ``patch_size`` patches
  (64 px / 16 px -> 16 patch tokens per image, CLS dropped by the ``default`` feature strategy);
* projector: LLaVA's two-layer MLP;
* language model: a Llama-style decoder (``LlamaConfig``).

The tokenizer is a byte-level BPE trained locally (``tokenizers``) on the world's text, so
world words ("crowbar", "refuse", ...) are single tokens and sequences stay short.  It is
wrapped as a ``PreTrainedTokenizerFast`` with ``<image>``, pad, bos/eos and chat role markers
and a Jinja chat template that renders multi-image user turns (``{"type": "image"}`` parts ->
``<image>``).  The processor is a ``LlavaProcessor`` with the PIL CLIP image processor (no
torchvision) that expands each ``<image>`` to ``num_image_tokens`` placeholders.

Saved with ``save_pretrained`` so ``AutoModelForImageTextToText.from_pretrained(dir)`` and
``AutoProcessor.from_pretrained(dir)`` load it like any Hub checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mirage_safety.config import BuiltinModelConfig

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_TOKEN,
    IMAGE_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
    SYSTEM_TOKEN,
)

# Compact layout (no newlines: every token costs CPU time):
#   <s><|user|><image><image>QUESTION<|assistant|>ANSWER</s><|user|>...
# The assistant text and its </s> sit inside {% generation %} so
# ``return_assistant_tokens_mask`` also works with this template; the collator does not rely
# on it (Hub templates rarely have the block), see training/collator.py.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def num_image_tokens(cfg: BuiltinModelConfig, image_size: int) -> int:
    """Placeholder tokens per image: one per patch (the CLS token is dropped)."""
    if image_size % cfg.patch_size:
        raise ValueError(
            f"image_size {image_size} is not a multiple of patch_size {cfg.patch_size}"
        )
    return (image_size // cfg.patch_size) ** 2


def train_bpe(corpus: Iterable[str], vocab_size: int, special_tokens: Iterable[str]) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``corpus``; the special tokens
    get the first ids, in order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in corpus if t), trainer=trainer)
    return tok


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` and wrap it with special tokens + chat template.

    Byte-level means any text round-trips exactly (decode(encode(x)) == x), which the
    label-masking tests and the judges rely on; ``vocab_size`` merges are enough for every
    world word to become one token.
    """
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(corpus, vocab_size, SPECIAL_TOKENS)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        # named extra tokens become attributes (tokenizer.image_token), which
        # LlavaProcessor reads to find its placeholder
        extra_special_tokens={
            "image_token": IMAGE_TOKEN,
            "user_token": USER_TOKEN,
            "assistant_token": ASSISTANT_TOKEN,
            "system_token": SYSTEM_TOKEN,
        },
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    return wrapped


def build_processor(
    tokenizer: PreTrainedTokenizerFast, cfg: BuiltinModelConfig, image_size: int
) -> LlavaProcessor:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    num_image_tokens(cfg, image_size)  # validates divisibility
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        # CLIP adds a CLS token (+1) that the "default" strategy drops (-1): one token per patch
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, cfg: BuiltinModelConfig, image_size: int, *, seed: int = 0
) -> LlavaForConditionalGeneration:
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 4,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        # one token in, one id out (the stub has no overload for a single str)
        image_token_index=cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)),
        vision_feature_select_strategy="default",
        # the last layer: with two vision layers the usual -2 would waste half the tower
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return model


def build_tiny_vlm(
    corpus: Iterable[str], cfg: BuiltinModelConfig, image_size: int, *, seed: int = 0
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Tokenizer + processor + randomly initialised model, ready for pre-training."""
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg, image_size)
    model = build_model(tokenizer, cfg, image_size, seed=seed)
    return model, processor


def save_tiny_vlm(model: Any, processor: Any, out_dir: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` both halves into one directory (safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
