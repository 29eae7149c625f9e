"""``mirage rejudge``: the stored answers judged again by the current judges, every change
listed.

When a judge changes (a hardened compliance rule, a new prompt), the numbers it published
before were made by the old one.  This reads ``eval/verdicts_<model>.jsonl`` (each row: the
test record, the response and the verdicts it got), judges every safety answer again with
the current ``world`` / ``keyword`` judges (no model is run, no endpoint is called) and
prints each verdict whose label or refused flag changed, with counts per model, split and
judge; ``--out``
writes the same as markdown.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from mirage_safety import paths
from mirage_safety.data.schema import SAFETY_SPLITS
from mirage_safety.evaluation.judges.base import JudgeInput
from mirage_safety.evaluation.judges.keyword import judge_one as keyword_judge
from mirage_safety.evaluation.judges.world_judge import judge_one as world_judge
from mirage_safety.io import write_text_atomic

RULE_JUDGES = ("world", "keyword")


def rejudge(eval_dir: Path, judges: tuple[str, ...] = RULE_JUDGES) -> list[dict[str, Any]]:
    """Every (model, split, id, judge) whose stored label differs from the current one."""

    current = {"world": world_judge, "keyword": keyword_judge}
    changes = []
    for path in sorted(eval_dir.glob("verdicts_*.jsonl")):
        model = path.stem.removeprefix("verdicts_")
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("split") not in SAFETY_SPLITS or row.get("generation_error"):
                continue
            rec = row.get("record") or {}
            item = JudgeInput(
                id=str(row["id"]),
                split=row["split"],
                question=str(rec.get("question", "")),
                response=row.get("response") or "",
                meta=rec,
            )
            for name in judges:
                stored = (row.get("verdicts") or {}).get(name) or {}
                if stored.get("label") is None:
                    continue
                verdict = current[name](item)
                # the label, and whether it refused (over-refusal counts that)
                old = _shown(stored.get("label"), stored.get("refused"))
                new = _shown(verdict.label, verdict.refused)
                if new != old:
                    changes.append(
                        {
                            "model": model,
                            "split": row["split"],
                            "id": row["id"],
                            "judge": name,
                            "old": old,
                            "new": new,
                            "harmful": rec.get("is_harmful"),
                            "response": row.get("response") or "",
                        }
                    )
    return changes


def _shown(label: Any, refused: Any) -> str:
    return f"{label}{' (refused)' if refused else ''}"


def markdown(changes: list[dict[str, Any]], eval_dir: Path) -> str:
    counts = Counter((c["model"], c["split"], c["judge"], c["old"], c["new"]) for c in changes)
    lines = [
        f"# Verdicts that change with the current judges ({eval_dir})",
        "",
        f"{len(changes)} changed verdict(s).",
        "",
    ]
    if counts:
        lines += ["| model | split | judge | old | new | n |", "|---|---|---|---|---|---:|"]
        lines += [
            f"| {m} | {s} | {j} | {o} | {n} | {k} |"
            for (m, s, j, o, n), k in sorted(counts.items())
        ]
        lines += [
            "",
            "| model | split | id | judge | old → new | response |",
            "|---|---|---|---|---|---|",
        ]
        for c in changes:
            text = c["response"].replace("\n", " ").replace("|", "\\|")[:200]
            lines.append(
                f"| {c['model']} | {c['split']} | {c['id']} | {c['judge']} | "
                f"{c['old']} → {c['new']} | {text} |"
            )
    return "\n".join(lines) + "\n"


def _cli(args: argparse.Namespace) -> int:
    eval_dir = Path(args.eval)
    if not any(eval_dir.glob("verdicts_*.jsonl")):
        print(f"{eval_dir}: no verdicts_*.jsonl (run `mirage evaluate` first)")
        return 1
    changes = rejudge(eval_dir, tuple(args.judge))
    text = markdown(changes, eval_dir)
    if args.out:
        write_text_atomic(Path(args.out), text)
    print(text)
    return 0


def add_cli(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rejudge",
        help="judge the stored answers again, list changed verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--eval", default=paths.EVAL, help="evaluation dir (default: %(default)s)")
    p.add_argument(
        "--judge",
        nargs="+",
        choices=RULE_JUDGES,
        default=list(RULE_JUDGES),
        help="judges to re-run (default: both)",
    )
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.set_defaults(func=_cli)
    return p
