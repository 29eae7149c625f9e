"""Run a pipeline command (``dvc repro ...``) with its output streamed to the run's log and
its tail kept for the failure message; which stages it ran, read from DVC's output."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from mirage_safety.orchestration.lock import run_logger

_RAN = re.compile(r"Running stage '(?:[^']*:)?([^':]+)'")
_TAIL_LINES = 200  # lines of a stage's output kept for its failure message


def stream_command(
    cmd: Sequence[str], cwd: Path, env: Mapping[str, str], timeout_s: float | None
) -> tuple[int, str, bool]:
    """Run ``cmd`` in its own process group, log its output line by line (the run's logger:
    Prefect's inside a flow); return (returncode, the last lines, timed out).  A timeout
    kills the whole group: dvc and the stage command it started."""
    log = run_logger()
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


def ran_stages(output: str) -> list[str]:
    """The stages ``dvc repro`` ran (not the ones it skipped as unchanged), in order."""
    return list(dict.fromkeys(_RAN.findall(output)))
