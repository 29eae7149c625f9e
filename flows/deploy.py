"""Serve the nightly retraining deployment from this process (laptop / single machine).

    prefect server start &                      # or infra/servers/prefect-server.sh start
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py

``flow.serve`` registers deployment ``mirage-retrain/nightly-retrain`` with a cron
schedule and runs its flow runs in subprocesses of this process until it is stopped
(Ctrl-C pauses the schedule).

For a work pool and its workers (a GPU pool in production) either

    python flows/deploy.py --work-pool mirage-process     # register and exit
    prefect deploy --all                                  # prefect.yaml

All carry the same schedule and parameters (:data:`NIGHTLY_CRON`,
:data:`NIGHTLY_PARAMETERS`); ``infra/servers/prefect-server.sh deploy`` runs
``prefect deploy --name nightly-retrain`` (tested against a loopback server).

One pipeline at a time: the deployment's concurrency limit is 1 (later runs queue), and
the flow itself holds a workspace lock (see ``flows/retrain.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.stage import run_stage

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/retrain.py:retrain"
STAGE_ENTRYPOINT = "flows/stage.py:run_stage"
if __package__ in (None, ""):  # `python flows/deploy.py`: make `flows` importable
    sys.path.insert(0, str(REPO))

from prefect.client.schemas.objects import (  # noqa: E402
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
)

from flows.retrain import retrain  # noqa: E402

DEPLOYMENT_NAME = "nightly-retrain"
NIGHTLY_CRON = "0 3 * * *"  # 03:00 every day
# Nightly runs: full profile, params as committed; a scheduled run that finds another
# pipeline running waits up to 6 h for it (the deployment limit queues it first anyway).
NIGHTLY_PARAMETERS: dict[str, Any] = {
    "profile": "default",
    "wait_for_lock_s": 6 * 3600,
    "retries": 2,
    "retry_delay_s": 60,
}
TAGS = ["mirage", "retrain"]
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def deployment_kwargs(
    *,
    name: str = DEPLOYMENT_NAME,
    cron: str = NIGHTLY_CRON,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Arguments shared by ``retrain.serve`` and ``retrain.to_deployment``."""
    return {
        "name": name,
        "cron": cron,
        "parameters": {**NIGHTLY_PARAMETERS, **(parameters or {})},
        "tags": TAGS,
        "description": "Nightly MIRage retrain: dvc repro stage by stage, recorded as a "
        "DVC experiment, registered through the gate.",
    }


def build_deployment(*, work_pool: str | None = None, **kwargs: Any) -> Any:
    """The deployment as an object: served by this process (no ``work_pool``) or, with
    ``work_pool``, run by that pool's workers from this checkout."""
    source = retrain
    if work_pool:
        # flow code from this checkout: the pull step sets the workers' working directory
        source = retrain.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    return source.to_deployment(
        **deployment_kwargs(**kwargs), work_pool_name=work_pool, concurrency_limit=ONE_AT_A_TIME
    )


def build_stage_deployment(pool: str, *, source: Path = REPO) -> Any:
    """``mirage-stage/<pool>``: the deployment that runs one placed stage on ``pool``
    (``orchestration.pools``), from the checkout ``source`` on the pool's machines (each
    worker's own clone: the pull step makes it the flow run's working directory)."""

    return run_stage.from_source(source=str(source), entrypoint=STAGE_ENTRYPOINT).to_deployment(
        name=pool,
        work_pool_name=pool,
        tags=[*TAGS, "stage"],
        description=f"One MIRage pipeline stage on work pool {pool} (flows/stage.py).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--name", default=DEPLOYMENT_NAME)
    p.add_argument("--cron", default=NIGHTLY_CRON)
    p.add_argument("--profile", default=NIGHTLY_PARAMETERS["profile"])
    p.add_argument(
        "--work-pool",
        metavar="POOL",
        help="register the deployment on this work pool and exit, instead of "
        "serving it from this process",
    )
    p.add_argument(
        "--stage-pools",
        nargs="+",
        metavar="POOL",
        help="register mirage-stage/<POOL> for each pool (stages placed there by "
        "orchestration.pools) from this checkout, and exit",
    )
    a = p.parse_args(argv)
    if a.stage_pools:
        for pool in a.stage_pools:
            deployment_id = build_stage_deployment(pool).apply()
            print(f"deployment mirage-stage/{pool} ({deployment_id}) on pool {pool}")
        return 0
    kwargs = {"name": a.name, "cron": a.cron, "parameters": {"profile": a.profile}}
    if a.work_pool:
        deployment_id = build_deployment(work_pool=a.work_pool, **kwargs).apply()
        print(f"deployment mirage-retrain/{a.name} ({deployment_id}) on pool {a.work_pool}")
        return 0
    # global_limit: the deployment's concurrency limit on the server (later runs queue);
    # limit: this runner starts at most one flow run at a time.
    retrain.serve(**deployment_kwargs(**kwargs), global_limit=ONE_AT_A_TIME, limit=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
