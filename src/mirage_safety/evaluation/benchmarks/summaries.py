"""The benchmarks in the model summaries of ``eval.json``: each benchmark's top-level
metrics as a ``bench.<name>`` section, with its over-refusal rate where it measures one;
where the gate and the balance plot read over-refusal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirage_safety.evaluation.benchmarks.registry import OVER_REFUSAL_METRICS

BENCH_PREFIX = "bench."
BENIGN_SPLIT = "test_benign"
OVER_REFUSAL = "over_refusal"  # test_benign's key, and the one with_benchmarks adds


def with_benchmarks(data: Mapping[str, Any], which: str) -> dict[str, Any]:
    """``data[which]`` (an eval.json model summary) plus a ``bench.<name>`` section per
    external benchmark, holding that benchmark's top-level metrics for the same model."""
    out = dict(data.get(which) or {})
    for name, bench in (data.get("benchmarks") or {}).items():
        section = bench.get(which) if isinstance(bench, Mapping) else None
        if isinstance(section, Mapping):
            flat = {k: v for k, v in section.items() if not isinstance(v, Mapping | list)}
            info = bench.get("info")
            kind = info.get("benchmark") if isinstance(info, Mapping) else None
            if isinstance(kind, str) and (rate := over_refusal(kind, flat)) is not None:
                flat[OVER_REFUSAL] = rate
            out[f"{BENCH_PREFIX}{name}"] = flat
    return out


def over_refusal_splits(*summaries: Mapping[str, Any]) -> list[str]:
    """Where over-refusal is read (the gate, the balance plot): ``test_benign`` if any
    summary has it, else every over-refusal benchmark section (``bench.<name>`` with an
    ``over_refusal``, real data: the MIS test splits are harmful only)."""

    def has(summary: Mapping[str, Any], split: str) -> bool:
        section = summary.get(split)
        return isinstance(section, Mapping) and OVER_REFUSAL in section

    if any(has(s, BENIGN_SPLIT) for s in summaries):
        return [BENIGN_SPLIT]
    return sorted(
        {
            split
            for s in summaries
            for split in s
            if split.startswith(BENCH_PREFIX) and has(s, split)
        }
    )


def over_refusal(benchmark: str, metrics: dict[str, Any]) -> float | None:
    """``benchmark``'s over-refusal rate (%, lower is better) from its metrics, or None
    when it measures none (a harmful-only benchmark, or the benign part was not run)."""
    if benchmark not in OVER_REFUSAL_METRICS:
        return None
    key, inverted = OVER_REFUSAL_METRICS[benchmark]
    value = headline_value(metrics, key)
    if value is None:
        return None
    return 100.0 - value if inverted else value


def headline_value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else None
