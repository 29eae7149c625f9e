"""Record schema (the public MIS layout) and validation of every record before writing.

Test records:  ``{id, category, sub_category, question, image_path1, image_path2, ...}``
Train records: ``{id, images: [...], conversations: [{from: human, value}, {from: gpt, value}], ...}``
(``messages`` with ``role``/``content`` is accepted on import and normalised to
``conversations``).  Paths are relative to the dataset root and never escape it.

Canonical on-disk layout written by the ``generate`` stage (and by the importers)::

    data/mis/train.json            safety SFT records (label style from params)
    data/mis/test_easy.json        test records, one file per split present
    data/mis/test_hard.json
    data/mis/test_benign.json
    data/mis/test_real.json        (real MIS only)
    data/mis/images/...
    data/general/train.json        general multi-image VQA (SFT mix, base pre-training)
    data/general/instruct.json     helpful-only instruction data (base pre-training)
    data/general/test.json         general VQA with exact-match ``answer``
    data/general/images/...
    data/manifest.json             counts per split/category + content hashes
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_TOKEN = "<image>"

# The MIS taxonomy: 6 categories, 12 sub-categories (DESIGN.md section 1).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Illegal Activity": (
        "Property Crimes",
        "Cybercrimes",
        "Drug-Related Offenses",
        "Human Trafficking",
    ),
    "Violent": (
        "Weapon-Related Violence",
        "Public Violence and Rioting",
        "Abuse and Physical Alterations",
    ),
    "Hate": ("Racial and Ethnic Discrimination", "Gender Discrimination"),
    "Self-Harm": ("Physical Self-Injury", "Psychological Harm"),
    "Privacy": ("Unauthorized Data Collection", "Identity Theft"),
    "Erotic": ("Erotic Visual Content",),
}
#: Category used for benign / general samples (never counted in ASR).
GENERAL_CATEGORY = "General"
SUB_TO_CATEGORY = {sub: cat for cat, subs in CATEGORIES.items() for sub in subs}

SAFETY_SPLITS = ("test_easy", "test_hard", "test_benign", "test_real")
GENERAL_TEST_SPLIT = "general_test"
ALL_TEST_SPLITS = (*SAFETY_SPLITS, GENERAL_TEST_SPLIT)

TEST_FIELDS = ("id", "category", "sub_category", "question", "image_path1", "image_path2")
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


@dataclass(frozen=True)
class Problem:
    """One offending field of one record."""

    file: str
    record_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: record {self.record_id!r}: field {self.field!r}: {self.message}"


class DataValidationError(ValueError):
    """Raised with every problem found; nothing has been written when it is raised."""

    def __init__(self, problems: Sequence[Problem], max_shown: int = 20):
        self.problems = list(problems)
        shown = self.problems[:max_shown]
        lines = [f"{len(self.problems)} invalid record field(s); nothing was written:"]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


@dataclass
class Validator:
    """Collects problems across files; call :meth:`raise_if_any` once at the end."""

    root: Path
    check_images: bool = True
    categories: dict[str, tuple[str, ...]] = field(default_factory=lambda: CATEGORIES)
    allow_general: bool = True
    problems: list[Problem] = field(default_factory=list)
    _seen_ids: dict[str, str] = field(default_factory=dict)
    _image_ok: dict[str, str | None] = field(default_factory=dict)

    def add(self, file: str, rid: Any, fld: str, msg: str) -> None:
        self.problems.append(Problem(file, str(rid), fld, msg))

    # ------------------------------------------------------------------ pieces
    def _check_id(self, file: str, rec: dict[str, Any], idx: int) -> str:
        rid = rec.get("id")
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            rid = f"#{idx}"
            self.add(file, rid, "id", "missing or empty id")
            return rid
        rid = str(rid)
        if rid in self._seen_ids:
            self.add(file, rid, "id", f"duplicate id (first seen in {self._seen_ids[rid]})")
        else:
            self._seen_ids[rid] = file
        return rid

    def _check_text(self, file: str, rid: str, rec: dict[str, Any], fld: str) -> str | None:
        value = rec.get(fld)
        if not isinstance(value, str) or not value.strip():
            self.add(file, rid, fld, "missing or empty text")
            return None
        return value

    def _check_category(self, file: str, rid: str, rec: dict[str, Any]) -> None:
        cat, sub = rec.get("category"), rec.get("sub_category")
        if self.allow_general and cat == GENERAL_CATEGORY:
            return
        if cat not in self.categories:
            known = ", ".join(sorted(self.categories))
            self.add(file, rid, "category", f"unknown category {cat!r} (known: {known})")
            return
        if sub is not None and sub not in self.categories[cat]:
            self.add(file, rid, "sub_category",
                     f"unknown sub_category {sub!r} for category {cat!r}")

    def check_path(self, file: str, rid: str, fld: str, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            self.add(file, rid, fld, "missing or empty image path")
            return
        pure = PurePosixPath(value.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", value):
            self.add(file, rid, fld, f"path {value!r} escapes the dataset root")
            return
        full = (self.root / pure).resolve()
        try:
            full.relative_to(self.root.resolve())
        except ValueError:
            self.add(file, rid, fld, f"path {value!r} escapes the dataset root (symlink)")
            return
        if not self.check_images:
            return
        if value not in self._image_ok:
            self._image_ok[value] = _image_error(full)
        err = self._image_ok[value]
        if err:
            self.add(file, rid, fld, f"image {value!r}: {err}")

    # ------------------------------------------------------------------ records
    def test_records(self, file: str, records: Iterable[dict[str, Any]]) -> None:
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                self.add(file, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            rid = self._check_id(file, rec, idx)
            self._check_text(file, rid, rec, "question")
            self._check_category(file, rid, rec)
            if rec.get("category") != GENERAL_CATEGORY and rec.get("sub_category") is None:
                self.add(file, rid, "sub_category", "missing sub_category")
            self.check_path(file, rid, "image_path1", rec.get("image_path1"))
            self.check_path(file, rid, "image_path2", rec.get("image_path2"))
            if rec.get("category") == GENERAL_CATEGORY and "answer" in rec:
                self._check_text(file, rid, rec, "answer")

    def train_records(self, file: str, records: Iterable[dict[str, Any]],
                      *, require_category: bool = True) -> None:
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                self.add(file, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            rid = self._check_id(file, rec, idx)
            if require_category:
                self._check_category(file, rid, rec)
            conv = rec.get("conversations")
            if not isinstance(conv, list) or len(conv) < 2:
                self.add(file, rid, "conversations", "need at least a user and an assistant turn")
                continue
            n_placeholders = 0
            for t, turn in enumerate(conv):
                role = turn.get("from") if isinstance(turn, dict) else None
                value = turn.get("value") if isinstance(turn, dict) else None
                if role not in HUMAN_ROLES + ASSISTANT_ROLES:
                    self.add(file, rid, f"conversations[{t}].from", f"unknown role {role!r}")
                if not isinstance(value, str) or not value.replace(IMAGE_TOKEN, "").strip():
                    self.add(file, rid, f"conversations[{t}].value", "missing or empty text")
                    continue
                if role in ASSISTANT_ROLES and IMAGE_TOKEN in value:
                    self.add(file, rid, f"conversations[{t}].value",
                             "assistant turn contains an <image> placeholder")
                n_placeholders += value.count(IMAGE_TOKEN)
            if conv and isinstance(conv[-1], dict) and conv[-1].get("from") not in ASSISTANT_ROLES:
                self.add(file, rid, "conversations", "last turn must be the assistant's")
            images = rec.get("images", [])
            if not isinstance(images, list):
                self.add(file, rid, "images", "must be a list of paths")
                continue
            if len(images) != n_placeholders:
                self.add(file, rid, "images",
                         f"{len(images)} image(s) but {n_placeholders} <image> placeholder(s)")
            for k, path in enumerate(images):
                self.check_path(file, rid, f"images[{k}]", path)

    def raise_if_any(self, max_shown: int = 20) -> None:
        if self.problems:
            raise DataValidationError(self.problems, max_shown=max_shown)


def _image_error(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def normalise_conversation(rec: dict[str, Any]) -> dict[str, Any]:
    """Accept LLaMA-Factory style ``messages`` (role/content) as well as ``conversations``."""
    if "conversations" in rec or "messages" not in rec:
        return rec
    out = {k: v for k, v in rec.items() if k != "messages"}
    role_map = {"user": "human", "assistant": "gpt", "human": "human", "gpt": "gpt"}
    msgs = rec["messages"] if isinstance(rec["messages"], list) else []
    out["conversations"] = [
        {"from": role_map.get(m.get("role"), m.get("role")), "value": m.get("content")}
        if isinstance(m, dict) else m
        for m in msgs
        if not (isinstance(m, dict) and m.get("role") == "system")
    ]
    return out


def user_text(rec: dict[str, Any]) -> str:
    """The first user turn of a train record."""
    return next(t["value"] for t in rec["conversations"] if t["from"] in HUMAN_ROLES)


def assistant_text(rec: dict[str, Any]) -> str:
    """The last assistant turn of a train record."""
    return next(t["value"] for t in reversed(rec["conversations"]) if t["from"] in ASSISTANT_ROLES)
