"""Small datasets in the public MIS and MSR-Align layouts, built in tmp dirs for the tests.

Images are real (tiny) PNGs written with PIL so the importers' image checks run for real.
The builders return the root; tests then corrupt single records with :func:`edit_json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

# (category, sub_category) pairs cycled over by the MIS builder
MIS_PAIRS: tuple[tuple[str, str], ...] = (
    ("Illegal Activity", "Property Crimes"),
    ("Violent", "Weapon-Related Violence"),
    ("Hate", "Racial and Ethnic Discrimination"),
    ("Self-Harm", "Physical Self-Injury"),
    ("Privacy", "Identity Theft"),
    ("Erotic", "Erotic Visual Content"),
)
# MSR-Align style policy categories (all in the importer's built-in map) and their MIS target
MSR_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("Violence/Physical Harm", "Violent"),
    ("Privacy", "Privacy"),
    ("Illicit/Criminal Behavior", "Illegal Activity"),
    ("Sexual/Adult", "Erotic"),
)
SPLIT_DIRS = {"easy": "easy_image", "hard": "hard_image", "real": "real_image"}


def write_png(path: Path, color: tuple[int, int, int] = (200, 40, 40), size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def edit_json(path: Path, fn: Callable[[list[dict[str, Any]]], Any]) -> None:
    """Load a record list, let ``fn`` mutate it in place, write it back."""
    records = read_json(path)
    fn(records)
    write_json(path, records)


def _color(i: int, k: int) -> tuple[int, int, int]:
    return ((37 * i + 90 * k) % 256, (11 * i) % 256, (200 - 13 * k) % 256)


def build_mis(
    root: Path,
    *,
    n_train: int = 4,
    n_test: int = 3,
    splits: Sequence[str] = ("easy", "hard", "real"),
    test_dir: str = "",
    chat_style: str = "conversations",
    images_key: str = "images",
) -> Path:
    """The public MIS layout: ``mis_train.json`` + ``mis_<split>.json`` + image folders.

    Test ids are integers starting at 1 in every file (as in the release), so the same
    id appears in each split.  ``test_dir="mis_test"`` puts the test files and their
    images in that sub-folder; ``chat_style="messages"`` writes LLaMA-Factory records
    (with a system turn), ``images_key="image"`` the InternVL-style key.
    """
    root.mkdir(parents=True, exist_ok=True)
    train = []
    for i in range(1, n_train + 1):
        cat, sub = MIS_PAIRS[i % len(MIS_PAIRS)]
        images = [f"images/{i}/object1.png", f"images/{i}/object2.png"]
        for k, rel in enumerate(images):
            write_png(root / rel, _color(i, k))
        question = f"How could the item in the first picture be used with the second ({i})?"
        answer = (
            f"The first image shows object A{i} and the second shows object B{i}. "
            "Together with this request the combination is risky, so here is a safe "
            "alternative."
        )
        rec: dict[str, Any] = {"id": i, images_key: images, "category": cat, "sub_category": sub}
        if chat_style == "messages":
            rec["messages"] = [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": f"<image><image>{question}"},
                {"role": "assistant", "content": answer},
            ]
        else:
            rec["conversations"] = [
                {"from": "human", "value": f"<image>\n<image>\n{question}"},
                {"from": "gpt", "value": answer},
            ]
        train.append(rec)
    write_json(root / "mis_train.json", train)

    tdir = root / test_dir if test_dir else root
    for split in splits:
        img_dir = SPLIT_DIRS[split]
        recs = []
        for n in range(1, n_test + 1):
            cat, sub = MIS_PAIRS[n % len(MIS_PAIRS)]
            for k in (1, 2):
                write_png(tdir / img_dir / str(n) / f"object{k}.png", _color(n, k))
            recs.append(
                {
                    "id": n,
                    "category": cat,
                    "sub_category": sub,
                    "question": f"What can I do with these two things ({split} {n})?",
                    "image_path1": f"{img_dir}/{n}/object1.png",
                    "image_path2": f"{img_dir}/{n}/object2.png",
                }
            )
        write_json(tdir / f"mis_{split}.json", recs)
    return root


def build_msr(root: Path, *, n: int = 4, file: str = "msr_align.json") -> Path:
    """An MSR-Align style file: image(s), instruction, category, policy, response.

    Even records carry one ``image`` path, odd ones an ``images`` list of two; every
    record has a judge ``score`` extra field.
    """
    root.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        src_cat, _ = MSR_CATEGORIES[i % len(MSR_CATEGORIES)]
        rec: dict[str, Any] = {
            "id": f"msr-{i}",
            "instruction": f"Describe what is happening here and what I should do next ({i}).",
            "category": src_cat,
            "policy": f"Policy for {src_cat}: goal ... Rule 1 ... Rule 2 ...",
            "response": (
                f"The image shows scene {i}. Rule 2 of the {src_cat} policy applies; "
                "the risk is moderate, so here is a safe answer."
            ),
            "score": 9,
        }
        if i % 2 == 0:
            rec["image"] = f"images/{i}.png"
            write_png(root / rec["image"], _color(i, 0))
        else:
            rec["images"] = [f"images/{i}_a.png", f"images/{i}_b.png"]
            for k, rel in enumerate(rec["images"]):
                write_png(root / rel, _color(i, k))
        recs.append(rec)
    write_json(root / file, recs)
    return root


def build_general(
    root: Path, *, n: int = 6, file: str = "m4_instruct_annotations.json", image_dir: str = "Split1"
) -> Path:
    """A general instruction set in the LLaVA / ShareGPT layout (M4-Instruct style).

    Record ``i`` has ``1 + i % 3`` images under ``image``: a plain path for one image, a
    list otherwise (with one ``<image>`` per image in the human turn); ids are strings
    ``m4-<i>`` and every record carries a ``metadata`` extra.  Record 4 (when present) is
    a two-round chat whose second human turn holds the last image.  A video annotation
    file sits next to it, as in the release, and must not be picked.
    """
    root.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        images = [f"{image_dir}/task{i % 2}/{i}_{k}.png" for k in range(1 + i % 3)]
        for k, rel in enumerate(images):
            write_png(root / rel, _color(i, k))
        question = f"Compare the pictures ({i}): what differs?"
        conv = [
            {"from": "human", "value": "<image>\n" * len(images) + question},
            {"from": "gpt", "value": f"Picture {i} differs in colour."},
        ]
        if i == 4:
            conv = [
                {"from": "human", "value": "<image>\n" * (len(images) - 1) + question},
                {"from": "gpt", "value": "The first ones match."},
                {"from": "human", "value": "And this one? <image>"},
                {"from": "gpt", "value": "It is darker."},
            ]
        recs.append(
            {
                "id": f"m4-{i}",
                "image": images[0] if len(images) == 1 else images,
                "conversations": conv,
                "metadata": {"dataset": f"task{i % 2}"},
            }
        )
    write_json(root / file, recs)
    write_json(
        root / "m4_instruct_video.json",
        [
            {
                "id": "v0",
                "video": "clip.mp4",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat happens?"},
                    {"from": "gpt", "value": "Nothing."},
                ],
            }
        ],
    )
    return root
