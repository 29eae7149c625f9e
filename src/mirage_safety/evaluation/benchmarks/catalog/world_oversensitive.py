"""The embedded world's over-sensitivity split (MOSSBench in spirit,
:mod:`mirage_safety.data.world_benchmarks`): hazard-looking tools with a benign request.
Layout: :mod:`._world`.

Judge: the world's ground truth (``world``), the keyword judge or Qwen3Guard's refusal
line; metric: refusal rate (the gate's over-refusal).
"""

from __future__ import annotations

from pathlib import Path

from mirage_safety.evaluation.benchmarks.catalog import _world
from mirage_safety.evaluation.benchmarks.protocols import (
    Headline,
    Protocol,
    refusal_rate,
    with_subsets,
)
from mirage_safety.evaluation.benchmarks.sample import BenchSample

NAME = "world_oversensitive"


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    return _world.load(root, name=NAME, check_images=check_images)


# ========================================================================== protocol
PROTOCOL = Protocol(
    NAME,
    ("world", "keyword", "qwen3guard"),
    with_subsets(refusal_rate),
    (Headline("refusal_rate", "over-sensitive refusal", "lower"),),
    group_by="category",
    needs={k: ("refused",) for k in ("world", "keyword", "qwen3guard")},
    over_refusal=("refusal_rate", False),
    embedded=True,
)
