"""Which failed ``dvc repro <stage>`` is worth a retry (:func:`classify_failure`), and the
error a stage task raises (:class:`StageFailed`, picklable for Prefect's state storage)."""

from __future__ import annotations

import re
from typing import Any

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
_CLASSIFY_LINES = 40


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
