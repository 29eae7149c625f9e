"""Plot the training benchmark's results: each contender's tokens/s against SFTTrainer's.

Reads ``benchmarks/results/train_throughput.json`` (embedded model) and
``train_throughput_large.json`` (the 35M-parameter one), both written by
``train_throughput.py``, and draws one panel per model: the per-repeat paired ratio to
``SFTTrainer`` (bar: median; whisker: min-max over repeats) with the 1.3x target.

    .venv/bin/python benchmarks/plot_train_throughput.py [--out FILE.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
PANELS = (
    ("train_throughput.json", "embedded model"),
    ("train_throughput_large.json", "large model"),
)
TARGET = 1.3


def ratios(report: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(contender, median, min, max) of the paired ratios, fastest first; SFTTrainer = 1."""
    paired = report.get("paired_ratio_vs_sfttrainer")
    if not paired:
        raise ValueError(
            "no paired_ratio_vs_sfttrainer: run train_throughput.py with trl "
            "installed (the SFTTrainer contender)"
        )
    rows = [(name, r["median"], r["min"], r["max"]) for name, r in paired.items()]
    rows.append(("sfttrainer", 1.0, 1.0, 1.0))
    return sorted(rows, key=lambda r: r[1])


def plot(results: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mirage_safety.io import png_bytes, write_bytes_atomic

    panels = [
        (json.loads((results / name).read_text()), title)
        for name, title in PANELS
        if (results / name).exists()
    ]
    if not panels:
        raise FileNotFoundError(
            f"no benchmark results under {results}: run benchmarks/train_throughput.py first"
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for ax, (report, title) in zip(axes[0], panels, strict=True):
        rows = ratios(report)
        names = [r[0] for r in rows]
        med = [r[1] for r in rows]
        err = [[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]]
        colors = [
            "tab:gray"
            if n == "sfttrainer"
            else "tab:blue"
            if n.startswith("mirage")
            else "tab:orange"
            for n in names
        ]
        ax.barh(names, med, xerr=err, color=colors, capsize=3)
        ax.axvline(TARGET, color="tab:red", linestyle="--", label=f"target {TARGET}x")
        for y, (_, m, _, top) in enumerate(rows):  # right of the whisker
            ax.text(top, y, f"  {m:.2f}x", va="center", fontsize=8)
        ax.set_xlim(0, max(r[3] for r in rows) * 1.15)
        params = report["model"]["parameters"] / 1e6
        ax.set_title(
            f"{title} ({params:.1f}M parameters, {report['repeat']} repeats, "
            f"{report['torch_threads']} thread(s))",
            fontsize=9,
        )
        ax.set_xlabel("tokens/s vs TRL's SFTTrainer (paired per repeat: median, min-max)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    write_bytes_atomic(out, data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=RESULTS / "train_throughput.png")
    args = ap.parse_args()
    print(plot(args.results, args.out))


if __name__ == "__main__":
    main()
