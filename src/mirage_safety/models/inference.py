"""Batched greedy generation for multi-image prompts (the one decoding path of the project).

Every consumer -- base accuracy in ``mirage base``, ``mirage evaluate``, the registered
pyfunc model -- calls :func:`generate_responses`, so the numbers they report come from the
same decoding.  Batches are left-padded (so each prompt's last token is the last column and
new tokens append cleanly) and use the KV cache; prompts are sorted by length so a batch
pads little, then answers are put back in input order.  Greedy decoding makes the output
deterministic; :func:`generate_one` is the unbatched reference the tests compare with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirage_safety.data.chat import load_image, prompt_messages

Prompt = tuple[str, Sequence[Any]]  # (question, [PIL image or path, ...])


@dataclass(frozen=True)
class Generation:
    """One answer: its text, how many tokens were generated and whether the model ended it
    (an end-of-sequence token) or ``max_new_tokens`` cut it."""

    text: str
    n_tokens: int
    finished: bool


def _render_prompts(processor: Any, prompts: Sequence[Prompt]) -> list[str]:
    return [
        processor.apply_chat_template(
            prompt_messages(q, len(imgs)), tokenize=False, add_generation_prompt=True
        )
        for q, imgs in prompts
    ]


def _greedy_kwargs(model: Any, processor: Any, max_new_tokens: int) -> dict[str, Any]:
    tok = getattr(processor, "tokenizer", processor)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    pad = (
        tok.pad_token_id
        if tok.pad_token_id is not None
        else (eos[0] if isinstance(eos, list) else eos)
    )
    # explicit None for sampling knobs: Hub generation configs often ship temperature/top_p,
    # which would only produce warnings under greedy decoding
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": pad,
        "use_cache": True,
    }


def _to_device(batch: Any, model: Any) -> dict[str, Any]:
    import torch

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(model.device)
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)  # pixel_values follow the model (bf16 on GPU)
        out[key] = value
    return out


def _eos_ids(model: Any, processor: Any) -> set[int]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        eos = getattr(getattr(processor, "tokenizer", processor), "eos_token_id", None)
    return {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}


def _generate_batch(
    model: Any, processor: Any, texts: list[str], images: list[list[Any]], max_new_tokens: int
) -> list[Generation]:
    import torch

    # one image list per prompt (see ChatCollator.__call__)
    batch = processor(
        text=texts,
        images=images if any(images) else None,
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )
    inputs = _to_device(batch, model)
    kwargs = _greedy_kwargs(model, processor, max_new_tokens)
    with torch.inference_mode():
        out = model.generate(**inputs, **kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    eos = _eos_ids(model, processor)
    decoded = processor.batch_decode(new_tokens, skip_special_tokens=True)
    gens = []
    for row, text in zip(new_tokens.tolist(), decoded, strict=True):
        # a finished row ends with its end-of-sequence token (then padding, which may be
        # the same id); a row that never emitted one ran into max_new_tokens
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        n = stop + 1 if stop is not None else len(row)
        gens.append(Generation(text.strip(), n, stop is not None or len(row) < max_new_tokens))
    return gens


def _load_images(images: Sequence[Any]) -> list[Any]:
    return [load_image(Path(i) if isinstance(i, str | os.PathLike) else i) for i in images]


def generate_responses(
    model: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    progress: bool = True,
) -> list[str]:
    """Greedy answers for ``(question, [images])`` prompts, in input order.

    Images are PIL images or file paths; the question gets one image part per image before
    its text (or its own ``<image>`` placeholders mark where they go).
    """
    return [
        g.text
        for g in generate(
            model,
            processor,
            prompts,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
    ]


def generate(
    model: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    progress: bool = True,
) -> list[Generation]:
    """:func:`generate_responses` with each answer's token count and end (``finished``)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    texts = _render_prompts(processor, prompts)
    tok = getattr(processor, "tokenizer", processor)
    # sort by (text tokens, image count): neighbours pad to nearly the same length
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i][1]), lengths[i]))
    answers: list[Generation | None] = [None] * len(prompts)
    try:
        for start in tqdm(
            range(0, len(order), batch_size), disable=not progress, desc="generate", unit="batch"
        ):
            idx = order[start : start + batch_size]
            images = [_load_images(prompts[i][1]) for i in idx]
            outs = _generate_batch(
                model, processor, [texts[i] for i in idx], images, max_new_tokens
            )
            for i, gen in zip(idx, outs, strict=True):
                answers[i] = gen
    finally:
        model.train(was_training)
    return [a if a is not None else Generation("", 0, True) for a in answers]


def generate_one(
    model: Any, processor: Any, question: str, images: Sequence[Any], *, max_new_tokens: int = 96
) -> str:
    """The unbatched reference: one prompt, no padding."""
    was_training = model.training
    model.eval()
    try:
        text = _render_prompts(processor, [(question, images)])
        return _generate_batch(model, processor, text, [_load_images(images)], max_new_tokens)[
            0
        ].text
    finally:
        model.train(was_training)
