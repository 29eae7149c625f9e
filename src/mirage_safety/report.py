"""``mirage report``: DVC experiments (label-style ablations, reruns) in one table and one plot.

Every experiment (``dvc exp run -S data.world.label_style=refusal`` ...) and the workspace
become one row: the label style, base and MIRage ASR per split, RSR, RR, over-refusal and
general accuracy, as measured by ``mirage evaluate`` (``metrics/eval.json``).  The table is
written as markdown and the ASR / over-refusal / RR comparison as a PNG, so the paper's
findings can be read off directly:

1. refusal-only labels -> more over-refusal and RR than safety-CoT labels;
2. text-only labels -> a higher ``test_hard`` ASR than safety-CoT labels;
3. safety-CoT labels -> ASR near 0 with general accuracy kept.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirage_safety.io import read_json, write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("base ASR easy", "base.test_easy.asr"),
    ("base ASR hard", "base.test_hard.asr"),
    ("ASR easy", "mirage.test_easy.asr"),
    ("ASR hard", "mirage.test_hard.asr"),
    ("RSR hard", "mirage.test_hard.rsr"),
    ("RR hard", "mirage.test_hard.rr"),
    ("over-refusal", "mirage.test_benign.over_refusal"),
    ("over-refusal shifted", "mirage.test_benign_shift.over_refusal"),
    ("general acc.", "mirage.general.accuracy"),
    ("base general acc.", "base.general.accuracy"),
)


def get_dotted(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None where a key is missing."""
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def experiment_rows(repo: str | None = None, *, include_workspace: bool = True,
                    metrics_file: str = "metrics/eval.json") -> list[dict[str, Any]]:
    """``{name, label_style, profile, metrics}`` for the workspace and every DVC experiment."""
    import dvc.api
    from dvc.repo import Repo

    revs: list[str | None] = [None] if include_workspace else []
    with Repo(repo) as r:
        names = r.experiments.ls()  # {baseline rev: [(name, sha) or name, ...]}
    for exps in names.values():
        for exp in exps:
            revs.append(exp[0] if isinstance(exp, tuple | list) else exp)
    # dvc.api resolves a relative target against the working directory, not ``repo``
    target = str(Path(repo or ".").resolve() / metrics_file)
    rows = []
    for rev in revs:
        try:
            metrics = dvc.api.metrics_show(target, repo=repo, rev=rev)
            params = dvc.api.params_show(repo=repo, rev=rev)
        except Exception as exc:  # a failed or metric-less experiment: skip, say so
            log.warning("skipping %s: no readable %s (%s)", rev or "workspace", metrics_file,
                        exc)
            continue
        eval_metrics = metrics.get(metrics_file, metrics)
        rows.append({"name": rev or "workspace", "metrics": eval_metrics,
                     "label_style": get_dotted(params, "data.world.label_style"),
                     "profile": params.get("profile")})
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["experiment", "labels", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        vals = [get_dotted(row["metrics"], key) for _, key in COLUMNS]
        cells = ["–" if v is None else f"{v:.1f}" for v in vals]
        lines.append(f"| {row['name']} | {row.get('label_style') or '–'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]]) -> bytes:
    """Grouped bars per experiment: ASR easy/hard, RR hard, over-refusal (both benign
    splits), general accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = (("ASR easy", "mirage.test_easy.asr", "#d62728"),
             ("ASR hard", "mirage.test_hard.asr", "#8c1d1d"),
             ("RR hard", "mirage.test_hard.rr", "#ff7f0e"),
             ("over-refusal", "mirage.test_benign.over_refusal", "#1f77b4"),
             ("over-refusal shifted", "mirage.test_benign_shift.over_refusal", "#9ecae1"),
             ("general acc.", "mirage.general.accuracy", "#2ca02c"))
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(rows) + 2), 4))
    for k, (label, key, colour) in enumerate(shown):
        xs = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [get_dotted(r["metrics"], key) or 0.0 for r in rows], width, label=label,
               color=colour)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['name']}\n({r.get('label_style') or '?'})" for r in rows])
    ax.set_ylabel("% of responses (world judge)")
    ax.set_ylim(0, 105)
    ax.set_title("MIRage ablations: safety labels vs harmfulness and over-refusal")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_report(rows: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    md_path, png_path = out_dir / "experiments.md", out_dir / "experiments.png"
    text = ["# MIRage experiments", "",
            "Rates in % of responses on the held-out test splits, judged by the world judge "
            "(`metrics/eval.json` of each DVC experiment).", "", markdown_table(rows), "",
            f"![experiments]({png_path.name})", ""]
    write_text_atomic(md_path, "\n".join(text))
    write_bytes_atomic(png_path, plot(rows))
    return md_path, png_path


def _cli(args: argparse.Namespace) -> int:
    if args.metrics:
        rows = [{"name": Path(p).parent.name if Path(p).name == "eval.json" else Path(p).stem,
                 "metrics": read_json(p), "label_style": None} for p in args.metrics]
    else:
        rows = experiment_rows(include_workspace=not args.no_workspace)
    if not rows:
        print("no experiments with metrics/eval.json found: run `dvc exp run` first")
        return 1
    md_path, png_path = write_report(rows, Path(args.out))
    print(markdown_table(rows))
    print(f"\nwrote {md_path} and {png_path}")
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="DVC experiments -> one markdown table and one plot",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports", help="output dir (default: %(default)s)")
    p.add_argument("--no-workspace", action="store_true",
                   help="only saved experiments, not the workspace's current metrics")
    p.add_argument("--metrics", nargs="*", default=None, metavar="EVAL_JSON",
                   help="tabulate these eval.json files instead of the DVC experiments")
    p.set_defaults(func=_cli)
