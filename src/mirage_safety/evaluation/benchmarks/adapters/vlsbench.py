"""VLSBench (visual leakless safety benchmark).

Layout, from https://github.com/AI45Lab/VLSBench (commit 68f54dea3eab, 2025-07-22): ``eval.py``
opens ``os.path.join(data_root, "data.json")`` and each image at
``os.path.join(data_root, item["image_path"])``, i.e. image paths (``"imgs/0.png"``) are
relative to the directory holding ``data.json``.  Two published copies have that shape::

    <root>/data.json  + <root>/imgs/N.png             Hugging Face release Foreshhh/vlsbench
                                                      (data.json + imgs.tar, extracted in place)
    <root>/data/data.json + <root>/data/imgs/N.png    the GitHub repository (data/data.json;
                                                      the images go next to it)

The first found is read.  Records: ``{instruction_id, instruction, image_path, category,
sub_category, source, image_description, safety_reason}`` (the last two added in the
2025-03-10 release); the model gets ``instruction`` alone with the image (``eval.py`` ->
``model_inference(question, image_path)``).  The release holds one record
(``instruction_id`` 1685) whose ``instruction`` is empty, the query being the text in its
image: an empty instruction is therefore accepted (a non-text one is not).  ``source``,
``image_description`` and ``safety_reason`` are optional (text when present).

One sample per record, id ``str(instruction_id)``, subset ``all``; every sample is harmful.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from mirage_safety.data.schema import clean_path, join_path
from mirage_safety.evaluation.benchmarks.sample import (
    BenchSample,
    Validator,
    read_layout_json,
    validate,
)

NAME = "vlsbench"
#: where ``data.json`` may be, relative to the root, in order
FILES = ("data.json", "data/data.json")
SUBSET = "all"
OPTIONAL_TEXT = ("source", "image_description", "safety_reason")


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    """The VLSBench copy at ``root`` (see the module docstring)."""
    root = Path(root)

    def build(v: Validator) -> list[BenchSample]:
        file = next((f for f in FILES if (root / f).is_file()), None)
        if file is None:
            v.add(FILES[0], "-", "<file>", f"file not found (nor {FILES[1]}); is this the "
                  "benchmark's published layout?")
            return []
        records = read_layout_json(root / file, v, root=root)
        if records is None:
            return []
        if not isinstance(records, list):
            v.add(file, "-", "<file>", "expected a JSON list of records")
            return []
        base = PurePosixPath(file).parent.as_posix()
        base = "" if base == "." else base
        out = []
        for idx, rec in enumerate(records):
            sample = _sample(v, file, base, idx, rec)
            if sample is not None:
                out.append(sample)
        return out

    return validate(root, build, name=NAME, check_images=check_images)


def _record_id(v: Validator, file: str, idx: int, rec: dict[str, Any]) -> str | None:
    rid = rec.get("instruction_id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)) or (
            isinstance(rid, str) and not rid.strip()):
        v.add(file, f"#{idx}", "instruction_id", "missing or invalid id (an integer or text)")
        return None
    return str(rid)


def _sample(v: Validator, file: str, base: str, idx: int, rec: Any) -> BenchSample | None:
    if not isinstance(rec, dict):
        v.add(file, f"#{idx}", "<record>", "record is not a JSON object")
        return None
    n_problems = len(v.problems)
    rid = _record_id(v, file, idx, rec)
    where = rid if rid is not None else f"#{idx}"
    instruction = rec.get("instruction")
    if not isinstance(instruction, str):
        v.add(file, where, "instruction", "missing or not text")
    category = v.check_text(file, where, rec, "category")
    sub_category = v.check_text(file, where, rec, "sub_category")
    path = join_path(base, rec.get("image_path"))
    v.check_path(file, where, "image_path", path)
    for fld in OPTIONAL_TEXT:
        if rec.get(fld) is not None and not isinstance(rec[fld], str):
            v.add(file, where, fld, "must be text when present")
    if (len(v.problems) != n_problems or rid is None or not isinstance(instruction, str)
            or not isinstance(path, str)):
        return None
    return BenchSample(
        id=rid, subset=SUBSET, question=instruction, images=(clean_path(path),),
        meta={"category": category, "sub_category": sub_category,
              "source": rec.get("source"), "image_description": rec.get("image_description"),
              "safety_reason": rec.get("safety_reason"), "harmful": True})
