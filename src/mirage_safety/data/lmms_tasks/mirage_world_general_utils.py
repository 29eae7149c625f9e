"""lmms-eval task functions for the embedded world's general VQA split (``general/test.json``).

Copied by ``mirage generate`` next to ``mirage_world_general.yaml`` under
``data/lmms_tasks/``; lmms-eval imports it from there (``!function utils.<name>``), in its
own environment, so it needs only the standard library and Pillow.  Paths are relative to
the data directory, which ``mirage evaluate`` makes lmms-eval's working directory.

The score is the project's exact match (``mirage_safety.labelling.formats.exact_match``:
strip, lower-case, collapse whitespace, drop a trailing ``.``/``!``; an answer after
``</think>`` is what counts), so lmms-eval's figure is the one ``make run`` always reported.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import PurePosixPath
from typing import Any

from PIL import Image

ROOT = "general"  # the split's records and images, relative to the data directory
PACK_SUFFIX = ".zip"
# labelling.formats.split_think: a reasoning answer is scored on what follows </think>,
# an unclosed <think> on nothing
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)


def _open(rel: str) -> Image.Image:
    parts = PurePosixPath(rel).parts
    for i, part in enumerate(parts[:-1]):
        if part.endswith(PACK_SUFFIX):  # images/<split>/pack-00000.zip/<member>.png
            with zipfile.ZipFile(str(PurePosixPath(ROOT, *parts[: i + 1]))) as pack:
                data = pack.read("/".join(parts[i + 1:]))
            return Image.open(io.BytesIO(data)).convert("RGB")
    with Image.open(str(PurePosixPath(ROOT, rel))) as im:
        return im.convert("RGB")


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [_open(doc["image_path1"]), _open(doc["image_path2"])]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: Any = None) -> str:
    return str(doc["question"])


def doc_to_messages(doc: dict[str, Any], lmms_eval_specific_kwargs: Any = None
                    ) -> list[dict[str, Any]]:
    """Both images, then the question: the order the models were trained on."""
    first, second = doc_to_visual(doc)
    return [{"role": "user", "content": [
        {"type": "image", "url": first}, {"type": "image", "url": second},
        {"type": "text", "text": doc_to_text(doc)}]}]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .!")


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    response = (results[0] if results else "") or ""
    if m := _THINK.match(response):
        response = m.group(2)
    elif response.lstrip().startswith("<think>"):
        response = ""
    ref = normalise(str(doc.get("answer") or ""))
    return {"exact_match": float(bool(ref) and normalise(response) == ref)}
