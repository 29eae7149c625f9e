"""``mirage summary``: where to look after a pipeline run (the last step of ``make run``).

Prints three things:

1. the headline results -- one row per model (ASR per split, RSR, RR, HR, over-refusal,
   general accuracy) from ``metrics/eval.json``; with ``--all``, every metric: ``dvc metrics
   show`` when DVC is available, else the numbers of ``metrics/*.json`` read directly
   (hundreds of per-category values: too wide to be the default);
2. the command that opens the MLflow UI on the right backend store
   (``mlflow ui --backend-store-uri sqlite:///mlflow.db`` for the default local store), or
   the server's address when ``$MLFLOW_TRACKING_URI`` points at one;
3. the current champion of the registered model (``models:/<name>@champion``), read from
   the registry with ``MlflowClient``, and the last gate decision (``metrics/registry.json``).

It never creates anything: a missing SQLite store is reported, not initialised.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mirage_safety.config import Params, TrackingConfig
from mirage_safety.evaluation.metrics import unusable
from mirage_safety.io import read_json
from mirage_safety.registry.manage import CHALLENGER, CHAMPION, alias_version
from mirage_safety.report import get_dotted
from mirage_safety.tracking import TRACKING_URI_ENV, resolve_tracking_uri

METRICS_DIR = Path("metrics")
_DVC_TIMEOUT_S = 120


# --------------------------------------------------------------------------- metrics
def dvc_executable() -> str | None:
    """``dvc`` on PATH, else next to this interpreter (the venv's)."""
    found = shutil.which("dvc")
    if found:
        return found
    sibling = Path(sys.executable).with_name("dvc")
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def dvc_metrics_show(root: Path, dvc: str | None = None) -> str | None:
    """Output of ``dvc metrics show`` in ``root``, or None when DVC is unavailable/fails."""
    dvc = dvc or dvc_executable()
    if dvc is None:
        return None
    try:
        out = subprocess.run(
            [dvc, "metrics", "show"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=_DVC_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and text else None


def _numeric_leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj):
        yield prefix, float(obj)


def metrics_from_files(metrics_dir: Path) -> str | None:
    """Numeric leaves of every ``metrics/*.json`` as ``file  key  value`` lines."""
    if not metrics_dir.is_dir():
        return None
    lines = []
    for path in sorted(metrics_dir.glob("*.json")):
        shown = path.relative_to(metrics_dir.parent).as_posix()  # as dvc shows it
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            lines.append(f"{shown}: unreadable ({exc})")
            continue
        leaves = list(_numeric_leaves(data))
        width = max((len(k) for k, _ in leaves), default=0)
        lines.append(shown)
        lines += [f"  {key:<{width}}  {value:g}" for key, value in leaves]
    return "\n".join(lines) or None


HEADLINE: tuple[tuple[str, str], ...] = (
    ("ASR easy", "test_easy.asr"),
    ("ASR hard", "test_hard.asr"),
    ("RSR hard", "test_hard.rsr"),
    ("RR hard", "test_hard.rr"),
    ("HR hard", "test_hard.hr"),
    ("over-refusal", "test_benign.over_refusal"),
    ("over-ref. shifted", "test_benign_shift.over_refusal"),
    ("general acc.", "general.accuracy"),
)


def headline_table(metrics_dir: Path) -> str | None:
    """One aligned row per evaluated model (rates in %), from ``metrics/eval.json``."""
    try:
        data = read_json(metrics_dir / "eval.json")
    except (OSError, ValueError):
        return None
    models = [m for m in ("base", "mirage") if isinstance(data.get(m), Mapping)]
    if not models:
        return None

    head = ["model", *(name for name, _ in HEADLINE)]
    rows = [head]
    share = float(data.get("min_judged_share", 95.0))
    notes = []
    for model in models:
        cells = []
        for _, key in HEADLINE:
            v, section = get_dotted(data[model], key), data[model].get(key.split(".")[0])
            why = unusable(section, share) if isinstance(section, Mapping) else None
            if why:  # the judge scored too few answers: not a clean 0.0
                cells.append("n/a")
                notes.append(f"{model} {key.split('.')[0]}: {why}")
            else:
                cells.append("-" if not isinstance(v, int | float) else f"{v:.1f}")
        rows.append([model, *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  "
        + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    try:
        base = read_json(metrics_dir / "base.json")
    except (OSError, ValueError):
        base = {}
    tasks = base.get("general_accuracy_per_task") if isinstance(base, Mapping) else None
    if isinstance(tasks, Mapping) and tasks:
        lines.append(
            "  base general accuracy per task: "
            + ", ".join(f"{k} {v:.1f}" for k, v in tasks.items() if isinstance(v, int | float))
        )
    for note in dict.fromkeys(notes):
        lines.append(f"  n/a: {note} (judge errors; see eval/report.md)")
    try:
        ran = read_json(metrics_dir / "train.json").get("numerics")
    except (OSError, ValueError, AttributeError):
        ran = None
    if isinstance(ran, Mapping) and ran:
        lines.append(
            f"  computed on: {ran.get('cpu', '?')}, numerics {ran.get('mode', '?')} "
            f"(ATen {ran.get('aten_capability', '?')}, MKL "
            f"{ran.get('mkl_cbwr') or 'auto'}, {ran.get('threads', '?')} threads)"
        )
    judge = get_dotted(data, "judges.primary")
    if judge:
        lines.append(
            f"  judge: {judge}; Wilson 95% intervals and per-category rates in eval/report.md"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- mlflow
def _configured_uri(tracking: TrackingConfig) -> str:

    return os.environ.get(TRACKING_URI_ENV) or tracking.tracking_uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :]
    return Path(db) if db.startswith("/") else None


def ui_command(tracking: TrackingConfig, root: Path) -> str:
    """The shell command (or address) that shows the runs and the registry."""

    uri = _configured_uri(tracking)
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (MLflow tracking server)"
    if uri.startswith("databricks"):
        return f"open the Databricks workspace of {uri}"
    resolved = resolve_tracking_uri(tracking, root)
    # a relative store is shown relative, run from the repository root: the short command
    # a person would type; an absolute one as is
    shown = uri if resolved != uri and Path.cwd().resolve() == root.resolve() else resolved
    return f"mlflow ui --backend-store-uri {shown}"


@contextmanager
def _quick_http() -> Iterator[None]:
    """Fail fast against an unreachable server instead of MLflow's minutes of retries."""
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def champion_status(params: Params, root: Path) -> list[str]:
    """Lines describing ``models:/<name>@champion`` (or why there is none)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = params.registry.model_name
    uri = resolve_tracking_uri(params.tracking, root)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return [
            f"no champion: the MLflow store {db} does not exist yet (run the pipeline, "
            f"then `mirage register`)"
        ]
    try:
        with _quick_http():
            client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            champ = alias_version(client, name, CHAMPION)
            challenger = alias_version(client, name, CHALLENGER)
    except MlflowException as exc:
        return [f"champion unknown: cannot read the registry at {uri}: {exc}"]
    if champ is None:
        return [
            f"no champion yet for registered model {name!r} (run `mirage register`, or "
            f"`mirage registry promote VERSION`)"
        ]
    tags = champ.tags or {}
    how = tags.get("champion.how", "?")
    lines = [
        f"champion: {name} version {champ.version}  (models:/{name}@{CHAMPION}; "
        f"became champion by {how}"
        + (f", {tags['champion.by']}" if tags.get("champion.by") else "")
        + (f", since {tags['champion.since']}" if tags.get("champion.since") else "")
        + ")"
    ]
    if challenger is not None:
        lines.append(
            f"challenger: version {challenger.version} (refused by the gate; "
            f"`mirage registry promote {challenger.version}` to override)"
        )
    return lines


def last_decision(metrics_dir: Path) -> str | None:
    path = metrics_dir / "registry.json"
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "version" not in data:
        return None
    reasons = data.get("reasons") or []
    first = f": {reasons[0]}" if reasons else ""
    return (
        f"last registration: version {data['version']} -> {data.get('decision')} "
        f"(@{data.get('alias')}){first}"
    )


# --------------------------------------------------------------------------- output
def summary_text(
    params: Params, *, root: Path | None = None, use_dvc: bool = True, show_all: bool = False
) -> str:
    root = (root or Path.cwd()).resolve()
    metrics_dir = root / METRICS_DIR
    if show_all:
        shown = dvc_metrics_show(root) if use_dvc else None
        source = "dvc metrics show"
        if shown is None:
            shown = metrics_from_files(metrics_dir)
            source = f"{METRICS_DIR.as_posix()}/*.json"
        out = [f"== Metrics ({source})", shown or "no metrics yet (run `dvc repro`)", ""]
    else:
        table = headline_table(metrics_dir)
        out = [
            f"== Results ({METRICS_DIR.as_posix()}/eval.json, rates in %)",
            table or "no evaluation yet (run `dvc repro`)",
            "  every metric: `dvc metrics show` (or `mirage summary --all`); "
            "experiments side by side: `mirage report`",
            "",
        ]
    out += [
        "== MLflow (runs, params, metrics, registered models)",
        f"  {ui_command(params.tracking, root)}",
        "",
    ]
    out += [f"== Registered model {params.registry.model_name!r}"]
    out += [f"  {line}" for line in champion_status(params, root)]
    if decision := last_decision(metrics_dir):
        out.append(f"  {decision}")
    out += [f'  load it: mlflow.pyfunc.load_model("models:/{params.registry.model_name}@champion")']
    return "\n".join(out) + "\n"


def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "summary",
        help="where to look after a run: metrics, the MLflow UI command, the champion",
        description="Print the headline results per model (metrics/eval.json), the command "
        "that opens the MLflow UI on the configured store, and the registered "
        "model's champion.",
    )
    p.add_argument(
        "--all",
        action="store_true",
        dest="show_all",
        help="print every metric (`dvc metrics show`) instead of the headline table",
    )
    p.add_argument(
        "--no-dvc",
        action="store_true",
        help="with --all: read metrics/*.json instead of running `dvc metrics show`",
    )
    p.set_defaults(func=_cli, params_section="")
    return p


def _cli(args: argparse.Namespace, params: Params) -> int:
    root = Path(args.params).resolve().parent
    sys.stdout.write(
        summary_text(params, root=root, use_dvc=not args.no_dvc, show_all=args.show_all)
    )
    return 0
