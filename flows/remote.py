"""The retrain flow's side of a stage placed on another work pool (``orchestration.pools``).

:func:`remote_stage` does four things:
1. pushes the outs of the stages before the placed one to the DVC remote;
2. starts the deployment ``<orchestration.deployment>/<pool>`` (:mod:`flows.stage`) with
   this run's commit, ``params.yaml``, ``dvc.lock`` and environment;
3. waits for it (``orchestration.stage_timeout_s``);
4. merges the worker's ``dvc.lock`` entry and ``cache: false`` files into this checkout,
   then pulls the stage's outs from the remote.

A run that ends Crashed, or that is still unfinished at the time-out, is a transient
failure: the worker died, and the task retries on the pool. A run that Failed is
permanent when its stage failed for a permanent reason (a config error). Either way the
task's error carries the tail of the worker's log.

One pipeline per repository and branch across machines: :func:`pipeline_slot` holds a
server-side global concurrency limit of 1 for the flow run's lifetime, on top of the
local ``flock``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run as runtime_task_run
from prefect.tasks import exponential_backoff

from flows.stage import RESULT_KEY
from mirage_safety.orchestration import handoff
from mirage_safety.orchestration.failures import StageFailed, retry_if_transient
from mirage_safety.orchestration.lock import run_logger
from mirage_safety.orchestration.workspace import git

_LOG_TAIL = 60  # worker log lines kept in a failure's message


def repo_url(repo: Path) -> str:
    """Where workers fetch the commit from: the ``origin`` remote, else this checkout."""
    return git(repo, "remote", "get-url", "origin", check=False) or str(repo)


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _worker_tail(client: Any, flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
    )
    return "\n".join(entry.message for entry in logs[-_LOG_TAIL:])


def _result(client: Any, flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    arts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            key=ArtifactFilterKey(any_=[RESULT_KEY]),
        )
    )
    if not arts:
        raise RuntimeError(f"flow run {flow_run_id}: no {RESULT_KEY} artefact")
    body = re.search(r"```json\n(.*)\n```", str(arts[0].data), re.DOTALL)
    if body is None:
        raise RuntimeError(f"flow run {flow_run_id}: unreadable {RESULT_KEY} artefact")
    return json.loads(body.group(1))


def _pool_alive(client: Any, pool: str) -> bool:
    """Whether a worker of ``pool`` sent a heartbeat lately (within three of its own
    intervals, as the server's rule for marking a worker offline).  Read from the
    heartbeat times themselves, so it holds whether or not the server's background
    services run."""
    from datetime import UTC, datetime

    try:
        workers = client.read_workers_for_work_pool(pool)
    except Exception:  # an old server without the endpoint: rely on the time-out
        return True
    now = datetime.now(UTC)
    for w in workers:
        beat = w.last_heartbeat_time
        interval = float(w.heartbeat_interval_seconds or 30)
        if beat is not None and (now - beat).total_seconds() <= 3 * interval + 5:
            return True
    return False


def _wait(
    client: Any, flow_run_id: Any, pool: str, timeout_s: float, poll_s: float = 2.0
) -> tuple[Any, str]:
    """(the flow run's final state, "") or (None, why it will not end): the time-out, or
    its run started and then the pool lost every worker (a worker that died mid-stage
    leaves its run "running" on the server)."""
    deadline = time.monotonic() + timeout_s
    started = False
    while time.monotonic() < deadline:
        state = client.read_flow_run(flow_run_id).state
        if state is not None and state.is_final():
            return state, ""
        started = started or (state is not None and state.is_running())
        if started and not _pool_alive(client, pool):
            return None, f"pool {pool} has no live worker any more (worker died mid-stage)"
        time.sleep(poll_s)
    return None, f"no result from pool {pool} within {timeout_s:g}s (worker gone?)"


@task(
    name="remote-stage",
    task_run_name="{stage} on pool {pool}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=30),
    retry_jitter_factor=0.2,
    retry_condition_fn=retry_if_transient,
)
def remote_stage(
    stage: str,
    pool: str,
    repo: str,
    env: dict[str, str],
    orchestration: dict[str, Any],
    order: list[str],
) -> dict[str, Any]:
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    root = Path(repo)
    remote = orchestration.get("remote")
    log = run_logger()
    start = time.monotonic()
    handoff.push(root, handoff.upstream(stage, order), remote=remote, env=env)
    commit = git(root, "rev-parse", "HEAD")
    parameters = {
        "stage": stage,
        "repo_url": repo_url(root),
        "commit": commit,
        "params_yaml": (root / "params.yaml").read_text(),
        "dvc_lock": (root / handoff.LOCK_FILE).read_text()
        if (root / handoff.LOCK_FILE).is_file()
        else "",
        "env": env,
        "remote": remote,
        "files": handoff.small_inputs(root, stage),
    }
    name = f"{orchestration['deployment']}/{pool}"
    run = run_deployment(
        name,
        parameters=parameters,
        timeout=0,
        as_subflow=True,
        flow_run_name=f"{stage}@{commit[:7]}",
    )
    log.info("%s: flow run %s on pool %s", stage, run.id, pool)
    with _client() as client:
        state, why = _wait(client, run.id, pool, float(orchestration["stage_timeout_s"]))
        tail = _worker_tail(client, run.id)
        if state is None:  # stop the orphaned run on the server, then fail (transient)
            with contextlib.suppress(Exception):
                client.set_flow_run_state(run.id, Crashed(message=why), force=True)
            raise StageFailed(stage, -1, None, True, why, tail)
        if not state.is_completed():
            permanent = "(permanent:" in (state.message or "")  # StageFailed's own wording
            raise StageFailed(
                stage,
                -1,
                None,
                state.is_crashed() or not permanent,
                f"flow run {run.id} on pool {pool} ended {state.type.value}: "
                f"{(state.message or '')[:300]}",
                tail,
            )
        result = _result(client, run.id)
    handoff.merge_lock_entry(root, stage, result["lock"])
    for rel, text in result["files"].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    handoff.pull(root, stage, remote=remote, env=env)
    return {
        "stage": stage,
        "ran": [stage] if result["reran"] else [],
        "reran": result["reran"],
        "seconds": round(time.monotonic() - start, 2),
        "attempts": runtime_task_run.get_run_count() or 1,
        "pool": pool,
        "flow_run_id": str(run.id),
        "worker_checkout": result["checkout"],
    }


@contextlib.contextmanager
def pipeline_slot(repo: Path) -> Iterator[str]:
    """Hold the server-side limit ``mirage-pipeline-<repo>-<branch>`` (created with limit 1
    if missing) while the pipeline runs: one pipeline per repo and branch on any machine."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD", check=False) or "detached"
    ident = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{repo_url(repo)}-{branch}").strip("-")
    name = f"mirage-pipeline-{ident[-80:]}"
    with _client() as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    with concurrency(name, occupy=1, strict=True):
        yield name
