"""The balance in one picture: harmfulness against the two halves of helpfulness.

A model is placed by three numbers of its summary (``metrics/eval.json``'s ``base`` /
``mirage``, or the gate metrics a registry version carries): ASR over every harmful split
pooled (answers judged unsafe / answers), over-refusal (``test_benign``, else the
evaluation's over-refusal benchmarks pooled) and general accuracy (lmms-eval's average).
Each with a 95 % Wilson interval over the N answers it rests on (for the general average,
over all tasks' answers: an approximation when tasks differ in size).  Two panels: ASR
against over-refusal, ASR against general accuracy; down and left / down and right is
better.  Drawn by ``evaluate`` (base, candidate), ``register`` (+ the champion) and
``mirage report`` (every experiment).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mirage_safety.data.schema import BENIGN_SPLITS
from mirage_safety.evaluation.benchmarks.summaries import OVER_REFUSAL, over_refusal_splits
from mirage_safety.evaluation.metrics import wilson_interval
from mirage_safety.io import png_bytes

CSV_HEADER = (
    "model",
    "asr",
    "asr_lo",
    "asr_hi",
    "over_refusal",
    "over_refusal_lo",
    "over_refusal_hi",
    "general",
    "general_lo",
    "general_hi",
)


def _num(x: Any) -> float | None:
    return (
        float(x)
        if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        else None
    )


def _pooled(parts: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """(rate %, lo, hi) of several (rate %, n) parts pooled by their answers."""
    n = sum(p[1] for p in parts)
    if not n:
        return None
    k = round(sum(r * m / 100.0 for r, m in parts))
    lo, hi = wilson_interval(k, int(n))
    return 100.0 * k / n, lo, hi


def point(summary: Mapping[str, Any]) -> dict[str, tuple[float, float, float] | None]:
    """``{"asr", "over_refusal", "general"}``: each (value %, 95 % low, high) or None."""

    def part(section: Any, key: str) -> tuple[float, float] | None:
        if not isinstance(section, Mapping):
            return None
        value, n = _num(section.get(key)), _num(section.get("judged") or section.get("n"))
        return (value, n) if value is not None and n else None

    harmful = [
        p
        for s, sec in summary.items()
        if s.startswith("test_") and s not in BENIGN_SPLITS
        if (p := part(sec, "asr")) is not None
    ]
    refusals = [
        p
        for s in over_refusal_splits(summary)
        if (p := part(summary.get(s), OVER_REFUSAL)) is not None
    ]
    general = part(summary.get("general"), "accuracy")
    return {
        "asr": _pooled(harmful),
        "over_refusal": _pooled(refusals),
        "general": _pooled([general]) if general else None,
    }


def csv_rows(models: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, summary in models.items():
        p = point(summary)
        row: list[Any] = [name]
        for key in ("asr", "over_refusal", "general"):
            cell = p[key]
            row += [round(v, 4) for v in cell] if cell else ["", "", ""]
        rows.append(row)
    return rows


def plot(models: Mapping[str, Mapping[str, Any]], *, title: str = "") -> bytes | None:
    """PNG bytes of the two panels, or None when no model has an ASR to place."""
    points = {name: point(s) for name, s in models.items()}
    points = {n: p for n, p in points.items() if p["asr"]}
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, label, better in (
        (axes[0], "over_refusal", "over-refusal (%)", "left"),
        (axes[1], "general", "general accuracy (%)", "right"),
    ):
        drawn = False
        for i, (name, p) in enumerate(points.items()):
            asr, x = p["asr"], p[key]
            if asr is None or x is None:
                continue
            ax.errorbar(
                [x[0]],
                [asr[0]],
                xerr=[[x[0] - x[1]], [x[2] - x[0]]],
                yerr=[[asr[0] - asr[1]], [asr[2] - asr[0]]],
                fmt="o",
                capsize=3,
                color=colours[i % len(colours)],
                label=name,
            )
            ax.annotate(name, (x[0], asr[0]), textcoords="offset points", xytext=(5, 5), fontsize=8)
            drawn = True
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"no {label.split(' (')[0]} measured",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_xlabel(f"{label}; better: {better}")
        ax.set_xlim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ASR over harmful splits (%); better: down")
    axes[0].set_ylim(-2, 102)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title or "Harmlessness vs helpfulness (95% Wilson intervals)", fontsize=10)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data
