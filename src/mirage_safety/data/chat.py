"""The chat contract of a record: how a record's turns, ``<image>`` placeholders and image
paths become chat messages and images, for training, inference and the base stage alike.

One owner, so the prompt a model is trained on and the prompt it is asked at inference
cannot drift apart: :func:`record_to_messages` (a train record's conversation),
:func:`prompt_messages` (one question at inference), :func:`resolve_image` (a record's
relative image path, never escaping the dataset root, through image packs) and
:func:`load_image`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from mirage_safety.data.image_packs import PackedImage, image_at
from mirage_safety.data.schema import ASSISTANT_ROLES, HUMAN_ROLES, IMAGE_TOKEN

# Keyed by role name; looked up with whatever a record's "from" holds (None when absent).
_ROLE: Mapping[object, str] = {
    **dict.fromkeys(HUMAN_ROLES, "user"),
    **dict.fromkeys(ASSISTANT_ROLES, "assistant"),
    "system": "system",
}


class RecordError(ValueError):
    """A train record that cannot be turned into model inputs (names file/record/field)."""


def record_id(rec: Mapping[str, Any]) -> str:
    return str(rec.get("id", "<no id>"))


def user_parts(text: str) -> list[dict[str, Any]]:
    """Split a user turn on ``<image>`` into ordered image/text content parts."""
    parts: list[dict[str, Any]] = []
    for k, segment in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            parts.append({"type": "image"})
        if segment.strip():
            parts.append({"type": "text", "text": segment.strip()})
    return parts


def prompt_messages(question: str, n_images: int) -> list[dict[str, Any]]:
    """The single user turn used at inference: ``n_images`` images, then the question.

    ``question`` may already hold ``<image>`` placeholders (train-record style); then they
    fix the image positions and must number ``n_images``.
    """
    if IMAGE_TOKEN in question:
        parts = user_parts(question)
        if sum(p["type"] == "image" for p in parts) != n_images:
            raise ValueError(
                f"question has {question.count(IMAGE_TOKEN)} {IMAGE_TOKEN} "
                f"placeholder(s) but {n_images} image(s) were given"
            )
    else:
        parts = [{"type": "image"}] * n_images + [{"type": "text", "text": question.strip()}]
    return [{"role": "user", "content": parts}]


def record_to_messages(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Canonical conversation -> chat messages with one image part per placeholder."""
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError(f"record {record_id(rec)!r}: field 'conversations': missing or empty")
    messages = []
    for t, turn in enumerate(conv):
        role = _ROLE.get(turn.get("from")) if isinstance(turn, Mapping) else None
        value = turn.get("value") if isinstance(turn, Mapping) else None
        if role is None or not isinstance(value, str):
            raise RecordError(
                f"record {record_id(rec)!r}: field 'conversations[{t}]': "
                "needs 'from' (human/gpt) and a text 'value'"
            )
        content = [{"type": "text", "text": value}] if role == "assistant" else user_parts(value)
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise RecordError(
            f"record {record_id(rec)!r}: field 'conversations': last turn must be the assistant's"
        )
    return messages


def resolve_image(
    root: str | os.PathLike[str], rel: str, *, rid: str = "?", field: str = "images"
) -> Path | PackedImage:
    """A record's relative image path under ``root``; never lets it escape the root.

    A path through a pack (``images/x/pack-00000.zip/a.png``, see data/image_packs.py)
    resolves to that zip member.
    """
    pure = PurePosixPath(str(rel).replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise RecordError(f"record {rid!r}: field {field!r}: path {rel!r} escapes the dataset root")
    path = image_at(root, str(pure))
    if isinstance(path, PackedImage) and not path.exists():
        raise RecordError(
            f"record {rid!r}: field {field!r}: image {str(path)!r} not found "
            f"(no member {path.member!r} in pack {str(path.pack)!r})"
        )
    if not path.is_file():
        raise RecordError(f"record {rid!r}: field {field!r}: image {str(path)!r} not found")
    return path


def load_image(source: Any) -> Any:
    """A PIL RGB image from a PIL image, a path or a packed image."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
    if isinstance(source, PackedImage):
        source = io.BytesIO(source.read_bytes())
    with Image.open(source) as im:
        return im.convert("RGB")
