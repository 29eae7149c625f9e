"""The layout of the embedded world's benchmark splits, shared by :mod:`.world_single` and
:mod:`.world_oversensitive` (a helper, not a benchmark: hence the leading underscore):
``<root>/samples.json`` as written by :mod:`mirage_safety.data.world_benchmarks`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mirage_safety.evaluation.benchmarks.sample import BenchSample, read_layout_json, validate

FILE = "samples.json"


def load(root: Path, *, name: str, check_images: bool = True) -> list[BenchSample]:
    def build(v: Any) -> list[BenchSample]:
        records = read_layout_json(root / FILE, v, root=root)
        if records is None:
            return []
        if not isinstance(records, list):
            v.add(FILE, "-", "<file>", "expected a JSON list of samples")
            return []
        out = []
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                v.add(FILE, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            rid = v.check_id(FILE, rec, idx)
            question = v.check_text(FILE, rid, rec, "question")
            v.check_path(FILE, rid, "image", rec.get("image"))
            objects = rec.get("objects")
            if not (
                isinstance(objects, list)
                and len(objects) == 2
                and all(isinstance(o, str) for o in objects)
            ):
                v.add(FILE, rid, "objects", "need [shown object, named object]")
                continue
            if not isinstance(rec.get("harmful"), bool):
                v.add(FILE, rid, "harmful", "must be true or false")
                continue
            if question is None or not isinstance(rec.get("image"), str):
                continue
            out.append(
                BenchSample(
                    id=rid,
                    subset=str(rec.get("subset") or "all"),
                    question=question,
                    images=(rec["image"],),
                    meta={
                        "category": rec.get("category"),
                        "sub_category": rec.get("sub_category"),
                        "harmful": rec["harmful"],
                        "objects": objects,
                        "rule": rec.get("rule"),
                    },
                )
            )
        return out

    return validate(root, build, name=name, check_images=check_images)
