"""What every external-benchmark adapter returns: :class:`BenchSample` records.

An adapter reads a local copy of one benchmark in its *published* layout (the file names,
keys and image paths of the authors' release, docs/benchmarks.md) and turns each test item
into one or more samples: one prompt to the model under test, with its images.  A
benchmark that asks the same question with several images (MSSBench: a safe and an unsafe
context; MM-SafetyBench: SD, TYPO and SD+TYPO images) yields one sample per combination,
told apart by ``subset``.  Metrics are reported per subset and over the whole benchmark.

Validation follows the MIS importer (:class:`mirage_safety.data.schema.Validator`): every
problem names the file, the record and the field, all problems of a benchmark are
collected before :class:`~mirage_safety.data.schema.DataValidationError` is raised, and
nothing is returned (so nothing is written) when one is found.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mirage_safety.data.schema import DataValidationError, Problem, Validator, is_absolute_path


@dataclass(frozen=True)
class BenchSample:
    """One prompt of a benchmark.

    ``id`` is unique within the benchmark (variant included, e.g. ``"12/unsafe"``);
    ``images`` are paths relative to the benchmark's root (validated: they exist, are
    images and stay inside the root); ``meta`` holds what the benchmark's protocol needs
    to judge and group the answer (category, scenario, safety warning, reference answer,
    ``harmful`` ...).
    """

    id: str
    subset: str
    question: str
    images: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def read_layout_json(path: Path, v: Validator, *, root: Path) -> Any:
    """The JSON at ``path`` (a published file of a benchmark), or ``None`` with the
    problem recorded in ``v`` (file not found, not JSON)."""
    rel = _rel(path, root)
    if not path.is_file():
        v.add(rel, "-", "<file>", "file not found (is this the benchmark's published layout?)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        v.add(rel, "-", "<file>", f"not valid JSON: {exc}")
        return None


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def image_under(
    v: Validator, file: str, rid: str, field: str, prefix: str, value: Any
) -> str | None:
    """``prefix + value``, for a layout that names an image file relative to a folder
    (``data/images/`` + ``S-01.png``), checked by ``v``; None when a problem was recorded.
    ``value`` itself may not climb out of its folder (``../x`` would land elsewhere under
    the root, so the root check alone would not catch it)."""

    n = len(v.problems)
    if not prefix or not isinstance(value, str) or not value.strip():
        v.check_path(file, rid, field, value)
        return value if len(v.problems) == n else None
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or is_absolute_path(value):
        v.add(file, rid, field, f"path {value!r} escapes the dataset root")
        return None
    v.check_path(file, rid, field, prefix + value)
    return prefix + value if len(v.problems) == n else None


def validate(
    root: Path,
    build: Callable[[Validator], list[BenchSample]],
    *,
    name: str,
    check_images: bool = True,
) -> list[BenchSample]:
    """Run an adapter's ``build(validator)`` and raise every problem it recorded.

    The adapter records problems with ``v.add(file, record_id, field, message)`` and
    ``v.check_text`` / ``v.check_path`` (paths relative to ``root``); it returns the
    samples it could build.  Duplicate sample ids are problems too.
    """
    v = Validator(root=root, check_images=check_images)
    samples = build(v)
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            v.add(name, s.id, "id", "duplicate sample id")
        seen.add(s.id)
    if not samples and not v.problems:
        v.add(name, "-", "<benchmark>", f"no samples found under {root}")
    if v.problems:
        raise DataValidationError(v.problems, hint=f"benchmark {name!r} at {root}")
    return samples


__all__ = [
    "BenchSample",
    "DataValidationError",
    "Problem",
    "Validator",
    "image_under",
    "read_layout_json",
    "validate",
]
