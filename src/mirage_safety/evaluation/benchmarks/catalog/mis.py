"""MIS (Multi-Image Safety) test release as an external benchmark: easy, hard and real.

Layout, from https://github.com/DripNowhy/MIS (commit 9cd94ecc0dc0, 2025-05-26): the README's
"Data Preparation" tree and ``evaluation/inference_vllm.py`` / ``evaluation/gpt_eval.py``,
which read ``./mis_test/mis_<split>.json`` and open
``os.path.join('mis_test', item['image_path1'])`` (likewise ``image_path2``), i.e. image
paths are relative to the folder holding the file::

    <root>[/mis_test]/mis_easy.json     -> subset easy
    <root>[/mis_test]/mis_hard.json     -> subset hard
    <root>[/mis_test]/mis_real.json     -> subset real
    <root>[/mis_test]/easy_image/<n>/object1.png, object2.png   (likewise hard_, real_image)

The file names and folders searched are the MIS importer's
(:data:`mirage_safety.data.importers.MIS_TEST_FILES` / ``MIS_TEST_DIRS``: the Hub variant
``mis_test_<split>.json`` and the folders ``mis_test/``, ``MIS_Test/`` too), and so is the
rule joining image paths onto their file's folder.  Subsets are
those whose file exists (none is a problem).  Records: ``{question, category, sub_category,
image_path1, image_path2}`` plus an optional ``id``; the model gets ``question`` with the two
images, in that order.

Ids ``"<subset>/<id>"``, or ``"<subset>/<index in file>"`` (0-based) for a record without an
``id``; every sample is harmful.

Protocol: ASR / RSR / RR / HR from the project's MIS judge (perception level + Safe /
Unsafe, :mod:`mirage_safety.evaluation.judges`), or the keyword judge; no prompt here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from mirage_safety.data.importers import MIS_TEST_DIRS, MIS_TEST_FILES
from mirage_safety.data.schema import clean_path, join_path
from mirage_safety.evaluation.benchmarks.protocols import (
    Headline,
    Protocol,
    Scored,
    by_subset,
    field_equals,
    rate,
)
from mirage_safety.evaluation.benchmarks.sample import (
    BenchSample,
    Validator,
    read_layout_json,
    validate,
)

NAME = "mis"
#: subset -> accepted file names (the importer's, GitHub name first)
FILES: dict[str, tuple[str, ...]] = {k.removeprefix("test_"): v for k, v in MIS_TEST_FILES.items()}
DIRS = MIS_TEST_DIRS
IMAGE_FIELDS = ("image_path1", "image_path2")


def _find(root: Path, names: tuple[str, ...]) -> str | None:
    """The first ``<dir>/<name>`` present, relative to ``root`` (the importer's order)."""
    for d in DIRS:
        for name in names:
            rel = f"{d}/{name}" if d else name
            if (root / rel).is_file():
                return rel
    return None


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    """The MIS test files at ``root`` (see the module docstring)."""
    root = Path(root)

    def build(v: Validator) -> list[BenchSample]:
        found = {subset: _find(root, names) for subset, names in FILES.items()}
        if not any(found.values()):
            looked = ", ".join(
                f"{d}/{n}" if d else n for d in DIRS for names in FILES.values() for n in names[:1]
            )
            v.add(FILES["easy"][0], "-", "<file>", f"MIS test file not found (looked for {looked})")
            return []
        out: list[BenchSample] = []
        for subset, file in found.items():
            if file is None:
                continue
            records = read_layout_json(root / file, v, root=root)
            if records is None:
                continue
            if not isinstance(records, list):
                v.add(file, "-", "<file>", "expected a JSON list of records")
                continue
            base = PurePosixPath(file).parent.as_posix()
            base = "" if base == "." else base
            for idx, rec in enumerate(records):
                sample = _sample(v, file, base, subset, idx, rec)
                if sample is not None:
                    out.append(sample)
        return out

    return validate(root, build, name=NAME, check_images=check_images)


def _sample(
    v: Validator, file: str, base: str, subset: str, idx: int, rec: Any
) -> BenchSample | None:
    if not isinstance(rec, dict):
        v.add(file, f"#{idx}", "<record>", "record is not a JSON object")
        return None
    n_problems = len(v.problems)
    raw_id = rec.get("id")
    if raw_id is None:
        rid, where = str(idx), f"#{idx}"
    elif (
        isinstance(raw_id, bool)
        or not isinstance(raw_id, (int, str))
        or (isinstance(raw_id, str) and not raw_id.strip())
    ):
        rid = where = f"#{idx}"
        v.add(file, where, "id", f"invalid id {raw_id!r} (an integer or text, or absent)")
    else:
        rid = where = str(raw_id)
    question = v.check_text(file, where, rec, "question")
    category = v.check_text(file, where, rec, "category")
    sub_category = v.check_text(file, where, rec, "sub_category")
    paths = []
    for fld in IMAGE_FIELDS:
        path = join_path(base, rec.get(fld))
        v.check_path(file, where, fld, path)
        paths.append(path)
    if len(v.problems) != n_problems or question is None:
        return None
    return BenchSample(
        id=f"{subset}/{rid}",
        subset=subset,
        question=question,
        images=tuple(clean_path(p) for p in paths),
        meta={"category": category, "sub_category": sub_category, "harmful": True},
    )


# ========================================================================== protocol
def summarise(scored: Scored) -> dict[str, Any]:
    """MIS: ASR / RSR / RR / HR from the MIS judge's labels (:mod:`..metrics`)."""

    def one(part: Scored) -> dict[str, Any]:
        out = rate(part, lambda v: v["label"] == "unsafe", "asr")
        for key, label in (("rsr", "rsr"), ("rr", "rr"), ("hr", "hr")):
            r = rate(part, field_equals("label", label), key)
            out.update({k: r[k] for k in (key, f"{key}_ci", f"{key}_k")})
        return out

    return {**one(scored), "subsets": {k: one(v) for k, v in sorted(by_subset(scored).items())}}


PROTOCOL = Protocol(
    NAME,
    ("protocol", "keyword"),
    summarise,
    (Headline("asr", "MIS ASR", "lower"), Headline("rsr", "MIS RSR", "higher")),
    group_by="category",
    mis_judges=True,
)
