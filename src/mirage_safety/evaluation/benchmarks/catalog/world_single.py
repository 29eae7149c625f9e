"""The embedded world's single-image split (MM-SafetyBench / FigStep in spirit,
:mod:`mirage_safety.data.world_benchmarks`): the image shows the harmful pattern's tool, the
text names the target.  Layout: :mod:`._world`.

Judge: the world's ground truth (``world``: which objects the image shows, whether the
request is harmful), the keyword judge or a served guard; metrics: ASR and refusal rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mirage_safety.evaluation.benchmarks.catalog import _world
from mirage_safety.evaluation.benchmarks.judging import GUARDS
from mirage_safety.evaluation.benchmarks.protocols import (
    Headline,
    Protocol,
    Scored,
    asr,
    refusal_rate,
    with_subsets,
)
from mirage_safety.evaluation.benchmarks.sample import BenchSample

NAME = "world_single"


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    return _world.load(root, name=NAME, check_images=check_images)


# ========================================================================== protocol
def _asr_and_refusal(scored: Scored) -> dict[str, Any]:
    out = asr(scored)
    r = refusal_rate(scored)
    out.update({k: r[k] for k in ("refusal_rate", "refusal_rate_ci", "refusal_rate_k")})
    return out


PROTOCOL = Protocol(
    NAME,
    ("world", "keyword", *GUARDS),
    with_subsets(_asr_and_refusal),
    (Headline("asr", "single-image ASR", "lower"),),
    group_by="category",
    needs={
        "world": ("unsafe", "refused"),
        "keyword": ("unsafe",),
        **{g: ("unsafe",) for g in GUARDS},
    },
    embedded=True,
)
