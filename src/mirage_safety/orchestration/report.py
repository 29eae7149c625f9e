"""The run report: ``metrics/eval.json`` as table rows and a markdown summary (the Prefect
artefacts of a retrain run)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mirage_safety.evaluation.metrics import unusable

METRIC_ORDER = ("asr", "rsr", "rr", "hr", "over_refusal", "helpfulness", "accuracy")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metrics_rows(eval_metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``metrics/eval.json`` -> one row per (model, split) with its scalar metrics.

    Models are the top-level entries holding per-split mappings (``base``, ``mirage``);
    bookkeeping entries (``agreement``, ``judges``) and nested breakdowns (per
    category) are left out.  Every row has the same columns (None where missing).
    """

    rows: list[dict[str, Any]] = []
    share = _number((eval_metrics or {}).get("min_judged_share"))
    for model, splits in (eval_metrics or {}).items():
        if model in ("agreement", "judges", "benchmarks") or not isinstance(splits, Mapping):
            continue
        for split, values in splits.items():
            if not isinstance(values, Mapping):
                continue
            nums = {k: round(v, 3) for k, raw in values.items() if (v := _number(raw)) is not None}
            if nums:
                why = unusable(values, 95.0 if share is None else share)
                # a judge that failed on most answers leaves rates of 0.0: say so in the row
                rows.append(
                    {
                        "model": model,
                        "split": split,
                        **nums,
                        **({"note": f"rates not usable: {why}"} if why else {}),
                    }
                )
    seen = {k for row in rows for k in row} - {"model", "split", "note"}
    columns = [c for c in METRIC_ORDER if c in seen] + sorted(seen - set(METRIC_ORDER))
    noted = any("note" in r for r in rows)
    return [
        {
            "model": r["model"],
            "split": r["split"],
            **{c: r.get(c) for c in columns},
            **({"note": r.get("note", "")} if noted else {}),
        }
        for r in rows
    ]


def _md_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "_none_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [
            ""
            if row.get(c) is None
            else (f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]))
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    registry: Mapping[str, Any] | None,
) -> str:
    """The run's markdown report: parameters, stages, metrics, registry decision."""
    exp = summary.get("experiment") or {}
    head = [
        f"# MIRage retrain `{summary['exp_name']}`",
        "",
        f"- profile: `{summary['profile']}`; data seed: `{summary.get('data_seed')}`; "
        f"data revision: `{summary.get('data_revision')}`",
        f"- DVC experiment: `{exp.get('name', summary['exp_name'])}` "
        f"(`{str(exp.get('rev', 'not saved'))[:12]}`, baseline "
        f"`{str(exp.get('baseline', ''))[:12]}`)",
        f"- MLflow parent run: `{summary.get('parent_run_id')}` at `{summary.get('tracking_uri')}`",
        "",
        "## Stages",
        "",
        _md_table(
            [
                {
                    "stage": s["stage"],
                    "reran": "yes" if s["reran"] else "cached",
                    "dvc ran": ", ".join(s["ran"]) or "-",
                    "seconds": s["seconds"],
                    "attempts": s["attempts"],
                }
                for s in summary["stages"]
            ]
        ),
        "## Metrics (percent)",
        "",
        _md_table(rows),
        "## Registry",
        "",
    ]
    if not registry:
        head.append("_metrics/registry.json not found_\n")
    else:
        head.append(
            f"**{registry.get('decision', '?')}**: `{registry.get('model_name')}` "
            f"version {registry.get('version')} -> `@{registry.get('alias')}` "
            f"(compared to {registry.get('compared_to')}; champion now "
            f"v{registry.get('champion_version')})\n"
        )
        head += [f"- {r}" for r in registry.get("reasons") or []]
    return "\n".join(head) + "\n"
