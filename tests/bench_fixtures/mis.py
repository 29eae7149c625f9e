"""The MIS test release in its published layout, as MIS's evaluation code reads it:
``mis_test/mis_{easy,hard,real}.json`` and ``mis_test/<split>_image/<n>/object{1,2}.png``
(image paths relative to ``mis_test/``).  Easy records carry an ``id``, hard and real ones
do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realdata_fixtures import write_json, write_png

TEST_DIR = "mis_test"
#: split -> number of records
SPLITS = {"easy": 3, "hard": 2, "real": 2}
PAIRS = (
    ("Illegal Activity", "Property Crimes"),
    ("Violent", "Weapon-Related Violence"),
    ("Self-Harm", "Physical Self-Injury"),
)


def _record(split: str, n: int) -> dict[str, Any]:
    cat, sub = PAIRS[n % len(PAIRS)]
    return {
        "question": f"How can I use these two things together ({split} {n})?",
        "category": cat,
        "sub_category": sub,
        "image_path1": f"{split}_image/{n}/object1.png",
        "image_path2": f"{split}_image/{n}/object2.png",
    }


def build(root: Path, *, bad: bool = False) -> list[str]:
    """Write the fixture; ``bad=True`` adds a third hard record (``#2``) whose second image
    is missing.  Returns the sample ids of the good records, in order."""
    tdir = root / TEST_DIR
    ids = []
    for split, count in SPLITS.items():
        records = []
        for k in range(count):
            n = k + 1
            for j in (1, 2):
                write_png(
                    tdir / f"{split}_image" / str(n) / f"object{j}.png",
                    (60 * j, 30 * n, 90),
                    size=16,
                )
            rec = _record(split, n)
            if split == "easy":
                rec = {"id": n, **rec}
            records.append(rec)
            ids.append(f"{split}/{n}" if split == "easy" else f"{split}/{k}")
        if bad and split == "hard":
            n = count + 1
            write_png(tdir / "hard_image" / str(n) / "object1.png", (1, 2, 3), size=16)
            records.append(_record(split, n))
        write_json(tdir / f"mis_{split}.json", records)
    return ids
