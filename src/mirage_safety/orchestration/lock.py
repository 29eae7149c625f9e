"""One pipeline at a time per workspace: an ``flock`` on
``<repo>/.dvc/tmp/mirage-pipeline.lock`` naming its holder (flow run, pid, host, start)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

LOCK_RELPATH = Path(".dvc/tmp/mirage-pipeline.lock")  # .dvc/tmp is git- and DVC-ignored


class PipelineBusyError(RuntimeError):
    """Another pipeline run holds the workspace lock."""


def run_logger() -> Any:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow/task run context
        import logging

        return logging.getLogger("mirage_safety.orchestration")


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
                    run_logger().info(
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
