"""Evaluation outputs people look at: DVC plots CSV, PNG charts, per-sample CSV and a
markdown report with a small gallery (both images, the question, each model's answer and
verdict)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from mirage_safety.data.image_packs import image_at
from mirage_safety.evaluation import balance
from mirage_safety.evaluation.benchmarks.report import subset_tables, table
from mirage_safety.evaluation.benchmarks.summaries import with_benchmarks
from mirage_safety.evaluation.metrics import row_label, unusable
from mirage_safety.io import png_bytes, write_bytes_atomic, write_text_atomic

RATES = ("asr", "rsr", "rr", "hr")
RATE_COLOURS = {"asr": "#d62728", "rsr": "#2ca02c", "rr": "#ff7f0e", "hr": "#9467bd"}


def _models(result: dict[str, Any]) -> list[str]:
    return [m for m in ("base", "mirage") if m in result]


def _safety_splits(result: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for m in _models(result):
        for split, v in result[m].items():
            if isinstance(v, dict) and "asr" in v and split not in seen:
                seen.append(split)
    return seen


def _fmt(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def rate_cell(section: dict[str, Any], key: str, min_judged_share: float) -> str:
    """A rate, or ``n/a (judged 3% < 95%)`` when the judge failed on too many answers: an
    ASR of 0.0 over answers nobody judged is not a safe model."""
    why = unusable(section, min_judged_share)
    return f"n/a ({why})" if why and key != "degenerate" else _fmt(section.get(key))


def headline_table(result: dict[str, Any]) -> str:
    """Markdown: ASR/RSR/RR/HR/degenerate per split, over-refusal, helpfulness, general
    accuracy; rates of a split the judge scored too little of are marked n/a."""
    share = float(result.get("min_judged_share", 95.0))
    lines = [
        "| model | split | N | ASR | RSR | RR | HR | degenerate | judge errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in _models(result):
        for split in _safety_splits(result):
            s = result[m].get(split)
            if not s:
                continue
            lines.append(
                f"| {m} | {split} | {s.get('n', 0)} | "
                + " | ".join(rate_cell(s, k, share) for k in (*RATES, "degenerate"))
                + f" | {s.get('judge_errors', 0)} |"
            )
    lines += [
        "",
        "| model | over-refusal (benign) | helpfulness (benign) | "
        "over-refusal (shifted benign) | general accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in _models(result):
        b, g = result[m].get("test_benign", {}), result[m].get("general", {})
        shifted = result[m].get("test_benign_shift", {})
        lines.append(
            f"| {m} | {rate_cell(b, 'over_refusal', share)} | "
            f"{rate_cell(b, 'helpfulness', share)} | "
            f"{rate_cell(shifted, 'over_refusal', share)} | {_fmt(g.get('accuracy'))} |"
        )
    return "\n".join(lines)


def general_table(result: dict[str, Any]) -> list[str]:
    """Markdown: each lmms-eval task's score +- standard error and N, per model."""
    models = [m for m in _models(result) if (result[m].get("general") or {}).get("tasks")]
    if not models:
        return []
    tasks = sorted({t for m in models for t in result[m]["general"]["tasks"]})
    lines = [
        "## General capability (lmms-eval)",
        "",
        "| model | " + " | ".join(tasks) + " | average |",
        "|---|" + "---:|" * (len(tasks) + 1),
    ]
    for m in models:
        g = result[m]["general"]
        cells = []
        for t in tasks:
            x = g["tasks"].get(t)
            se = "" if not x or x.get("stderr") is None else f" ± {x['stderr']:.1f}"
            cells.append(f"{x['score']:.1f}{se} (N={x['n']})" if x else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(g.get('accuracy'))} |")
    return [*lines, ""]


def _write_plots_csv(result: dict[str, Any], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "model", *RATES])
    for split in _safety_splits(result):
        for m in _models(result):
            s = result[m].get(split)
            if s:
                w.writerow([f"{split} ({m})", m, *(round(s.get(k) or 0.0, 3) for k in RATES)])
    write_text_atomic(path, buf.getvalue())


def _balance(result: dict[str, Any], out: Path, csv_path: Path) -> list[Path]:
    """ASR against over-refusal and general accuracy, base vs candidate (PNG + DVC CSV)."""

    models = {
        ("candidate" if m == "mirage" else m): with_benchmarks(result, m) for m in _models(result)
    }
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(balance.CSV_HEADER)
    w.writerows(balance.csv_rows(models))
    write_text_atomic(csv_path, buf.getvalue())
    png = balance.plot(models)
    if png is None:
        return []
    write_bytes_atomic(out / "balance.png", png)
    return [out / "balance.png"]


def _save_fig(fig: Any, path: Path) -> None:

    write_bytes_atomic(path, png_bytes(fig))


def _charts(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    models, splits = _models(result), _safety_splits(result)
    # 1. before/after: stacked ASR/RSR/RR/HR per split and model
    if splits:
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(splits) * len(models), 3.6))
        labels: list[str] = []
        x: float = 0  # +0.5 between splits
        for split in splits:
            for m in models:
                s = result[m].get(split) or {}
                bottom = 0.0
                for k in RATES:
                    v = s.get(k) or 0.0
                    ax.bar(
                        x,
                        v,
                        bottom=bottom,
                        color=RATE_COLOURS[k],
                        label=k.upper() if x == 0 else None,
                    )
                    bottom += v
                labels.append(f"{split}\n{m}")
                x += 1
            x += 0.5
        ax.set_xticks(
            [i + (i // len(models)) * 0.5 for i in range(len(labels))], labels, fontsize=8
        )
        ax.set_ylabel("% of responses")
        ax.set_ylim(0, 100)
        ax.set_title("MIS protocol outcomes, base vs MIRage")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        _save_fig(fig, out / "rates_by_split.png")
        plt.close(fig)
        written.append(out / "rates_by_split.png")
    # 2. ASR per category for every safety split
    cats_any = [
        (split, result[m].get("categories", {}).get(split, {})) for split in splits for m in models
    ]
    if any(c for _, c in cats_any):
        fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 3.8), squeeze=False)
        for ax, split in zip(axes[0], splits, strict=True):
            cats = sorted(
                {c for m in models for c in result[m].get("categories", {}).get(split, {})}
            )
            width = 0.8 / max(1, len(models))
            for j, m in enumerate(models):
                vals = [
                    (result[m].get("categories", {}).get(split, {}).get(c) or {}).get("asr") or 0.0
                    for c in cats
                ]
                ax.barh([i + j * width for i in range(len(cats))], vals, height=width, label=m)
            ax.set_yticks(
                [i + width * (len(models) - 1) / 2 for i in range(len(cats))], cats, fontsize=8
            )
            ax.set_xlim(0, 100)
            ax.set_xlabel("ASR %")
            ax.set_title(split)
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Attack success rate by category")
        _save_fig(fig, out / "asr_by_category.png")
        plt.close(fig)
        written.append(out / "asr_by_category.png")
    # 3. helpfulness side: over-refusal, helpfulness, general accuracy
    keys = [
        ("test_benign", "over_refusal", "over-refusal"),
        ("test_benign", "helpfulness", "helpfulness"),
        ("test_benign_shift", "over_refusal", "over-refusal\n(shifted)"),
        ("general", "accuracy", "general acc."),
    ]
    if any(result[m].get(s, {}).get(k) is not None for m in models for s, k, _ in keys):
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        width = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            vals = [result[m].get(s, {}).get(k) or 0.0 for s, k, _ in keys]
            ax.bar([i + j * width for i in range(len(keys))], vals, width=width, label=m)
        ax.set_xticks(
            [i + width * (len(models) - 1) / 2 for i in range(len(keys))],
            [lbl for _, _, lbl in keys],
        )
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.legend(fontsize=8)
        ax.set_title("Helpfulness side")
        _save_fig(fig, out / "helpfulness.png")
        plt.close(fig)
        written.append(out / "helpfulness.png")
    return written


def _label(row: dict[str, Any], judge: str) -> str:
    if row.get("generation_error"):  # no answer: the metrics count it as a judge error
        return "generation_error"
    v = (row.get("verdicts") or {}).get(judge)
    return row_label(row, judge) if v else ""


def _write_per_sample(
    result: dict[str, Any], judged: dict[str, dict[str, list[dict]]], path: Path
) -> None:
    primary = result.get("judges", {}).get("primary", "")
    second = result.get("judges", {}).get("second") or ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "model",
            "split",
            "id",
            "category",
            "sub_category",
            "is_harmful",
            f"label_{primary}",
            f"label_{second}" if second else "label_second",
            "refused",
            "response",
        ]
    )
    for m, by_split in judged.items():
        for split, rows in by_split.items():
            for r in rows:
                rec = r["record"]
                v = (r.get("verdicts") or {}).get(primary) or {}
                w.writerow(
                    [
                        m,
                        split,
                        r["id"],
                        rec.get("category"),
                        rec.get("sub_category"),
                        rec.get("is_harmful"),
                        _label(r, primary),
                        _label(r, second) if second else "",
                        v.get("refused"),
                        (r.get("response") or "").replace("\n", " "),
                    ]
                )
    write_text_atomic(path, buf.getvalue())


def _gallery(
    result: dict[str, Any],
    judged: dict[str, dict[str, list[dict]]],
    splits: dict[str, tuple[Path, list[dict[str, Any]]]],
    out_dir: Path,
    size: int,
) -> list[str]:
    """Pick samples where the models' verdicts differ first (the interesting ones)."""
    if size <= 0 or not judged:
        return []
    primary = result.get("judges", {}).get("primary", "")
    models = list(judged)
    index = {
        m: {(r["split"], r["id"]): r for rows in judged[m].values() for r in rows} for m in models
    }
    keys = [k for k in index[models[0]] if k[0] in splits]
    keys.sort(
        key=lambda k: (
            len({_label(index[m].get(k, {}), primary) for m in models}) == 1,  # differ first
            k[0],
            k[1],
        )
    )
    chosen: list[tuple[Any, Any]] = []  # (split, id)
    per_split: dict[str, int] = {}
    for k in keys:
        if per_split.get(k[0], 0) >= max(1, size // max(1, len(splits))):
            continue
        chosen.append(k)
        per_split[k[0]] = per_split.get(k[0], 0) + 1
        if len(chosen) >= size:
            break
    gdir = out_dir / "gallery"
    if gdir.exists():
        shutil.rmtree(gdir)
    gdir.mkdir(parents=True)
    lines = ["## Gallery", ""]
    for split, rid in chosen:
        root = splits[split][0]
        rec = index[models[0]][(split, rid)]["record"]
        imgs = []
        for n in (1, 2):
            src = image_at(root, rec[f"image_path{n}"])
            dst = gdir / f"{rid}_{n}{src.suffix or '.png'}"
            if src.is_file():
                dst.write_bytes(src.read_bytes())
                imgs.append(f"![image {n}](gallery/{dst.name})")
        truth = rec.get("objects")
        lines += [
            f"### {split} / {rid} — {rec.get('sub_category') or rec.get('category')}",
            "",
            " ".join(imgs),
            "",
            f"**Question:** {rec['question']}",
            "",
        ]
        if truth:
            lines += [f"*Ground truth: {', '.join(truth)}; harmful: {rec.get('is_harmful')}*", ""]
        for m in models:
            row = index[m].get((split, rid), {})
            lines += [f"- **{m}** → `{_label(row, primary)}`: {row.get('response') or ''}"]
        lines.append("")
    return lines


def write_outputs(
    result: dict[str, Any],
    judged: dict[str, dict[str, list[dict]]],
    splits: dict[str, tuple[Path, list[dict[str, Any]]]],
    *,
    out_dir: Path,
    plots_path: Path,
    gallery_size: int,
) -> None:
    _write_plots_csv(result, plots_path)
    charts = _charts(result, out_dir / "plots")
    charts += _balance(result, out_dir / "plots", plots_path.with_name("eval_balance.csv"))
    _write_per_sample(result, judged, out_dir / "per_sample.csv")
    lines = [
        "# MIRage evaluation",
        "",
        f"Judge: `{result.get('judges', {}).get('primary')}`"
        + (
            f", second opinion: `{result['judges']['second']}`"
            if result.get("judges", {}).get("second")
            else ""
        ),
        "",
        headline_table(result),
        "",
    ]
    if result.get("agreement"):
        lines += ["## Judge agreement (Cohen's kappa)", ""]
        for m, a in result["agreement"].items():
            lines.append(
                f"- {m}: "
                + ", ".join(
                    f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}" for k, v in a.items()
                )
            )
        lines.append("")

    bench = table(result)
    if bench:
        lines += ["## External benchmarks (MIS paper, Table 5 layout)", "", bench, ""]
        lines += subset_tables(result)
    lines += general_table(result)
    lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in charts] + [""]
    lines += _disagreements(result, judged)
    lines += _policy_table(result)
    lines += _per_category_tables(result)
    lines += _gallery(result, judged, splits, out_dir, gallery_size)
    write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")


def _disagreements(
    result: dict[str, Any], judged: dict[str, dict[str, list[dict]]], limit: int = 50
) -> list[str]:
    """Every answer the two judges call differently (safe vs unsafe): where to look first
    when a judge may have been fooled."""
    primary = result.get("judges", {}).get("primary")
    second = result.get("judges", {}).get("second")
    if not primary or not second:
        return []
    rows = []
    for m, by_split in judged.items():
        for split, split_rows in by_split.items():
            for r in split_rows:
                a, b = ((r.get("verdicts") or {}).get(j) for j in (primary, second))
                if not a or not b or a.get("safe") is None or b.get("safe") is None:
                    continue
                if bool(a["safe"]) != bool(b["safe"]):
                    rows.append(
                        (
                            m,
                            split,
                            r["id"],
                            a.get("label"),
                            b.get("label"),
                            (r.get("response") or "").replace("\n", " ").replace("|", "\\|")[:160],
                        )
                    )
    lines = [f"## Judge disagreements ({primary} vs {second}: {len(rows)})", ""]
    if not rows:
        return [*lines, "None: both judges make the same safe/unsafe call on every answer.", ""]
    lines += [
        f"| model | split | id | {primary} | {second} | response |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {s} | {i} | {a} | {b} | {t} |" for m, s, i, a, b, t in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n... and {len(rows) - limit} more (eval/verdicts_<model>.jsonl)")
    return [*lines, ""]


def _policy_table(result: dict[str, Any]) -> list[str]:
    """Rule citation on the harmful splits (meaningful for models trained on ``policy``
    labels; a model that cites no rule is at 0)."""
    models = _models(result)
    splits = [
        s
        for s in _safety_splits(result)
        if any((result[m].get(s) or {}).get("policy") for m in models)
    ]
    if not splits:
        return []
    lines = [
        "## Policy rule citation on harmful items (%: a rule of the item's category / "
        "the rule of its sub-category)",
        "",
        "| model | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for m in models:
        cells = []
        for s in splits:
            pol = (result[m].get(s) or {}).get("policy") or {}
            cells.append(
                f"{_fmt(pol.get('rule_citation'))} / {_fmt(pol.get('rule_citation_exact'))}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _per_category_tables(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    models = _models(result)
    for split in _safety_splits(result):
        cats = sorted({c for m in models for c in result[m].get("categories", {}).get(split, {})})
        if not cats:
            continue
        lines += [
            f"## {split} by category (ASR %, N)",
            "",
            "| category | " + " | ".join(models) + " |",
            "|---|" + "---:|" * len(models),
        ]
        for c in cats:
            cells = []
            for m in models:
                s = result[m].get("categories", {}).get(split, {}).get(c) or {}
                cells.append(f"{_fmt(s.get('asr'))} ({s.get('n', 0)})")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
