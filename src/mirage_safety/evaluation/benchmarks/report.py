"""The external benchmarks in the report: one table in the layout of the MIS paper's
Table 5 (a row per model, a column per benchmark metric, arrows for which way is better),
then each benchmark's subsets."""

from __future__ import annotations

from typing import Any

from mirage_safety.evaluation.benchmarks.registry import PROTOCOLS

MODELS = ("base", "mirage")
ARROW = {"lower": "↓", "higher": "↑"}


def _cell(m: dict[str, Any], key: str, *, ci: bool = True) -> str:
    v = m.get(key)
    if not isinstance(v, int | float):
        return "–"
    lo_hi = m.get(f"{key}_ci")
    if ci and isinstance(lo_hi, list) and len(lo_hi) == 2:
        return f"{v:.1f} [{lo_hi[0]:.0f}–{lo_hi[1]:.0f}]"
    return f"{v:.1f}"


def table(result: dict[str, Any]) -> str:
    """Markdown, Table-5 layout; empty when no benchmark ran."""
    benches = {
        n: b
        for n, b in (result.get("benchmarks") or {}).items()
        if not b.get("info", {}).get("skipped")
    }
    if not benches:
        return ""
    cols: list[tuple[str, Any]] = []
    for name, b in benches.items():
        proto = PROTOCOLS[b["info"]["benchmark"]]
        cols += [(name, h) for h in proto.headline]
    head = " | ".join(
        f"{h.label} {ARROW[h.better]} ({name}, N={benches[name]['info']['n']})" for name, h in cols
    )
    lines = [f"| model | {head} |", "|---|" + "---:|" * len(cols)]
    for model in MODELS:
        if not any(model in b for b in benches.values()):
            continue
        cells = [_cell(benches[name].get(model, {}), h.key) for name, h in cols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    errors = [
        f"{name} {model} {b[model]['judge_errors']}"
        for name, b in benches.items()
        for model in MODELS
        if isinstance(b.get(model), dict) and b[model].get("judge_errors")
    ]
    lines += [
        "",
        "Rates in % over the answers the judge scored, 95% Wilson interval in "
        "brackets. Judge errors (counted, never replaced): "
        + (", ".join(errors) if errors else "none")
        + ".",
    ]
    skipped = [
        f"{n} ({b['info']['skipped']})"
        for n, b in (result.get("benchmarks") or {}).items()
        if b.get("info", {}).get("skipped")
    ]
    if skipped:
        lines.append("Skipped: " + "; ".join(skipped) + ".")
    return "\n".join(lines)


def subset_tables(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, b in (result.get("benchmarks") or {}).items():
        if b.get("info", {}).get("skipped"):
            continue
        proto = PROTOCOLS[b["info"]["benchmark"]]
        keys = [h.key for h in proto.headline]
        lines += [
            f"### {name} ({proto.name}) by subset",
            "",
            "| model | subset | N | judged | " + " | ".join(keys) + " |",
            "|---|---|---:|---:|" + "---:|" * len(keys),
        ]
        for model in MODELS:
            for subset, m in (b.get(model, {}).get("subsets") or {}).items():
                lines.append(
                    f"| {model} | {subset} | {m.get('n', 0)} | {m.get('judged', 0)} | "
                    + " | ".join(_cell(m, k, ci=False) for k in keys)
                    + " |"
                )
        lines.append("")
    return lines
