"""Batched greedy inference: left-padded batches answer exactly like one prompt at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mirage_safety.models.inference import generate_one, generate_responses
from tiny_world import tiny_model, world_data

MAX_NEW = 12


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> tuple[Any, Any]:
    from mirage_safety.models.loading import load_for_inference

    return load_for_inference(tiny_model(tmp_path_factory), device="cpu")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> list[tuple[str, list[Any]]]:
    """Seven prompts of different token lengths and image counts, images given as Path,
    str and PIL, one with explicit ``<image>`` placeholders."""
    data = world_data(tmp_path_factory)
    root = data / "mis"
    recs = json.loads((root / "test_easy.json").read_text())
    recs += json.loads((root / "test_benign.json").read_text())
    imgs = [[root / r["image_path1"], root / r["image_path2"]] for r in recs]
    pil = [Image.open(p).convert("RGB") for p in imgs[2]]
    return [
        (recs[0]["question"], imgs[0]),
        ("What is this?", [str(p) for p in imgs[1]]),  # short; str paths
        (recs[2]["question"] + " Please explain every step in detail, slowly.", pil),
        ("Name the object.", imgs[3][:1]),  # one image
        ("<image> is first and <image> is second. Which is heavier?", imgs[4]),
        (recs[5]["question"], imgs[5]),
        (" ".join([recs[6]["question"]] * 3), imgs[6]),  # the longest
    ]


def test_batched_equals_one_by_one_in_input_order(loaded, prompts):
    model, processor = loaded
    lengths = {len(processor.tokenizer(q)["input_ids"]) + len(imgs) for q, imgs in prompts}
    assert len(lengths) >= 5  # really different lengths: batches need padding

    reference = [
        generate_one(model, processor, q, imgs, max_new_tokens=MAX_NEW) for q, imgs in prompts
    ]
    # the comparison means something: answers are non-empty and differ between prompts
    assert all(reference) and len(set(reference)) >= 5

    batched = generate_responses(
        model, processor, prompts, batch_size=4, max_new_tokens=MAX_NEW, progress=False
    )
    assert batched == reference
    assert (
        generate_responses(
            model, processor, prompts, batch_size=32, max_new_tokens=MAX_NEW, progress=False
        )
        == reference
    )
    # order preserved whatever the input order (the batches are sorted by length inside)
    assert (
        generate_responses(
            model, processor, prompts[::-1], batch_size=3, max_new_tokens=MAX_NEW, progress=False
        )
        == reference[::-1]
    )


class _RightPadding:
    """A processor that pads on the right: the bug left padding exists to avoid."""

    def __init__(self, processor: Any) -> None:
        self._p = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)

    def __call__(self, **kwargs: Any) -> Any:
        return self._p(**{**kwargs, "padding_side": "right"})


def test_comparison_detects_a_padding_bug(loaded, prompts):
    """Negative control: with right padding the batched answers do change, so the equality
    above is a real check of the padding side (not of a model that ignores its input)."""
    model, processor = loaded
    reference = [
        generate_one(model, processor, q, imgs, max_new_tokens=MAX_NEW) for q, imgs in prompts
    ]
    wrong = generate_responses(
        model,
        _RightPadding(processor),
        prompts,
        batch_size=4,
        max_new_tokens=MAX_NEW,
        progress=False,
    )
    assert wrong != reference


def test_mode_restored_and_empty_input(loaded, prompts):
    model, processor = loaded
    assert generate_responses(model, processor, [], batch_size=4) == []
    model.train()
    try:
        generate_responses(
            model, processor, prompts[:2], batch_size=2, max_new_tokens=2, progress=False
        )
        assert model.training  # a training loop calling it keeps training mode
        generate_one(model, processor, *prompts[0], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("batch_size", [0, -3])
def test_bad_batch_size(loaded, prompts, batch_size):
    model, processor = loaded
    with pytest.raises(ValueError, match=f"batch_size must be >= 1 \\(got {batch_size}\\)"):
        generate_responses(model, processor, prompts, batch_size=batch_size)


def test_placeholder_count_must_match_images(loaded, prompts):
    model, processor = loaded
    two = prompts[0][1]
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 2 image\(s\)"):
        generate_responses(
            model, processor, [("<image> what is it?", two)], batch_size=1, progress=False
        )
    with pytest.raises(ValueError, match=r"3 <image> placeholder\(s\) but 2 image\(s\)"):
        generate_one(model, processor, "<image><image><image> compare", two)


def test_missing_image_names_the_file(loaded, prompts, tmp_path):
    model, processor = loaded
    missing = tmp_path / "gone.png"
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        generate_responses(
            model,
            processor,
            [("What is it?", [prompts[0][1][0], missing])],
            batch_size=1,
            progress=False,
        )


def test_images_may_be_paths_or_pil(loaded, prompts):
    model, processor = loaded
    q, paths = prompts[0]
    as_pil = [Image.open(p) for p in paths]  # PNG mode may not be RGB: converted
    as_str = [str(p) for p in paths]
    answers = {
        generate_one(model, processor, q, imgs, max_new_tokens=MAX_NEW)
        for imgs in (paths, as_str, as_pil, [Path(p) for p in as_str])
    }
    assert len(answers) == 1
