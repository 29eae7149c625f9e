"""``retrain``: the MIRage pipeline as a Prefect flow, one task per DVC stage.

What a run does, in order:

1. **One pipeline at a time.**  It takes an exclusive ``flock`` on
   ``<repo>/.dvc/tmp/mirage-pipeline.lock`` (the workspace is the shared resource: two
   pipelines in one checkout would overwrite each other's ``params.yaml``, outs and
   ``dvc.lock``).  ``wait_for_lock_s=0`` (the default) fails fast with
   :class:`PipelineBusyError` naming the holder (flow run, pid, host, start time); a
   positive value waits that long first.  The lock dies with its process, so a crashed
   run never leaves a stale lock.  Deployments add ``concurrency_limit: 1`` (ENQUEUE)
   on top, so scheduled runs queue on the server instead of failing here.
2. **Parameters as a DVC experiment.**  ``params.yaml`` is reset to the committed
   version (``HEAD``; uncommitted edits are backed up to ``.dvc/tmp/``) and the run's
   overrides are applied with DVC's own ``--set-param`` code (``profile=...``,
   ``data.seed=...``, ``data.<source>.revision=...``), so every run is exactly
   "HEAD + its parameters", as ``dvc exp run -S`` would make it.
3. **One task per stage** (generate -> label -> curate -> base -> train -> evaluate ->
   register), each
   ``dvc repro <stage>`` in the repo root: DVC's lock file decides what reruns.
   Failures are retried with exponential backoff only when they look transient
   (see :func:`classify_failure`); a config error (``mirage`` exits 2) fails at once.
4. **Recorded as an experiment**: ``dvc exp save -n <exp_name>`` commits the workspace
   (params, ``dvc.lock``, the small metrics files) to an experiment ref, so
   ``dvc exp show`` lists every scheduled retrain next to manual ones.  (A single
   ``dvc exp run`` would hide the stages inside one task: no per-stage retries or
   timing; ``dvc repro`` per stage + ``exp save`` records the same experiment.)
5. **One MLflow parent run** per flow run; its id goes to the stages as
   ``$MIRAGE_PARENT_RUN_ID``, so their child runs (``mirage_safety.tracking``) nest
   under it.  Stages also see ``$DVC_EXP_NAME`` / ``$DVC_EXP_BASELINE_REV`` exactly as
   under ``dvc exp run``, so children are tagged with the experiment name.
6. **Artefacts**: a markdown report and table artefacts with ``metrics/eval.json``
   (per model, per split) and the registry decision (``metrics/registry.json``).

Run it once: ``python -m flows.retrain --profile smoke``; schedule it:
``python flows/deploy.py`` (laptop) or ``prefect deploy --all`` (``prefect.yaml``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run
from prefect.tasks import exponential_backoff

from mirage_safety.config import ConfigError, Params, load_params

STAGES = ("generate", "label", "curate", "base", "train", "evaluate", "register")
REPO_ENV = "MIRAGE_REPO_DIR"
LOCK_RELPATH = Path(".dvc/tmp/mirage-pipeline.lock")  # .dvc/tmp is git- and DVC-ignored
PARAMS_FILE = "params.yaml"
CONFIG_ERROR_EXIT = 2  # `mirage` exits 2 on ConfigError / DataValidationError
# Exit statuses of a stage command that say "try again": EX_TEMPFAIL, and deaths by
# SIGKILL (OOM killer, 128+9) or SIGTERM (preemption, 128+15); DVC reports a signal
# death of the command as a negative status.
TRANSIENT_EXITS = frozenset({75, 137, 143, -9, -15})
# Messages of failures outside our control: DVC's repo lock held by another dvc
# process, network trouble with a judge endpoint / hub / tracking server, a busy SQLite
# tracking store, NCCL hiccups.  Only the end of the output (the traceback) is read.
TRANSIENT_PATTERN = re.compile(
    r"Unable to acquire lock|ConnectionError|ConnectTimeout|ReadTimeout|TimeoutError"
    r"|Connection (?:reset|refused|aborted)|Temporary failure in name resolution"
    r"|\b(?:429|50[234])\b[ :]+(?:Too Many Requests|Bad Gateway|Service Unavailable"
    r"|Gateway Time-?out|Server Error)|database is locked|NCCL (?:error|timeout)",
    re.IGNORECASE,
)
_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
_RAN = re.compile(r"Running stage '(?:[^']*:)?([^':]+)'")
_TAIL_LINES = 200
_CLASSIFY_LINES = 40
METRIC_ORDER = ("asr", "rsr", "rr", "hr", "over_refusal", "helpfulness", "accuracy")


# --------------------------------------------------------------------------- errors
class PipelineBusyError(RuntimeError):
    """Another pipeline run holds the workspace lock."""


class StageFailed(RuntimeError):
    """``dvc repro <stage>`` failed; ``transient`` says whether a retry may help."""

    def __init__(
        self,
        stage: str,
        returncode: int,
        stage_exit: int | None,
        transient: bool,
        reason: str,
        tail: str,
    ) -> None:
        kind = "transient" if transient else "permanent"
        super().__init__(
            f"stage {stage!r} failed ({kind}: {reason}); dvc exited "
            f"{returncode}.  Last output:\n{tail}"
        )
        self.stage = stage
        self.returncode = returncode
        self.stage_exit = stage_exit
        self.transient = transient
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable for Prefect's state storage
        return (
            _rebuild_stage_failed,
            (self.stage, self.returncode, self.stage_exit, self.transient, self.reason, str(self)),
        )


def _rebuild_stage_failed(
    stage: str, returncode: int, stage_exit: int | None, transient: bool, reason: str, message: str
) -> StageFailed:
    exc = StageFailed.__new__(StageFailed)
    RuntimeError.__init__(exc, message)
    exc.stage, exc.returncode, exc.stage_exit = stage, returncode, stage_exit
    exc.transient, exc.reason = transient, reason
    return exc


def classify_failure(returncode: int, output: str) -> tuple[bool, str, int | None]:
    """Decide whether a failed ``dvc repro`` is worth retrying.

    Returns ``(transient, reason, stage_exit)``.  DVC exits non-zero for any failure
    and reports the stage command's own status as "exited with N":

    * N == 2: ``mirage`` rejected the config or the data -> permanent, never retried;
    * N in :data:`TRANSIENT_EXITS` (75 EX_TEMPFAIL, killed by SIGKILL/SIGTERM, e.g. the
      OOM killer or a preempted node) -> transient;
    * a known transient message at the end of the output (:data:`TRANSIENT_PATTERN`:
      DVC's repo lock, network errors, HTTP 429/5xx, a locked SQLite store) ->
      transient;
    * anything else (a traceback of a bug, a CUDA OOM that would recur with the same
      batch) -> permanent: retrying a deterministic failure only burns GPU hours.
    """
    found = _STAGE_EXIT.findall(output)
    stage_exit = int(found[-1]) if found else None
    if stage_exit == CONFIG_ERROR_EXIT:
        return False, "configuration or data error (stage exited 2)", stage_exit
    if stage_exit in TRANSIENT_EXITS:
        return True, f"stage command exited {stage_exit} (temporary failure or killed)", stage_exit
    tail = "\n".join(output.splitlines()[-_CLASSIFY_LINES:])
    if match := TRANSIENT_PATTERN.search(tail):
        return True, f"transient error in output: {match.group(0)!r}", stage_exit
    what = (
        f"stage command exited {stage_exit}"
        if stage_exit is not None
        else f"dvc exited {returncode}"
    )
    return False, f"{what}; not a known transient failure", stage_exit


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only :class:`StageFailed` marked transient.

    (Must be a plain function: Prefect ignores callables that are not.)
    """
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:
            return False
    return isinstance(exc, StageFailed) and exc.transient


# --------------------------------------------------------------------------- lock
def _read_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
        info = json.loads(text) if text else {}
    except (OSError, ValueError):
        return "unknown holder"
    return ", ".join(f"{k}={v}" for k, v in info.items()) or "unknown holder"


@contextlib.contextmanager
def pipeline_lock(
    repo: Path, *, wait_s: float = 0.0, holder: Mapping[str, Any] | None = None
) -> Iterator[Path]:
    """Hold the repo's pipeline lock; raise :class:`PipelineBusyError` if it stays busy.

    ``flock`` locks belong to an open file description, so this excludes other threads
    and processes alike; the kernel drops the lock when the holder dies.  (Not for NFS
    workspaces: use one checkout per machine.)
    """
    path = repo / LOCK_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(0.0, wait_s)
    fh: IO[str] = open(path, "a+")  # noqa: SIM115 -- held for the whole block
    held = False
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PipelineBusyError(
                        f"another MIRage pipeline run is in progress in {repo} "
                        f"({_read_holder(path)}); only one pipeline runs at a time per "
                        f"workspace (lock: {path}; waited {wait_s:g}s)"
                    ) from None
                if not announced:
                    _log().info(
                        "pipeline lock busy (%s); waiting up to %gs", _read_holder(path), wait_s
                    )
                    announced = True
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    **(holder or {}),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
        fh.flush()
        yield path
    finally:
        if held:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


# --------------------------------------------------------------------------- helpers
def _log() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a flow/task run context
        import logging

        return logging.getLogger("flows.retrain")


def default_repo() -> Path:
    """``$MIRAGE_REPO_DIR``, else the checkout this file lives in."""
    return Path(os.environ.get(REPO_ENV) or Path(__file__).resolve().parents[1]).resolve()


def _git(repo: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip()}")
    return out.stdout.strip() if out.returncode == 0 else ""


def _dvc_cmd(*args: str) -> list[str]:
    # the venv's interpreter: the worker need not have the venv activated
    return [sys.executable, "-m", "dvc", *args]


def _base_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # `mirage` and `python` of this venv
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TQDM_MININTERVAL", "30")  # progress bars: a log line per 30 s
    env.update(overrides)
    return env


def validate_exp_name(repo: Path, name: str) -> None:
    """Fail before any work if ``name`` is not a valid, unused experiment name."""
    if (
        not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name)
        or ".." in name
        or name.endswith((".lock", "."))
    ):
        raise ConfigError(
            f"exp_name {name!r}: use letters, digits, '.', '_', '-' (a git ref name component)"
        )
    head = _git(repo, "rev-parse", "HEAD")
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    if _git(repo, "rev-parse", "--verify", "--quiet", ref, check=False):
        raise ConfigError(
            f"DVC experiment {name!r} already exists for baseline "
            f"{head[:7]}; choose another exp_name or remove it with "
            f"`dvc exp remove {name}`"
        )


def _quote(value: str) -> str:
    if "'" in value or "\\" in value:
        raise ConfigError(f"parameter value {value!r} may not contain quotes or backslashes")
    return f"'{value}'"


def prepare_params(
    repo: Path, *, profile: str, data_seed: int | None, data_revision: str | None
) -> Params:
    """Reset ``params.yaml`` to HEAD, apply this run's overrides, return the parsed config.

    The overrides go through DVC's ``--set-param`` implementation (Hydra override
    grammar, comments preserved), so the file is what ``dvc exp run -S`` would write.
    An override that the selected profile would shadow (``profiles.<p>.data.seed``)
    is refused: it would silently not apply.
    """
    from dvc.utils.hydra import apply_overrides

    path = repo / PARAMS_FILE
    applied = repo / LOCK_RELPATH.parent / "params.yaml.applied"  # what the last run wrote
    before = path.read_text()
    committed = _git(repo, "show", f"HEAD:{PARAMS_FILE}", check=False)
    if committed and before.rstrip("\n") != committed.rstrip("\n"):
        if not applied.is_file() or applied.read_text() != before:  # someone's edits
            backup = repo / LOCK_RELPATH.parent / "params.yaml.before-retrain"
            backup.write_text(before)
            _log().warning(
                "params.yaml had uncommitted changes; reset to HEAD (previous content saved to %s)",
                backup,
            )
        path.write_text(committed + "\n")
    try:
        overrides = [f"++profile={_quote(profile)}"]
        if data_seed is not None:
            overrides.append(f"++data.seed={int(data_seed)}")
        if data_revision:
            source = load_params(path, profile=profile).data.source
            if source == "world":
                raise ConfigError(
                    "data_revision is set but data.source is 'world' "
                    "(the embedded world has no revisions)"
                )
            overrides.append(f"++data.{source}.revision={_quote(data_revision)}")
        apply_overrides(path, overrides)
        cfg = load_params(path, profile=profile)
        if data_seed is not None and cfg.data.seed != data_seed:
            raise ConfigError(
                f"profile {profile!r} sets data.seed itself; the data_seed "
                f"override ({data_seed}) would not apply"
            )
        if data_revision and getattr(cfg.data, cfg.data.source).revision != data_revision:
            raise ConfigError(
                f"profile {profile!r} overrides data.{cfg.data.source}."
                "revision; the data_revision override would not apply"
            )
    except Exception:
        path.write_text(before)  # leave the workspace as we found it
        raise
    applied.write_text(path.read_text())
    return cfg


def _cache_false_paths(repo: Path) -> list[str]:
    """Small stage outputs kept in git rather than the DVC cache (``cache: false``)."""
    try:
        stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return []
    paths: list[str] = []
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for item in stage.get(section) or []:
                if isinstance(item, dict):
                    paths += [
                        p
                        for p, opts in item.items()
                        if isinstance(opts, dict) and opts.get("cache") is False
                    ]
    return [p for p in dict.fromkeys(paths) if (repo / p).exists()]


# --------------------------------------------------------------------------- tasks
def _stream(
    cmd: Sequence[str], cwd: Path, env: Mapping[str, str], timeout_s: float | None
) -> tuple[int, str, bool]:
    """Run ``cmd``, log its output line by line; return (returncode, tail, timed_out)."""
    log = _log()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the whole group: dvc and the stage command

    timer = threading.Timer(timeout_s, _kill) if timeout_s else None
    if timer:
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # universal newlines: tqdm's \r updates become lines
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info(line)
        returncode = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
    return returncode, "\n".join(tail), timed_out.is_set()


@task(
    name="dvc-repro",
    task_run_name="dvc repro {stage}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=30),
    retry_jitter_factor=0.2,
    retry_condition_fn=retry_if_transient,
)
def repro_stage(
    stage: str, repo: str, env: dict[str, str], timeout_s: float | None = None
) -> dict[str, Any]:
    """``dvc repro <stage>`` in the repo root; DVC's cache decides what actually runs.

    ``env`` holds only this pipeline's variables (merged over the worker's environment
    here, so secrets in the environment never become task parameters).
    """
    start = time.monotonic()
    returncode, tail, timed_out = _stream(
        _dvc_cmd("repro", stage), Path(repo), _base_env(env), timeout_s
    )
    if timed_out:
        raise StageFailed(
            stage, returncode, None, True, f"timed out after {timeout_s:g}s", tail[-4000:]
        )
    if returncode != 0:
        transient, reason, stage_exit = classify_failure(returncode, tail)
        raise StageFailed(stage, returncode, stage_exit, transient, reason, tail[-4000:])
    ran = list(dict.fromkeys(_RAN.findall(tail)))
    return {
        "stage": stage,
        "ran": ran,
        "reran": stage in ran,
        "seconds": round(time.monotonic() - start, 2),
        "attempts": runtime_task_run.get_run_count() or 1,
    }


@task(name="dvc-exp-save", cache_policy=NO_CACHE)
def save_experiment(repo: str, name: str, env: dict[str, str]) -> dict[str, str]:
    """Record the workspace as DVC experiment ``name`` (params, dvc.lock, metrics)."""
    root = Path(repo)
    cmd = ["exp", "save", "-n", name]
    for path in _cache_false_paths(root):  # git-ignored here; force them into the exp
        cmd += ["-I", path]
    out = subprocess.run(
        _dvc_cmd(*cmd), cwd=root, env=_base_env(env), capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"dvc exp save failed: {(out.stdout + out.stderr).strip()}")
    head = _git(root, "rev-parse", "HEAD")
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    rev = _git(root, "rev-parse", ref)
    _log().info("recorded DVC experiment %s (%s, baseline %s)", name, rev[:7], head[:7])
    return {"name": name, "rev": rev, "ref": ref, "baseline": head}


@task(
    name="dvc-push",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.2,
)
def push_outputs(repo: str, env: dict[str, str]) -> str:
    """``dvc push``: upload this run's outs to the default DVC remote (network: retried)."""
    out = subprocess.run(
        _dvc_cmd("push"), cwd=repo, env=_base_env(env), capture_output=True, text=True, check=False
    )
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise RuntimeError(f"dvc push failed: {text}")
    _log().info("dvc push: %s", text.splitlines()[-1] if text else "done")
    return text


# --------------------------------------------------------------------------- tracking
def _tracking_uri(repo: Path, params: Params) -> str:
    from mirage_safety.tracking import resolve_tracking_uri

    return resolve_tracking_uri(params.tracking, root=repo)


@contextlib.contextmanager
def parent_run(
    repo: Path, params: Params, *, name: str, tags: Mapping[str, str]
) -> Iterator[tuple[Any, str, str]]:
    """The pipeline's MLflow parent run: yields ``(client, run_id, tracking_uri)``.

    Made here rather than with ``mirage_safety.tracking.pipeline_run`` because that
    resolves the store, the artefact root and the git commit against the *current
    directory*, and a Prefect worker does not run in the repo.  The URI is resolved
    like the stages resolve it (relative SQLite paths against the repo root) and is
    passed to them as ``$MLFLOW_TRACKING_URI`` so parent and children share one store.
    """
    import mlflow

    from mirage_safety import tracking as T

    uri = _tracking_uri(repo, params)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        location = (repo / "mlruns").as_uri() if local else None
        try:
            exp_id = client.create_experiment(
                params.tracking.experiment, artifact_location=location
            )
        except mlflow.exceptions.MlflowException:  # created concurrently
            exp_id = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    git = T.git_info(repo)
    all_tags = {T.TAG_KIND: "pipeline", T.TAG_PROFILE: params.profile, **git, **tags}
    if T.TAG_GIT_COMMIT in git:
        all_tags[T.MLFLOW_GIT_COMMIT] = git[T.TAG_GIT_COMMIT]
    run_id = client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id
    status = "FAILED"
    try:
        yield client, run_id, uri
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)


# --------------------------------------------------------------------------- artefacts
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
    from mirage_safety.evaluation.metrics import unusable

    rows: list[dict[str, Any]] = []
    share = _number((eval_metrics or {}).get("min_judged_share"))
    for model, splits in (eval_metrics or {}).items():
        if model in ("agreement", "judges") or not isinstance(splits, Mapping):
            continue
        for split, values in splits.items():
            if not isinstance(values, Mapping):
                continue
            nums = {k: round(v, 3) for k, raw in values.items() if (v := _number(raw)) is not None}
            if nums:
                why = unusable(values, 95.0 if share is None else share)
                # a judge that failed on most answers leaves rates of 0.0: say so in the row
                rows.append({"model": model, "split": split, **nums,
                             **({"note": f"rates not usable: {why}"} if why else {})})
    seen = {k for row in rows for k in row} - {"model", "split", "note"}
    columns = [c for c in METRIC_ORDER if c in seen] + sorted(seen - set(METRIC_ORDER))
    noted = any("note" in r for r in rows)
    return [
        {"model": r["model"], "split": r["split"], **{c: r.get(c) for c in columns},
         **({"note": r.get("note", "")} if noted else {})} for r in rows
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


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(repo: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Markdown + table artefacts from metrics/eval.json and metrics/registry.json."""
    root = Path(repo)
    rows = metrics_rows(_read_json(root / "metrics" / "eval.json"))
    registry = _read_json(root / "metrics" / "registry.json")
    markdown = report_markdown(summary, rows, registry)
    create_markdown_artifact(
        markdown=markdown,
        key="mirage-retrain-report",
        description=f"MIRage retrain {summary['exp_name']}",
    )
    if rows:
        create_table_artifact(
            table=rows,
            key="mirage-eval-metrics",
            description="metrics/eval.json: rates in percent per model and split",
        )
    if registry:
        create_table_artifact(
            table=[
                {
                    "model_name": registry.get("model_name"),
                    "version": registry.get("version"),
                    "decision": registry.get("decision"),
                    "alias": registry.get("alias"),
                    "compared_to": registry.get("compared_to"),
                    "champion_version": registry.get("champion_version"),
                    "reasons": "; ".join(registry.get("reasons") or []),
                }
            ],
            key="mirage-registry-decision",
            description="metrics/registry.json",
        )
    return {"rows": rows, "registry": registry, "markdown": markdown}


# --------------------------------------------------------------------------- flow
@flow(name="mirage-retrain", log_prints=True)
def retrain(
    profile: str = "default",
    data_seed: int | None = None,
    data_revision: str | None = None,
    exp_name: str | None = None,
    repo_dir: str | None = None,
    wait_for_lock_s: float = 0.0,
    retries: int = 2,
    retry_delay_s: float = 30.0,
    stage_timeout_s: float | None = None,
    save_experiment_ref: bool = True,
    track: bool = True,
    dvc_push: bool = False,
) -> dict[str, Any]:
    """Run generate -> base -> train -> evaluate -> register and record the result.

    Args:
        profile: params profile (``profiles.<name>`` in params.yaml), set as
            ``profile=`` like ``dvc exp run -S profile=...``.
        data_seed: a data refresh: regenerate the embedded world with this seed.
        data_revision: pin the real dataset's revision (``data.<source>.revision``).
        exp_name: DVC experiment name; default ``retrain-<profile>-<UTC time>``.
        repo_dir: the checkout to run in (default ``$MIRAGE_REPO_DIR`` or this repo).
        wait_for_lock_s: how long to wait for a running pipeline; 0 fails fast.
        retries / retry_delay_s: per-stage retries of transient failures, with
            exponential backoff starting at ``retry_delay_s`` (x2 each time, +-20%).
        stage_timeout_s: kill a stage that runs longer (counted as transient).
        save_experiment_ref: record the run with ``dvc exp save``.
        track: open the MLflow parent run here.  Without it the stages still track:
            ``$MIRAGE_PIPELINE_ID`` (the experiment name) groups them under one parent
            that the first stage creates.
        dvc_push: ``dvc push`` the outs to the default DVC remote at the end (shared
            cache for other machines; see infra/dvc-remote.md).
    """
    log = get_run_logger()
    repo = Path(repo_dir).resolve() if repo_dir else default_repo()
    if not (repo / "dvc.yaml").is_file():
        raise ConfigError(f"{repo}: no dvc.yaml (set repo_dir or ${REPO_ENV})")
    flow_run_id = str(runtime_flow_run.get_id() or "local")
    name = exp_name or f"retrain-{profile}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    holder = {"flow_run": flow_run_id, "exp_name": name}
    with pipeline_lock(repo, wait_s=wait_for_lock_s, holder=holder):
        if save_experiment_ref:
            validate_exp_name(repo, name)
        params = prepare_params(
            repo, profile=profile, data_seed=data_seed, data_revision=data_revision
        )
        baseline = _git(repo, "rev-parse", "HEAD", check=False)
        run_tags = {"dvc_exp_name": name, "prefect_flow_run_id": flow_run_id, "pipeline_id": name}
        tracker = (
            parent_run(repo, params, name=name, tags=run_tags)
            if track
            else contextlib.nullcontext((None, None, _tracking_uri(repo, params)))
        )
        with tracker as (client, run_id, uri):
            env = {
                "MIRAGE_PIPELINE_ID": name,
                "MLFLOW_TRACKING_URI": uri,
                "MIRAGE_PROFILE": params.profile,
                "DVC_EXP_NAME": name,
                "DVC_EXP_BASELINE_REV": baseline,
            }
            if run_id:
                env["MIRAGE_PARENT_RUN_ID"] = run_id
            stage_task = repro_stage.with_options(
                retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s)
            )
            stages = [stage_task(stage, str(repo), env, stage_timeout_s) for stage in STAGES]
            experiment = save_experiment(str(repo), name, env) if save_experiment_ref else None
            if dvc_push:
                push_outputs(str(repo), env)
            summary: dict[str, Any] = {
                "exp_name": name,
                "profile": params.profile,
                "data_seed": data_seed,
                "data_revision": data_revision,
                "experiment": experiment,
                "parent_run_id": run_id,
                "tracking_uri": uri,
                "stages": stages,
                "repo": str(repo),
            }
            report = publish_report(str(repo), summary)
            if client is not None:
                _log_to_parent(client, run_id, report["rows"], report["registry"], experiment)
    summary["metrics"] = report["rows"]
    summary["registry"] = report["registry"]
    reran = [s["stage"] for s in stages if s["reran"]]
    log.info(
        "retrain %s done: reran %s; registry: %s",
        name,
        reran or "nothing",
        (report["registry"] or {}).get("decision", "n/a"),
    )
    return summary


def _log_to_parent(
    client: Any,
    run_id: str,
    rows: Sequence[Mapping[str, Any]],
    registry: Mapping[str, Any] | None,
    experiment: Mapping[str, str] | None,
) -> None:
    """Headline numbers and the decision on the parent run, for pipeline-level views."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{r['model']}.{r['split']}.{k}", float(v), now, 0)
        for r in rows
        for k, v in r.items()
        if k not in ("model", "split") and v is not None
    ]
    tags = []
    if registry:
        tags += [
            RunTag("registered_version", str(registry.get("version"))),
            RunTag("gate.decision", str(registry.get("decision"))),
        ]
    if experiment:
        tags.append(RunTag("dvc_exp_rev", experiment["rev"]))
    client.log_batch(run_id, metrics=metrics, tags=tags)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.retrain``: one run now (without a server Prefect starts a
    temporary one)."""
    p = argparse.ArgumentParser(
        prog="python -m flows.retrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", default="default")
    p.add_argument("--data-seed", type=int)
    p.add_argument("--data-revision")
    p.add_argument("--exp-name")
    p.add_argument("--repo-dir")
    p.add_argument("--wait-for-lock", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--no-exp", action="store_true", help="do not record a DVC experiment")
    p.add_argument("--push", action="store_true", help="dvc push the outs at the end")
    a = p.parse_args(argv)
    retrain(
        profile=a.profile,
        data_seed=a.data_seed,
        data_revision=a.data_revision,
        exp_name=a.exp_name,
        repo_dir=a.repo_dir,
        wait_for_lock_s=a.wait_for_lock,
        save_experiment_ref=not a.no_exp,
        dvc_push=a.push,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
