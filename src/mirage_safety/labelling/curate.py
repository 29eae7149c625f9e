"""The ``curate`` stage: a judge scores every label on the rubric; weak samples are dropped.

Reads ``data/labelled/train.json``, scores each record with ``curate.judge`` (``world`` |
``openai`` | ``none``: keep all) on the criteria of ``curate.rubric``, keeps a record when
every applicable criterion reaches ``curate.threshold``, optionally down-samples to at
most ``curate.per_category_max`` kept records per category (seeded, balanced), and writes
atomically:

* ``data/curated/train.json`` -- what ``train`` reads (images still under ``data/mis``);
* ``data/curated/scores.jsonl`` -- every record's scores, decision and reasons;
* ``data/curated/report.md`` + ``score_hist.png`` -- kept / dropped per category and per
  reason, score histograms, dropped examples to eyeball, and, when the labels come from
  the world teacher, the filter's precision and recall against the planted defects;
* ``metrics/curate.json`` (``dvc metrics``) and ``plots/curate_scores.csv`` (``dvc plots``).

A record the judge could not score (a malformed verdict, an endpoint failure) is dropped
with reason ``judge_error`` and counted; more of them than ``curate.max_failure_fraction``
fails the stage with nothing written.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirage_safety import paths
from mirage_safety.config import (
    CurateConfig,
    Params,
    add_run_arguments,
    tracking_wanted,
)
from mirage_safety.data.schema import assistant_text, read_train_file
from mirage_safety.io import (
    atomic_dir,
    dumps_json,
    png_bytes,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from mirage_safety.labelling.judges import ScoreOutcome, make_rubric_judge
from mirage_safety.labelling.label import IMAGE_ROOT
from mirage_safety.labelling.policies import POLICY_TAG, load_policies
from mirage_safety.labelling.rubric import Rubric, load_rubric
from mirage_safety.labelling.teachers import DEFECTS
from mirage_safety.tracking import flatten_params, stage_run

log = logging.getLogger(__name__)

LABELLED = Path("labelled") / "train.json"
DOWNSAMPLED = "downsampled"
JUDGE_ERROR = "judge_error"


class CurationError(RuntimeError):
    """Too many records could not be scored; nothing was written."""


def decide(scores: dict[str, int | None] | None, threshold: int) -> list[str]:
    """Reasons to drop (criteria below ``threshold``); [] keeps the record."""
    if scores is None:
        return [JUDGE_ERROR]
    return [c for c, v in scores.items() if v is not None and v < threshold]


def downsample(
    kept: list[int], records: Sequence[dict[str, Any]], cap: int | None, seed: int
) -> set[int]:
    """Indices over ``cap`` per category, chosen with a seeded shuffle (balanced)."""
    if cap is None:
        return set()
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i in kept:
        by_cat[str(records[i].get("category"))].append(i)
    rng = random.Random(seed)
    out: set[int] = set()
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        if len(idx) > cap:
            order = list(idx)
            rng.shuffle(order)
            out.update(order[cap:])
    return out


def filter_quality(
    records: Sequence[dict[str, Any]], dropped: Sequence[bool], excluded: set[int]
) -> dict[str, Any] | None:
    """Precision / recall of the filter against the world teacher's planted defects
    (records down-sampled away are left out: their drop says nothing about quality)."""
    planted = [
        (r.get("teacher") or {}).get("defect") if isinstance(r.get("teacher"), dict) else None
        for r in records
    ]
    if not any(isinstance(r.get("teacher"), dict) and "defect" in r["teacher"] for r in records):
        return None
    idx = [i for i in range(len(records)) if i not in excluded]
    bad = [i for i in idx if planted[i] is not None]
    clean = [i for i in idx if planted[i] is None]
    drop = [i for i in idx if dropped[i]]
    tp = sum(dropped[i] for i in bad)
    per = {}
    for name in DEFECTS:
        ids = [i for i in bad if planted[i] == name]
        per[name] = {
            "planted": len(ids),
            "dropped": sum(dropped[i] for i in ids),
            "recall": 100.0 * sum(dropped[i] for i in ids) / len(ids) if ids else None,
        }

    def pct(k: int, n: int) -> float | None:
        return 100.0 * k / n if n else None

    return {
        "planted": len(bad),
        "clean": len(clean),
        "dropped": len(drop),
        "defect_recall": pct(tp, len(bad)),  # planted defective samples dropped
        "clean_kept": pct(sum(not dropped[i] for i in clean), len(clean)),
        "precision": pct(tp, len(drop)),  # dropped samples that were defective
        "per_defect": per,
    }


def run_curate(
    cfg: CurateConfig,
    *,
    policies_dir: str | Path,
    prompts_dir: str | Path,
    data_dir: Path = Path("data"),
    out_dir: Path = Path("data/curated"),
    metrics_path: Path = Path("metrics/curate.json"),
    plots_path: Path = Path("plots/curate_scores.csv"),
    cache_dir: Path | None = Path(".cache/openai"),
    progress: bool = True,
) -> dict[str, Any]:
    src = data_dir / LABELLED
    records = read_train_file(src, image_root=data_dir / IMAGE_ROOT)
    policies = load_policies(policies_dir)
    rubric = load_rubric(cfg.rubric)
    judge = make_rubric_judge(cfg, rubric, policies, prompts=Path(prompts_dir), cache_dir=cache_dir)
    if judge is None:
        outcomes = [ScoreOutcome({c: None for c in rubric.ids}) for _ in records]
    else:
        outcomes = judge.score_many(records, data_dir / IMAGE_ROOT, progress=progress)
    reasons = [decide(o.scores, cfg.threshold) for o in outcomes]
    n_err = sum(JUDGE_ERROR in r for r in reasons)
    if records and n_err / len(records) > cfg.max_failure_fraction:
        first = [
            f"  - {rec.get('id')}: {o.kind}: {o.error}"
            for rec, o in zip(records, outcomes, strict=True)
            if o.scores is None
        ][:10]
        raise CurationError(
            f"curate: the judge could not score {n_err} of {len(records)} records, more than "
            f"curate.max_failure_fraction {cfg.max_failure_fraction}; nothing was written. "
            "First failures:\n" + "\n".join(first)
        )
    passed = [i for i, r in enumerate(reasons) if not r]
    capped = downsample(passed, records, cfg.per_category_max, cfg.seed)
    for i in capped:
        reasons[i] = [DOWNSAMPLED]
    dropped = [bool(r) for r in reasons]
    kept = [rec for rec, d in zip(records, dropped, strict=True) if not d]

    rows = []
    for rec, o, r in zip(records, outcomes, reasons, strict=True):
        row = {
            "id": rec.get("id"),
            "category": rec.get("category"),
            "scores": o.scores,
            "kept": not r,
            "reasons": r,
        }
        if o.error:
            row.update(error=o.error, kind=o.kind, raw=o.raw)
        teacher = rec.get("teacher")
        if isinstance(teacher, dict) and "defect" in teacher:
            row["planted_defect"] = teacher["defect"]
        rows.append(row)
    labelled_manifest = data_dir / "labelled" / "manifest.json"
    policies_sha = (
        read_json(labelled_manifest).get(POLICY_TAG)
        if labelled_manifest.is_file()
        else policies.sha256
    )
    metrics = curate_metrics(
        cfg,
        judge.name if judge else "none",
        records,
        rows,
        filter_quality(records, dropped, capped),
        policies_sha,
    )
    report = report_markdown(metrics, rows, records, rubric, cfg)
    with atomic_dir(out_dir) as tmp:
        write_text_atomic(tmp / "train.json", dumps_json(kept))
        write_text_atomic(
            tmp / "scores.jsonl",
            "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
        )
        write_json_atomic(tmp / "manifest.json", {**metrics, "image_root": f"../{IMAGE_ROOT}"})
        write_text_atomic(tmp / "report.md", report)
        write_bytes_atomic(tmp / "score_hist.png", histogram_png(rows, rubric))
    write_json_atomic(metrics_path, metrics)
    write_text_atomic(plots_path, histogram_csv(rows, rubric))
    return metrics


def curate_metrics(
    cfg: CurateConfig,
    judge: str,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    quality: dict[str, Any] | None,
    policies_sha: str | None,
) -> dict[str, Any]:
    by_reason = Counter(reason for r in rows for reason in r["reasons"])
    per_cat: dict[str, dict[str, int]] = defaultdict(lambda: {"kept": 0, "dropped": 0})
    for r in rows:
        per_cat[str(r["category"])]["kept" if r["kept"] else "dropped"] += 1
    n = len(rows)
    kept = sum(r["kept"] for r in rows)
    out: dict[str, Any] = {
        "judge": judge,
        "threshold": cfg.threshold,
        "per_category_max": cfg.per_category_max,
        "records": n,
        "kept": kept,
        "dropped": n - kept,
        "kept_fraction": kept / n if n else 0.0,
        "judge_errors": by_reason.get(JUDGE_ERROR, 0),
        "dropped_by_reason": dict(sorted(by_reason.items())),
        "per_category": {c: dict(v) for c, v in sorted(per_cat.items())},
        POLICY_TAG: policies_sha,
    }
    if quality is not None:
        out["filter"] = quality
    return out


# --------------------------------------------------------------------------- report
def histogram_counts(rows: Sequence[dict[str, Any]], rubric: Rubric) -> dict[str, list[int]]:
    counts = {c: [0] * (rubric.scale + 1) for c in rubric.ids}
    for r in rows:
        for c, v in (r["scores"] or {}).items():
            if v is not None and c in counts:
                counts[c][v] += 1
    return counts


def histogram_csv(rows: Sequence[dict[str, Any]], rubric: Rubric) -> str:
    counts = histogram_counts(rows, rubric)
    lines = ["score," + ",".join(rubric.ids)]
    for s in range(rubric.scale + 1):
        lines.append(f"{s}," + ",".join(str(counts[c][s]) for c in rubric.ids))
    return "\n".join(lines) + "\n"


def histogram_png(rows: Sequence[dict[str, Any]], rubric: Rubric) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = histogram_counts(rows, rubric)
    fig, axes = plt.subplots(
        1, len(rubric.ids), figsize=(3.2 * len(rubric.ids), 2.8), sharey=True, squeeze=False
    )
    xs = list(range(rubric.scale + 1))
    for ax, c in zip(axes[0], rubric.ids, strict=True):
        ax.bar(xs, counts[c], color="#4c72b0")
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("score")
        ax.set_yscale("symlog")
    axes[0][0].set_ylabel("labels")
    fig.suptitle("curation scores per criterion", fontsize=10)

    data = png_bytes(fig, dpi=100)
    plt.close(fig)
    return data


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def report_markdown(
    metrics: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    rubric: Rubric,
    cfg: CurateConfig,
) -> str:
    lines = [
        "# Curation report",
        "",
        f"Judge `{metrics['judge']}`, threshold {cfg.threshold} of {rubric.scale} on every "
        f"criterion ({', '.join(rubric.ids)}), per-category cap "
        f"{cfg.per_category_max or 'none'}.",
        "",
        f"**{metrics['kept']} of {metrics['records']} kept** "
        f"({100 * metrics['kept_fraction']:.1f}%); judge errors: "
        f"{metrics['judge_errors']}.",
        "",
        "| category | kept | dropped |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c} | {v['kept']} | {v['dropped']} |" for c, v in metrics["per_category"].items()]
    lines += ["", "| reason (criterion below threshold) | dropped |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in metrics["dropped_by_reason"].items()] or ["| – | 0 |"]
    q = metrics.get("filter")
    if q:
        lines += [
            "",
            "## Filter against the planted defects (world teacher)",
            "",
            f"Planted defective: {q['planted']}, clean: {q['clean']}. Defective dropped "
            f"(recall): **{_fmt(q['defect_recall'])}%**; clean kept: "
            f"**{_fmt(q['clean_kept'])}%**; dropped that were defective (precision): "
            f"{_fmt(q['precision'])}%.",
            "",
            "| defect | planted | dropped | recall % |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {k} | {v['planted']} | {v['dropped']} | {_fmt(v['recall'])} |"
            for k, v in q["per_defect"].items()
        ]
    lines += ["", "![score histograms](score_hist.png)", "", "## Dropped examples", ""]
    by_id = {str(r.get("id")): r for r in records}
    shown = [r for r in rows if not r["kept"] and r["reasons"] != [DOWNSAMPLED]]
    step = max(1, len(shown) // max(1, cfg.examples)) if shown else 1
    for r in shown[::step][: cfg.examples]:
        rec = by_id[str(r["id"])]
        label = assistant_text(rec).replace("\n", " ")
        planted = f", planted defect: `{r['planted_defect']}`" if "planted_defect" in r else ""
        lines += [
            f"- `{r['id']}` ({r['category']}): dropped for {', '.join(r['reasons'])}; "
            f"scores {r['scores']}{planted}",
            f"  > {label[:600]}",
        ]
        if r.get("error"):
            lines.append(f"  judge error: {r['error']}")
    if not shown:
        lines.append("(none)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def _track(params: Params, metrics: dict[str, Any]) -> None:
    import mlflow

    with stage_run(
        "curate",
        params.tracking,
        params={"curate": params.curate.model_dump(mode="json")},
        profile=params.profile,
        tags={POLICY_TAG: str(metrics.get(POLICY_TAG))},
    ):
        flat = {
            k: float(v)
            for k, v in flatten_params(metrics).items()
            if _is_number(v) and k not in ("threshold",)
        }
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in flat.items()})


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, bool)


def _cli(args: argparse.Namespace, params: Params) -> int:
    metrics = run_curate(
        params.curate,
        policies_dir=params.label.policies,
        prompts_dir=params.label.prompts,
        data_dir=Path(args.data),
        out_dir=Path(args.out),
        metrics_path=Path(args.metrics),
        plots_path=Path(args.plots),
        cache_dir=Path(args.cache_dir),
        progress=not args.no_progress,
    )
    if tracking_wanted(args):
        _track(params, metrics)
    q = metrics.get("filter")
    extra = (
        f"; planted defects dropped {_fmt(q['defect_recall'])}%, clean kept "
        f"{_fmt(q['clean_kept'])}%"
        if q
        else ""
    )
    print(
        f"curate: kept {metrics['kept']} of {metrics['records']} ({metrics['judge']} judge, "
        f"threshold {metrics['threshold']}), dropped {metrics['dropped_by_reason']}{extra} "
        f"-> {args.out}"
    )
    return 0


def add_cli(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "curate",
        help="a judge scores every label on the rubric; weak ones go",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=paths.DATA,
        help="dataset dir holding labelled/train.json (default: %(default)s)",
    )
    p.add_argument("--out", default=paths.CURATED, help="output dir (default: %(default)s)")
    p.add_argument("--metrics", default=paths.CURATE_METRICS, help="metrics file")
    p.add_argument("--plots", default=paths.CURATE_PLOTS, help="DVC plots CSV")
    add_run_arguments(p, cache_user="openai judge")
    p.set_defaults(func=_cli, params_section="curate")
    return p
