"""Record schema (the public MIS layout) and validation of every record before writing.

Test records:  ``{id, category, sub_category, question, image_path1, image_path2, ...}``
Train records: ``{id, images: [...], conversations: [{from: human, value},
{from: gpt, value}], ...}``
(``messages`` with ``role``/``content`` is accepted on import and normalised to
``conversations``).  Paths are relative to the dataset root and never escape it.

Canonical on-disk layout written by the ``generate`` stage (and by the importers)::

    data/mis/train.json            safety SFT records (the world's / the release's own labels)
    data/mis/test_easy.json        test records, one file per split present
    data/mis/test_hard.json
    data/mis/test_benign.json
    data/mis/test_benign_shift.json (embedded world only)
    data/mis/test_real.json        (real MIS only)
    data/mis/images/...
    data/general/train.json        general multi-image VQA (SFT mix, base pre-training)
    data/general/instruct.json     helpful-only instruction data (base pre-training)
    data/general/test.json         general VQA with exact-match ``answer``
    data/general/images/<split>/pack-NNNNN.zip   images packed 256 samples a file
                                   (a path may run through a zip: see data/image_packs.py)
    data/manifest.json             counts per split/category + content hashes
    data/labelled/train.json       the label stage's records (teacher labels; images under
                                   data/mis), failures.jsonl, manifest.json (policies hash)
    data/curated/train.json        the curate stage's kept records (what train reads),
                                   scores.jsonl, report.md, score_hist.png, manifest.json
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mirage_safety.data.image_packs import PackedImage, split_pack_path

IMAGE_TOKEN = "<image>"

# The MIS taxonomy: 6 categories, 12 sub-categories (the MIS paper's).
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
#: Category of an imported TRAIN record that has none (LLaMA-Factory's ShareGPT files carry
#: no category): fine for training, counted in the manifest; test records still need one.
UNKNOWN_CATEGORY = "unknown"
SUB_TO_CATEGORY = {sub: cat for cat, subs in CATEGORIES.items() for sub in subs}

#: benign splits: over-refusal and helpfulness, never ASR.  ``test_benign_shift`` (embedded
#: world) holds a kind of benign counterpart that safety training never shows.
BENIGN_SPLITS = ("test_benign", "test_benign_shift")
SAFETY_SPLITS = ("test_easy", "test_hard", *BENIGN_SPLITS, "test_real")
GENERAL_TEST_SPLIT = "general_test"
ALL_TEST_SPLITS = (*SAFETY_SPLITS, GENERAL_TEST_SPLIT)

TEST_FIELDS = ("id", "category", "sub_category", "question", "image_path1", "image_path2")
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


def is_absolute_path(value: str) -> bool:
    """POSIX- or Windows-absolute (``/x``, ``\\x``, ``C:x``)."""
    return value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) is not None


def join_path(base: str, value: Any) -> Any:
    """A path from a data file in ``base`` (relative to the root) -> relative to the root.

    Anything but a relative text path is left alone, so the Validator reports it."""
    if not base or not isinstance(value, str) or not value or is_absolute_path(value):
        return value
    return f"{base}/{value}"


def clean_path(value: str) -> str:
    """POSIX form without ``./`` parts (only called on already validated paths)."""
    return PurePosixPath(value.replace("\\", "/")).as_posix()


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

    def __init__(self, problems: Sequence[Problem], max_shown: int = 20, hint: str | None = None):
        self.problems = list(problems)
        self.hint = hint
        shown = self.problems[: max(1, max_shown)]
        lines = [f"{len(self.problems)} invalid record field(s); nothing was written:"]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        if hint:
            lines.append(f"hint: {hint}")
        super().__init__("\n".join(lines))


@dataclass
class Validator:
    """Collects problems across files; call :meth:`raise_if_any` once at the end."""

    root: Path
    #: open and verify every referenced image
    check_images: bool = True
    #: relative paths of the images this process writes itself (world generation validates
    #: while its workers render): existence is membership, no file-system calls
    written_images: Collection[str] | None = None
    categories: dict[str, tuple[str, ...]] = field(default_factory=lambda: CATEGORIES)
    allow_general: bool = True
    problems: list[Problem] = field(default_factory=list)
    _seen_ids: dict[str, str] = field(default_factory=dict)
    _image_ok: dict[str, str | None] = field(default_factory=dict)
    _real_dirs: dict[Path, Path] = field(default_factory=dict)

    def add(self, file: str, rid: Any, fld: str, msg: str) -> None:
        self.problems.append(Problem(file, str(rid), fld, msg))

    # ------------------------------------------------------------------ pieces
    # Public so importers can check source-specific fields with the same rules; the
    # underscore names are kept as aliases for existing callers.
    def check_id(self, file: str, rec: dict[str, Any], idx: int) -> str:
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

    def check_text(self, file: str, rid: str, rec: Mapping[Any, Any], fld: str) -> str | None:
        value = rec.get(fld)
        if not isinstance(value, str) or not value.strip():
            self.add(file, rid, fld, "missing or empty text")
            return None
        return value

    def check_category(self, file: str, rid: str, rec: dict[str, Any]) -> None:
        cat, sub = rec.get("category"), rec.get("sub_category")
        if self.allow_general and cat == GENERAL_CATEGORY:
            return
        if cat is None:
            self.add(file, rid, "category", "missing category")
            return
        if not isinstance(cat, str) or cat not in self.categories:
            known = ", ".join(sorted(self.categories))
            self.add(file, rid, "category", f"unknown category {cat!r} (known: {known})")
            return
        if sub is not None and sub not in self.categories[cat]:
            self.add(
                file, rid, "sub_category", f"unknown sub_category {sub!r} for category {cat!r}"
            )

    _check_id = check_id
    _check_text = check_text
    _check_category = check_category

    def check_path(self, file: str, rid: str, fld: str, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            self.add(file, rid, fld, "missing or empty image path")
            return
        if "\x00" in value:
            self.add(file, rid, fld, f"path {value!r} contains a NUL byte")
            return
        pure = PurePosixPath(value.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", value):
            self.add(file, rid, fld, f"path {value!r} escapes the dataset root")
            return
        if self.written_images is not None:
            if self.check_images and value not in self.written_images:
                self.add(file, rid, fld, f"image {value!r}: not among the images this run writes")
            return
        packed = split_pack_path(pure)
        full = self.root / (packed[0] if packed else pure)
        if self._escapes_by_symlink(full):
            self.add(file, rid, fld, f"path {value!r} escapes the dataset root (symlink)")
            return
        if not self.check_images:
            return
        if value not in self._image_ok:
            self._image_ok[value] = _image_error(PackedImage(full, packed[1]) if packed else full)
        err = self._image_ok[value]
        if err:
            self.add(file, rid, fld, f"image {value!r}: {err}")

    def _escapes_by_symlink(self, full: Path) -> bool:
        # realpath is the costly part of validation: resolve each directory once, and
        # the file itself only when it is a link.
        root = self._real_dirs.get(self.root)
        if root is None:
            root = self._real_dirs[self.root] = Path(os.path.realpath(self.root))
        parent = self._real_dirs.get(full.parent)
        if parent is None:
            parent = self._real_dirs[full.parent] = Path(os.path.realpath(full.parent))
        real = Path(os.path.realpath(full)) if full.is_symlink() else parent / full.name
        return not real.is_relative_to(root)

    # ------------------------------------------------------------------ records
    def test_records(self, file: str, records: Iterable[dict[str, Any]]) -> None:
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                self.add(file, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            rid = self.check_id(file, rec, idx)
            self.check_text(file, rid, rec, "question")
            self.check_category(file, rid, rec)
            if rec.get("category") != GENERAL_CATEGORY and rec.get("sub_category") is None:
                self.add(file, rid, "sub_category", "missing sub_category")
            self.check_path(file, rid, "image_path1", rec.get("image_path1"))
            self.check_path(file, rid, "image_path2", rec.get("image_path2"))
            if rec.get("category") == GENERAL_CATEGORY and "answer" in rec:
                self.check_text(file, rid, rec, "answer")

    def train_records(
        self, file: str, records: Iterable[dict[str, Any]], *, require_category: bool = True
    ) -> None:
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                self.add(file, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            rid = self.check_id(file, rec, idx)
            if require_category and rec.get("category") != UNKNOWN_CATEGORY:
                self.check_category(file, rid, rec)
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
                    self.add(
                        file,
                        rid,
                        f"conversations[{t}].value",
                        "assistant turn contains an <image> placeholder",
                    )
                n_placeholders += value.count(IMAGE_TOKEN)
            if conv and isinstance(conv[-1], dict) and conv[-1].get("from") not in ASSISTANT_ROLES:
                self.add(file, rid, "conversations", "last turn must be the assistant's")
            images = rec.get("images", [])
            if not isinstance(images, list):
                self.add(file, rid, "images", "must be a list of paths")
                continue
            if len(images) != n_placeholders:
                self.add(
                    file,
                    rid,
                    "images",
                    f"{len(images)} image(s) but {n_placeholders} <image> placeholder(s)",
                )
            for k, path in enumerate(images):
                self.check_path(file, rid, f"images[{k}]", path)

    def raise_if_any(self, max_shown: int = 20, hint: str | None = None) -> None:
        if self.problems:
            raise DataValidationError(self.problems, max_shown=max_shown, hint=hint)


def _image_error(path: Path | PackedImage) -> str | None:
    import io
    import zipfile

    from PIL import Image, UnidentifiedImageError

    if isinstance(path, PackedImage):
        if not path.pack.is_file():
            return f"pack {str(path.pack)!r} not found"
        try:
            if not path.exists():
                return f"no member {path.member!r} in pack {str(path.pack)!r}"
            source: Any = io.BytesIO(path.read_bytes())
        except (zipfile.BadZipFile, OSError) as exc:
            return f"unreadable pack ({type(exc).__name__}: {exc})"
    elif not path.exists():
        return "file not found"
    elif not path.is_file():
        return "not a regular file"
    else:
        source = path
    try:
        with Image.open(source) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


_ROLE_MAP = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt"}


def _content_text(value: Any) -> Any:
    """OpenAI-style content parts (``[{type: image}, {type: text, text}]``) -> one string.

    Image parts become ``<image>`` placeholders in place.  Anything unrecognised is
    returned unchanged so the Validator reports it instead of it being silently dropped.
    """
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        return value
    parts: list[str] = []
    for part in value:
        kind = part.get("type")
        if kind in ("image", "image_url"):
            parts.append(IMAGE_TOKEN)
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            return value
    return "\n".join(parts)


def _normalise_turn(turn: Any) -> Any:
    if not isinstance(turn, dict):
        return turn
    role = turn.get("from", turn.get("role"))
    if isinstance(role, str):
        role = _ROLE_MAP.get(role, role)
    return {"from": role, "value": _content_text(turn.get("value", turn.get("content")))}


def normalise_conversation(rec: dict[str, Any]) -> dict[str, Any]:
    """Canonical ``conversations`` ([{from: human|gpt, value}]) from the common chat layouts.

    Accepts ShareGPT/LLaVA ``conversations`` (from/value, also with user/assistant roles),
    LLaMA-Factory ``messages`` (role/content), role/content turns inside ``conversations``,
    and OpenAI-style content parts.  System turns are dropped (the pipeline applies its own
    chat template).  Malformed values are passed through for the Validator to report.
    """
    key = "conversations" if "conversations" in rec else "messages" if "messages" in rec else None
    if key is None:
        return rec
    out = {k: v for k, v in rec.items() if k != "messages"}
    turns = rec[key]
    if not isinstance(turns, list):
        out["conversations"] = turns
        return out
    out["conversations"] = [
        _normalise_turn(t)
        for t in turns
        if not (isinstance(t, dict) and t.get("from", t.get("role")) == "system")
    ]
    return out


def read_train_file(
    path: str | os.PathLike[str],
    *,
    image_root: Path | None = None,
    check_images: bool = False,
    max_errors_shown: int = 20,
) -> list[dict[str, Any]]:
    """Read + validate a canonical train JSON file (normalised conversations); image paths
    are relative to ``image_root`` (default: the file's directory).  Raises
    :class:`DataValidationError` naming the file, record and field."""
    import json

    p = Path(path)
    if not p.is_file():
        raise DataValidationError([Problem(str(p), "-", "<file>", "file not found")])
    try:
        records = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataValidationError(
            [Problem(str(p), "-", "<file>", f"not valid JSON: {exc}")]
        ) from None
    if not isinstance(records, list):
        raise DataValidationError([Problem(str(p), "-", "<file>", "expected a JSON list")])
    records = [normalise_conversation(r) if isinstance(r, dict) else r for r in records]
    validator = Validator(root=image_root or p.parent, check_images=check_images)
    validator.train_records(str(p), records, require_category=False)
    validator.raise_if_any(max_errors_shown)
    return records


def user_text(rec: dict[str, Any]) -> str:
    """The first user turn of a train record."""
    return next(t["value"] for t in rec["conversations"] if t["from"] in HUMAN_ROLES)


def assistant_text(rec: dict[str, Any]) -> str:
    """The last assistant turn of a train record."""
    return next(t["value"] for t in reversed(rec["conversations"]) if t["from"] in ASSISTANT_ROLES)
