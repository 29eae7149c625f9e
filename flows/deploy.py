"""Serve the nightly retraining deployment from this process (laptop / single machine).

    prefect server start &                      # or infra/servers/prefect-server.sh start
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py

``flow.serve`` registers deployment ``mirage-retrain/nightly-retrain`` with a cron
schedule and runs its flow runs in subprocesses of this process until it is stopped
(Ctrl-C pauses the schedule).  For a work pool and workers (a GPU pool in production)
use ``prefect.yaml`` instead: ``prefect deploy --all``.  Both carry the same schedule
and parameters (:data:`NIGHTLY_CRON`, :data:`NIGHTLY_PARAMETERS`).

One pipeline at a time: the deployment's concurrency limit is 1 (later runs queue), and
the flow itself holds a workspace lock (see ``flows/retrain.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python flows/deploy.py`: make `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.retrain import retrain

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
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1,
                                       collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def deployment_kwargs(*, name: str = DEPLOYMENT_NAME, cron: str = NIGHTLY_CRON,
                      parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Arguments shared by ``retrain.serve`` and ``retrain.to_deployment``."""
    return {
        "name": name,
        "cron": cron,
        "parameters": {**NIGHTLY_PARAMETERS, **(parameters or {})},
        "tags": TAGS,
        "description": "Nightly MIRage retrain: dvc repro stage by stage, recorded as a "
                       "DVC experiment, registered through the gate.",
    }


def build_deployment(**kwargs: Any) -> Any:
    """The deployment :func:`main` serves, as an object (for inspection and tests)."""
    return retrain.to_deployment(**deployment_kwargs(**kwargs), concurrency_limit=ONE_AT_A_TIME)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=DEPLOYMENT_NAME)
    p.add_argument("--cron", default=NIGHTLY_CRON)
    p.add_argument("--profile", default=NIGHTLY_PARAMETERS["profile"])
    a = p.parse_args(argv)
    # global_limit: the deployment's concurrency limit on the server (later runs queue);
    # limit: this runner starts at most one flow run at a time.
    retrain.serve(**deployment_kwargs(name=a.name, cron=a.cron,
                                      parameters={"profile": a.profile}),
                  global_limit=ONE_AT_A_TIME, limit=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
