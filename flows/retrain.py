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
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # loaded by path (a deployment's entrypoint): `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run
from prefect.tasks import exponential_backoff

from flows.remote import pipeline_slot, remote_stage
from mirage_safety import paths
from mirage_safety.config import PIPELINE_STAGES, ConfigError, Params
from mirage_safety.orchestration.failures import (
    CONFIG_ERROR_EXIT,
    TRANSIENT_EXITS,
    TRANSIENT_PATTERN,
    StageFailed,
    classify_failure,
    retry_if_transient,
)
from mirage_safety.orchestration.lock import (
    LOCK_RELPATH,
    PipelineBusyError,
    pipeline_lock,
    run_logger,
)
from mirage_safety.orchestration.report import _read_json, metrics_rows, report_markdown
from mirage_safety.orchestration.streaming import ran_stages, stream_command
from mirage_safety.orchestration.workspace import (
    PARAMS_FILE,
    cache_false_paths,
    dvc_cmd,
    git,
    prepare_params,
    stage_env,
    validate_exp_name,
)
from mirage_safety.tracking import pipeline_run, resolve_tracking_uri

# the flow's API (tests and deployments import these from here)
__all__ = [
    "CONFIG_ERROR_EXIT",
    "LOCK_RELPATH",
    "PARAMS_FILE",
    "STAGES",
    "TRANSIENT_EXITS",
    "TRANSIENT_PATTERN",
    "ConfigError",
    "PipelineBusyError",
    "StageFailed",
    "classify_failure",
    "main",
    "metrics_rows",
    "pipeline_lock",
    "prepare_params",
    "report_markdown",
    "retrain",
]

STAGES = PIPELINE_STAGES
REPO_ENV = "MIRAGE_REPO_DIR"


# --------------------------------------------------------------------------- helpers
def default_repo() -> Path:
    """``$MIRAGE_REPO_DIR``, else the checkout this file lives in."""
    return Path(os.environ.get(REPO_ENV) or Path(__file__).resolve().parents[1]).resolve()


# --------------------------------------------------------------------------- tasks
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
    returncode, tail, timed_out = stream_command(
        dvc_cmd("repro", stage), Path(repo), stage_env(env), timeout_s
    )
    if timed_out:
        raise StageFailed(
            stage, returncode, None, True, f"timed out after {timeout_s:g}s", tail[-4000:]
        )
    if returncode != 0:
        transient, reason, stage_exit = classify_failure(returncode, tail)
        raise StageFailed(stage, returncode, stage_exit, transient, reason, tail[-4000:])
    ran = ran_stages(tail)
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
    for path in cache_false_paths(root):  # git-ignored here; force them into the exp
        cmd += ["-I", path]
    out = subprocess.run(
        dvc_cmd(*cmd), cwd=root, env=stage_env(env), capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"dvc exp save failed: {(out.stdout + out.stderr).strip()}")
    head = git(root, "rev-parse", "HEAD")
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    rev = git(root, "rev-parse", ref)
    run_logger().info("recorded DVC experiment %s (%s, baseline %s)", name, rev[:7], head[:7])
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
        dvc_cmd("push"), cwd=repo, env=stage_env(env), capture_output=True, text=True, check=False
    )
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise RuntimeError(f"dvc push failed: {text}")
    run_logger().info("dvc push: %s", text.splitlines()[-1] if text else "done")
    return text


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(repo: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Markdown + table artefacts from metrics/eval.json and metrics/registry.json."""
    root = Path(repo)
    rows = metrics_rows(_read_json(root / paths.EVAL_METRICS))
    registry = _read_json(root / paths.REGISTRY_METRICS)
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
            description=paths.REGISTRY_METRICS,
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
        baseline = git(repo, "rev-parse", "HEAD", check=False)
        run_tags = {"dvc_exp_name": name, "prefect_flow_run_id": flow_run_id, "pipeline_id": name}
        pools = params.orchestration.pools
        if pools:
            _check_shared_tracking(repo, params)
            _check_dvc_remote(repo, params)
        # the parent is resolved against the repo (a Prefect worker does not run in it);
        # the stages get its id and store through `env`, not through this process
        tracker = (
            pipeline_run(
                params.tracking,
                name=name,
                tags=run_tags,
                profile=params.profile,
                root=repo,
                export=False,
            )
            if track
            else contextlib.nullcontext(None)
        )
        slot = pipeline_slot(repo) if pools else contextlib.nullcontext()
        with slot, tracker as parent:
            run_id = parent.run_id if parent else None
            uri = (
                parent.tracking_uri if parent else resolve_tracking_uri(params.tracking, root=repo)
            )
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
            orch = params.orchestration.model_dump(mode="json")
            remote_task = remote_stage.with_options(
                retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s)
            )
            stages = [
                remote_task(stage, pools[stage], str(repo), env, orch, list(STAGES))
                if stage in pools
                else stage_task(stage, str(repo), env, stage_timeout_s)
                for stage in STAGES
            ]
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
            if parent is not None:
                _log_to_parent(
                    parent.client, parent.run_id, report["rows"], report["registry"], experiment
                )
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


def _check_shared_tracking(repo: Path, params: Params) -> None:
    """Stages on other pools log from other machines: they need a tracking server."""
    uri = resolve_tracking_uri(params.tracking, root=repo)
    if not uri.startswith(("http://", "https://", "databricks")):
        placed = ", ".join(f"{s} -> {p}" for s, p in params.orchestration.pools.items())
        raise ConfigError(
            f"orchestration.pools places stages on other pools ({placed}) but "
            f"tracking.tracking_uri is {uri!r}, a store only this machine sees: their MLflow "
            "runs could not nest under the pipeline's parent run. Set tracking.tracking_uri "
            "(or $MLFLOW_TRACKING_URI) to a shared MLflow server (infra/servers/)."
        )


def _check_dvc_remote(repo: Path, params: Params) -> None:
    """Placed stages exchange bytes through a DVC remote: there must be one."""
    names = subprocess.run(
        dvc_cmd("remote", "list"), cwd=repo, capture_output=True, text=True, check=False
    ).stdout.split()
    wanted = params.orchestration.remote
    out = subprocess.run(
        dvc_cmd("remote", "default"), cwd=repo, capture_output=True, text=True, check=False
    )
    default = out.stdout.strip() if out.returncode == 0 else ""
    if (wanted and wanted not in names) or (not wanted and not default):
        have = ", ".join(names[::2]) or "none"
        missing = f"remote {wanted!r} is not" if wanted else "no default remote is"
        raise ConfigError(
            f"orchestration.pools places stages on other pools, which hand off through a DVC "
            f"remote, but {missing} configured in {repo} (remotes: {have}); see "
            "infra/dvc-remote.md"
        )


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
