"""SIUO, "Safe Inputs but Unsafe Output" (Wang et al., "Cross-Modality Safety Alignment",
NAACL 2025), generation track.

Source: https://github.com/sinwang20/SIUO: ``data/siuo_gen.json`` (167 records); the
images come from the authors' ``SIUO-images.zip``, which the README says to unzip under
``repo_root_dir/data/images``; ``eval/generation-gpt4o-gen.py`` opens
``"./data/images/" + item["image"]`` and sends ``item["question"]`` as the prompt.  The
multiple-choice track (``data/siuo_mcqa.json``) is not read.

Layout (``root`` is the repository root)::

    <root>/data/siuo_gen.json
    <root>/data/images/S-01.png ...        (``image`` is a file name inside data/images/)

Records: ``{question_id (int, 1001...), image, question, category, safety_warning,
reference_answer}``.  One sample per record, id ``str(question_id)``, subset ``all``.
``meta``: ``category``, ``safety_warning``, ``reference_answer``, ``harmful`` (True: every
SIUO pair is safe alone but unsafe to comply with together).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mirage_safety.data.schema import Validator
from mirage_safety.evaluation.benchmarks.sample import (
    BenchSample,
    image_under,
    read_layout_json,
    validate,
)

NAME = "siuo"
FILE = "data/siuo_gen.json"
IMAGE_DIR = "data/images"
TEXT_FIELDS = ("question", "category", "safety_warning", "reference_answer")
_INT_RE = re.compile(r"\d+", re.ASCII)


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    """Every SIUO generation prompt under ``root`` (see the module docstring), in file order."""
    root = Path(root)

    def build(v: Validator) -> list[BenchSample]:
        records = read_layout_json(root / FILE, v, root=root)
        if records is None:
            return []
        if not isinstance(records, list):
            v.add(FILE, "-", "<file>", "expected a JSON list of records")
            return []
        out: list[BenchSample] = []
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                v.add(FILE, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            sample = _sample(v, idx, rec)
            if sample is not None:
                out.append(sample)
        return out

    return validate(root, build, name=NAME, check_images=check_images)


def _sample(v: Validator, idx: int, rec: dict[str, Any]) -> BenchSample | None:
    qid = rec.get("question_id")
    if isinstance(qid, int) and not isinstance(qid, bool) and qid >= 0:
        rid = str(qid)
    elif isinstance(qid, str) and _INT_RE.fullmatch(qid.strip()):
        rid = str(int(qid))
    else:
        rid = f"#{idx}"
        v.add(FILE, rid, "question_id", f"must be a non-negative integer, not {qid!r}")
    image = image_under(v, FILE, rid, "image", f"{IMAGE_DIR}/", rec.get("image"))
    texts = {fld: v.check_text(FILE, rid, rec, fld) for fld in TEXT_FIELDS}
    if rid.startswith("#") or image is None or any(t is None for t in texts.values()):
        return None
    return BenchSample(
        id=rid, subset="all", question=str(texts["question"]), images=(image,),
        meta={"category": texts["category"], "safety_warning": texts["safety_warning"],
              "reference_answer": texts["reference_answer"], "harmful": True})


