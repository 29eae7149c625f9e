"""``mirage report``: DVC experiments (label ablations, teacher noise, seeds) in one table
and one plot.

Every experiment (``dvc exp run -S label.style=refusal`` ...) and the workspace become a
row: the labels (style, format), the teacher's noise, the curation judge, then base and
MIRage ASR per split, RSR, RR, over-refusal, general accuracy, rule citation and the
filter's recall, as measured by ``mirage evaluate`` / ``mirage curate``
(``metrics/eval.json``, ``metrics/curate.json``).  Experiments whose params differ only
in ``train.seed`` are one row (the default): each cell is the mean over the seeds with
the range ``[min–max]`` beside it, and ``seeds`` says how many.  The table is written as
markdown and the main rates as a PNG (error bars: the range), so the paper's findings
can be read off directly:

1. refusal-only labels -> more over-refusal and RR than safety-CoT labels;
2. text-only labels -> a higher ``test_hard`` ASR than safety-CoT labels;
3. safety-CoT labels -> ASR near 0 with general accuracy kept;

and the MSR-Align one: noisy teacher labels without the filter vs with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirage_safety import paths
from mirage_safety.evaluation import balance
from mirage_safety.evaluation.benchmarks.summaries import with_benchmarks
from mirage_safety.io import png_bytes, read_json, write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

EVAL_FILE, CURATE_FILE = paths.EVAL_METRICS, paths.CURATE_METRICS
COLUMNS: tuple[tuple[str, str], ...] = (
    ("base ASR easy", "base.test_easy.asr"),
    ("base ASR hard", "base.test_hard.asr"),
    ("ASR easy", "mirage.test_easy.asr"),
    ("ASR hard", "mirage.test_hard.asr"),
    ("RSR easy", "mirage.test_easy.rsr"),
    ("RSR hard", "mirage.test_hard.rsr"),
    ("RR hard", "mirage.test_hard.rr"),
    ("over-refusal", "mirage.test_benign.over_refusal"),
    ("over-refusal shifted", "mirage.test_benign_shift.over_refusal"),
    ("general acc.", "mirage.general.accuracy"),
    ("base general acc.", "base.general.accuracy"),
    ("rule cited easy", "mirage.test_easy.policy.rule_citation_exact"),
    ("rule cited hard", "mirage.test_hard.policy.rule_citation_exact"),
    ("defects dropped", "curate.filter.defect_recall"),
    ("clean kept", "curate.filter.clean_kept"),
)
_SEED_SUFFIX = re.compile(r"[-_](?:s|seed)\d+$")


def get_dotted(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None where a key is missing."""
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def describe(params: dict[str, Any]) -> dict[str, Any]:
    """What the table shows of an experiment's params."""
    noise = get_dotted(params, "label.noise") or {}
    total = (
        sum(v for v in noise.values() if isinstance(v, int | float))
        if isinstance(noise, dict)
        else None
    )
    style = get_dotted(params, "label.style") or get_dotted(params, "data.world.label_style")
    fmt = get_dotted(params, "label.format")
    return {
        "label_style": style,
        "labels": f"{style}/{fmt}" if style and fmt else style,
        "noise": total,
        "filter": get_dotted(params, "curate.judge"),
        "seed": get_dotted(params, "train.seed"),
    }


def experiment_rows(
    repo: str | None = None, *, include_workspace: bool = True, metrics_file: str = EVAL_FILE
) -> list[dict[str, Any]]:
    """``{name, metrics, params, profile, label_style, ...}`` for the workspace and every
    DVC experiment; ``metrics`` is ``eval.json`` with ``curate.json`` under ``curate``."""
    import dvc.api
    from dvc.repo import Repo

    revs: list[str | None] = [None] if include_workspace else []
    with Repo(repo) as r:
        names = r.experiments.ls()  # {baseline rev: [(name, sha) or name, ...]}
    for exps in names.values():
        for exp in exps:
            revs.append(exp[0] if isinstance(exp, tuple | list) else exp)
    # dvc.api resolves a relative target against the working directory, not ``repo``
    root = Path(repo or ".").resolve()
    rows = []
    for rev in revs:
        try:
            metrics = dvc.api.metrics_show(str(root / metrics_file), repo=repo, rev=rev)
            params = dvc.api.params_show(repo=repo, rev=rev)
        except Exception as exc:  # a failed or metric-less experiment: skip, say so
            log.warning("skipping %s: no readable %s (%s)", rev or "workspace", metrics_file, exc)
            continue
        eval_metrics = dict(metrics.get(metrics_file, metrics))
        try:
            curate = dvc.api.metrics_show(str(root / CURATE_FILE), repo=repo, rev=rev)
            eval_metrics["curate"] = curate.get(CURATE_FILE, curate)
        except Exception:  # an experiment from before the curate stage
            pass
        rows.append(
            {
                "name": rev or "workspace",
                "metrics": eval_metrics,
                "params": params,
                "profile": params.get("profile"),
                **describe(params),
            }
        )
    return rows


def group_seeds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose params differ only in ``train.seed`` merged into one (order kept): its
    ``members`` are the merged rows, its name the first's without a ``-s<n>`` suffix."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        params = json.loads(json.dumps(row.get("params") or {}, default=str))
        if isinstance(params.get("train"), dict):
            params["train"].pop("seed", None)
        key = json.dumps(params, sort_keys=True) if row.get("params") else row["name"]
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        name = first["name"] if len(members) == 1 else _SEED_SUFFIX.sub("", first["name"])
        out.append({**first, "name": name, "members": members})
    return out


def _values(row: dict[str, Any], key: str) -> list[float]:
    members = row.get("members") or [row]
    return [
        float(v) for m in members if isinstance(v := get_dotted(m["metrics"], key), int | float)
    ]


def cell(row: dict[str, Any], key: str) -> str:
    vals = _values(row, key)
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} [{min(vals):.1f}–{max(vals):.1f}]"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["experiment", "labels", "noise", "filter", "seeds", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---|---:|" + "---:|" * len(COLUMNS)]
    for row in rows:
        noise = row.get("noise")
        seeds = len(row.get("members") or [row])
        lines.append(
            f"| {row['name']} | {row.get('labels') or row.get('label_style') or '–'} "
            f"| {'–' if noise is None else f'{noise:.2f}'} | {row.get('filter') or '–'} "
            f"| {seeds} | " + " | ".join(cell(row, key) for _, key in COLUMNS) + " |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]]) -> bytes:
    """Grouped bars per experiment (mean over seeds, range as error bars): ASR easy/hard,
    RR hard, over-refusal (both benign splits), general accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = (
        ("ASR easy", "mirage.test_easy.asr", "#d62728"),
        ("ASR hard", "mirage.test_hard.asr", "#8c1d1d"),
        ("RR hard", "mirage.test_hard.rr", "#ff7f0e"),
        ("over-refusal", "mirage.test_benign.over_refusal", "#1f77b4"),
        ("over-refusal shifted", "mirage.test_benign_shift.over_refusal", "#9ecae1"),
        ("general acc.", "mirage.general.accuracy", "#2ca02c"),
    )
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(rows) + 2), 4))
    for k, (label, key, colour) in enumerate(shown):
        xs = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(rows))]
        means, lo, hi = [], [], []
        for r in rows:
            vals = _values(r, key) or [0.0]
            m = statistics.fmean(vals)
            means.append(m)
            lo.append(m - min(vals))
            hi.append(max(vals) - m)
        ax.bar(xs, means, width, label=label, color=colour, yerr=[lo, hi], capsize=2)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{r['name']}\n({r.get('labels') or r.get('label_style') or '?'})" for r in rows],
        fontsize=8,
    )
    ax.set_ylabel("% of responses (mean over seeds)")
    ax.set_ylim(0, 105)
    ax.set_title("MIRage experiments: labels and teacher noise vs harmfulness and over-refusal")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22))

    data = png_bytes(fig)
    plt.close(fig)
    return data


def balance_plot(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """Every experiment's model (one point per seed) and the first row's base, placed by
    ASR against over-refusal and against general accuracy (:mod:`.evaluation.balance`)."""

    models: dict[str, dict[str, Any]] = {}
    if rows and isinstance(rows[0]["metrics"].get("base"), dict):
        models["base"] = with_benchmarks(rows[0]["metrics"], "base")
    for row in rows:
        members = row.get("members") or [row]
        for i, m in enumerate(members):
            label = row["name"] if len(members) == 1 else f"{row['name']} #{i + 1}"
            models[label] = with_benchmarks(m["metrics"], "mirage")
    return balance.plot(
        models, title="Experiments: harmlessness vs helpfulness (95% Wilson intervals)"
    )


def write_report(rows: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    md_path, png_path = out_dir / "experiments.md", out_dir / "experiments.png"
    bal = balance_plot(rows)
    text = [
        "# MIRage experiments",
        "",
        "Rates in % of responses on the held-out test splits, judged by the evaluation "
        "judge (`metrics/eval.json` of each DVC experiment); filter figures from "
        "`metrics/curate.json`. Rows that differ only in `train.seed` are merged: mean "
        "[min–max] over the seeds.",
        "",
        markdown_table(rows),
        "",
        f"![experiments]({png_path.name})",
        "",
    ]
    if bal is not None:
        text += ["![balance](experiments_balance.png)", ""]
        write_bytes_atomic(out_dir / "experiments_balance.png", bal)
    write_text_atomic(md_path, "\n".join(text))
    write_bytes_atomic(png_path, plot(rows))
    return md_path, png_path


def _cli(args: argparse.Namespace) -> int:
    if args.metrics:
        rows = [
            {
                "name": Path(p).parent.name if Path(p).name == "eval.json" else Path(p).stem,
                "metrics": read_json(p),
                "label_style": None,
            }
            for p in args.metrics
        ]
    else:
        rows = experiment_rows(include_workspace=not args.no_workspace)
        if args.only:
            rows = [r for r in rows if re.search(args.only, r["name"])]
        if not args.no_group:
            rows = group_seeds(rows)
    if not rows:
        print("no experiments with metrics/eval.json found: run `dvc exp run` first")
        return 1
    md_path, png_path = write_report(rows, Path(args.out))
    print(markdown_table(rows))
    print(f"\nwrote {md_path} and {png_path}")
    return 0


def add_cli(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="DVC experiments -> one markdown table and one plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=paths.REPORTS, help="output dir (default: %(default)s)")
    p.add_argument(
        "--no-workspace",
        action="store_true",
        help="only saved experiments, not the workspace's current metrics",
    )
    p.add_argument(
        "--no-group",
        action="store_true",
        help="one row per experiment (default: merge rows that differ only in "
        "train.seed, mean [min–max])",
    )
    p.add_argument(
        "--only",
        metavar="REGEX",
        default=None,
        help="only experiments whose name matches REGEX (e.g. '^noise-')",
    )
    p.add_argument(
        "--metrics",
        nargs="*",
        default=None,
        metavar="EVAL_JSON",
        help="tabulate these eval.json files instead of the DVC experiments",
    )
    p.set_defaults(func=_cli)
    return p
