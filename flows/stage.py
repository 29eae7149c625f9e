"""``mirage-stage``: one pipeline stage on a work pool, in that pool's own checkout.

The retrain flow (``flows/retrain.py``) runs a stage that ``orchestration.pools`` places on
another pool as the deployment ``mirage-stage/<pool>`` and waits for it. The flow run
happens on that pool's worker, in the deployment's working directory: the worker's own
clone of the repo, never the orchestrating checkout.

1. **Checkout.** The clone is set to the orchestrating run's commit (fetched from
   ``repo_url``), with the run's ``params.yaml`` and ``dvc.lock`` written over it.
2. **Inputs.** It pulls from the DVC remote the stage's dependencies that other stages
   produce, and nothing else (``dvc pull --allow-missing <deps> <stage>``). If the stage's
   own outs are already in the remote with the locked hashes, they come down too and the
   stage is not re-run.
3. **The stage.** It runs ``dvc repro --single-item <stage>`` and pushes the stage's outs
   (DVC writes them atomically and verifies them by hash).
4. **Result.** It returns, and records as the artefact ``mirage-stage-result``, the
   stage's new ``dvc.lock`` entry and its ``cache: false`` files (metrics, plots). The
   orchestrating run reads that artefact through the Prefect API alone, so no result
   storage has to be shared between machines.

Register the deployments per pool with ``python flows/deploy.py --stage-pools gpu cpu``
(or ``prefect deploy`` with ``prefect.yaml``), and start workers with ``prefect worker
start --pool gpu`` in a clone on each machine.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run from a deployment's working directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mirage_safety.orchestration import handoff
from mirage_safety.orchestration.failures import StageFailed, classify_failure
from mirage_safety.orchestration.streaming import ran_stages, stream_command
from mirage_safety.orchestration.workspace import PARAMS_FILE, dvc_cmd, git, stage_env

RESULT_KEY = "mirage-stage-result"
FLOW_NAME = "mirage-stage"


def checkout(repo: Path, repo_url: str, commit: str) -> None:
    """Point the clone at ``commit`` of ``repo_url``; tracked files forced to it."""
    git(repo, "fetch", "--quiet", repo_url, "+refs/heads/*:refs/remotes/handoff/*")
    git(repo, "checkout", "--quiet", "--force", "--detach", commit)


@flow(name=FLOW_NAME, log_prints=True)
def run_stage(
    stage: str,
    repo_url: str,
    commit: str,
    params_yaml: str,
    dvc_lock: str,
    env: dict[str, str],
    remote: str | None = None,
    files: dict[str, str] | None = None,
) -> dict[str, Any]:

    log = get_run_logger()
    repo = Path.cwd()
    start = time.monotonic()
    checkout(repo, repo_url, commit)
    (repo / PARAMS_FILE).write_text(params_yaml)
    (repo / handoff.LOCK_FILE).write_text(dvc_lock)
    for rel, text in (files or {}).items():  # small inputs kept in git (metrics/eval.json)
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    log.info(
        "%s at %s on %s: pulling what %s depends on", repo, commit[:7], socket.gethostname(), stage
    )
    handoff.pull_inputs(repo, stage, remote=remote, env=env)
    returncode, tail, _ = stream_command(
        dvc_cmd("repro", "--single-item", stage), repo, stage_env(env), None
    )
    if returncode != 0:
        transient, reason, stage_exit = classify_failure(returncode, tail)
        raise StageFailed(stage, returncode, stage_exit, transient, reason, tail[-4000:])
    handoff.push(repo, [stage], remote=remote, env=env)
    files = {
        p: (repo / p).read_text()
        for p in handoff.cache_false_outs(repo, stage)
        if (repo / p).is_file()
    }
    result = {
        "stage": stage,
        "commit": commit,
        "host": socket.gethostname(),
        "checkout": str(repo),
        "lock": handoff.lock_entry(repo, stage),
        "files": files,
        "reran": stage in ran_stages(tail),
        "seconds": round(time.monotonic() - start, 2),
    }
    create_markdown_artifact(
        key=RESULT_KEY,
        markdown="```json\n" + json.dumps(result) + "\n```",
        description=f"{stage}: dvc.lock entry and files",
    )
    return result
