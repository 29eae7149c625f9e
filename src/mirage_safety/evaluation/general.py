"""General capability through lmms-eval: the helpfulness half beside over-refusal.

For each evaluated model, ``lmms-eval eval --model openai`` runs the tasks of
``eval.general.tasks`` against an OpenAI-compatible server: the served model itself
(``eval.engine: openai``), or a loopback ``transformers serve`` started here for a model
directory (:mod:`mirage_safety.models.serving`).  lmms-eval lives in its own virtual environment
(``.venv-lmms``; its pins clash with ours), so it is a subprocess, not an import.

What comes back: per task the score (``results.<task>["<metric>,none"]``, in percent), its
standard error, N; their mean as ``accuracy``; and the per-sample logs, kept under
``eval/general/<model>/``.  Nothing fails silently: lmms-eval turns a request that failed
(server unreachable, a 4xx) into a placeholder answer that scores 0, so every logged sample
is read and any such answer is an error naming the task and the count; so are a non-zero
exit, a task lmms-eval did not report and a missing score.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirage_safety.config import EvalConfig, GeneralEvalConfig
from mirage_safety.evaluation.degenerate import degenerate_reason
from mirage_safety.models import serving

log = logging.getLogger(__name__)

LOG = "lmms-eval.log"
#: what lmms-eval's OpenAI model answers in place of a request that failed
FAILED_MARKERS = ("[LMMS_EVAL_REQUEST_FAILED", "[LMMS_EVAL_BUDGET_EXCEEDED")


class GeneralEvalError(RuntimeError):
    """lmms-eval could not measure a task: the message names the task (or the run)."""


@dataclass(frozen=True)
class Target:
    """Where lmms-eval sends its requests for one model."""

    base_url: str
    model: str  # the id the server serves the model under
    api_key: str = "EMPTY"


# --------------------------------------------------------------------------- command
def executable(command: str, root: Path) -> str:
    """``eval.general.command`` resolved: an absolute path; a relative one under ``root``
    or, failing that, beside the environment running this code (a DVC experiment runs in a
    temporary copy of the repository that has no ``.venv-lmms``); a bare name on PATH."""
    path = Path(command)
    if path.is_absolute() or os.sep not in command:
        return command
    for base in (root, Path(sys.prefix).parent):
        if (base / path).exists():
            return str(base / path)
    return str(root / path)


def command(
    cfg: GeneralEvalConfig, target: Target, out: Path, *, max_new_tokens: int, root: Path
) -> list[str]:
    """The lmms-eval command line (paths absolute: it runs in the data directory)."""
    exe = executable(cfg.command, root)
    model_args = (
        f"model={target.model},base_url={target.base_url},api_key={target.api_key},"
        f"num_concurrent={cfg.num_concurrent},max_retries={cfg.max_retries}"
    )
    cmd = [
        str(exe),
        "eval",
        "--model",
        "openai",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(cfg.tasks),
        "--output_path",
        str(out),
        "--log_samples",
        "--gen_kwargs",
        f"max_new_tokens={max_new_tokens},temperature=0",
    ]
    if cfg.include_path:
        cmd += ["--include_path", ",".join(str((root / p).resolve()) for p in cfg.include_path)]
    if cfg.limit is not None:
        cmd += ["--limit", str(cfg.limit)]
    return cmd + list(cfg.extra_args)


# --------------------------------------------------------------------------- results
def _newest(out: Path, pattern: str) -> Path | None:
    found = sorted(out.rglob(pattern))
    return found[-1] if found else None


def _response(sample: dict[str, Any]) -> str:
    resp = sample.get("filtered_resps", sample.get("resps"))
    while isinstance(resp, list):
        resp = resp[0] if resp else ""
    return "" if resp is None else str(resp)


def _errors(log_file: Path, limit: int = 6) -> str:
    """The log's error lines (lmms-eval reports a broken task there, exit status 0)."""
    if not log_file.is_file():
        return ""
    lines = [
        ln.strip()
        for ln in log_file.read_text(errors="replace").splitlines()
        if any(w in ln for w in ("Error", "ERROR", "error:"))
    ]
    return (":\n  " + "\n  ".join(lines[-limit:])) if lines else ""


def read_results(out: Path, cfg: GeneralEvalConfig) -> dict[str, Any]:
    """Parse lmms-eval's output directory into the ``general`` section of eval.json."""
    results_file = _newest(out, "*_results.json")
    if results_file is None:  # lmms-eval logs a failed task and still exits 0
        raise GeneralEvalError(
            f"lmms-eval wrote no results for {', '.join(cfg.tasks)} "
            f"(log: {out / LOG}){_errors(out / LOG)}"
        )
    results = json.loads(results_file.read_text()).get("results") or {}
    tasks: dict[str, Any] = {}
    n_all = bad_all = 0
    for task, spec in cfg.tasks.items():
        got = results.get(task)
        if not isinstance(got, dict):
            raise GeneralEvalError(
                f"eval.general.tasks.{task}: lmms-eval reported no result "
                f"for it ({results_file.name} has: "
                f"{', '.join(sorted(results)) or 'nothing'})"
            )
        metric = spec.metric or next(
            (
                k.split(",")[0]
                for k, v in got.items()
                if "," in k and "_stderr" not in k and isinstance(v, int | float)
            ),
            None,
        )
        value = got.get(f"{metric},none")
        if not isinstance(value, int | float):
            raise GeneralEvalError(
                f"eval.general.tasks.{task}: no numeric '{metric},none' in "
                f"lmms-eval's results (keys: {', '.join(sorted(got))})"
            )
        stderr = got.get(f"{metric}_stderr,none")
        samples_file = _newest(out, f"*_samples_{task}.jsonl")
        samples = (
            [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
            if samples_file
            else []
        )
        failed = [s for s in samples if _response(s).startswith(FAILED_MARKERS)]
        if failed:
            raise GeneralEvalError(
                f"eval.general.tasks.{task}: {len(failed)} of {len(samples)} request(s) "
                f"failed in lmms-eval (first: {_response(failed[0])[:200]!r}); the score "
                "would count them as wrong answers"
            )
        degenerate = sum(1 for s in samples if degenerate_reason(_response(s), finished=None))
        n = len(samples) or int(got.get("samples", 0) or 0)
        tasks[task] = {
            "metric": metric,
            "score": float(value) * spec.scale,
            "stderr": (float(stderr) * spec.scale if isinstance(stderr, int | float) else None),
            "n": n,
            "degenerate_n": degenerate,
        }
        n_all += n
        bad_all += degenerate
    scores = [t["score"] for t in tasks.values()]
    return {
        "accuracy": sum(scores) / len(scores),
        "n": n_all,
        "tasks": tasks,
        "degenerate": 100.0 * bad_all / n_all if n_all else 0.0,
        "degenerate_n": bad_all,
        "harness": "lmms-eval",
    }


# --------------------------------------------------------------------------- run
def run(
    cfg: GeneralEvalConfig,
    target: Target,
    out: Path,
    *,
    max_new_tokens: int,
    data_dir: Path,
    root: Path | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Run lmms-eval for one model into ``out`` (emptied first) and read its results.

    ``keep`` (emptied first) receives each task's per-sample log as
    ``samples_<task>.jsonl``: the part of lmms-eval's output that is the same bytes on every
    run (its results file and log carry dates, durations and paths, so they stay in
    ``out``, outside the stage's DVC output)."""
    root = (root or Path.cwd()).resolve()
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = command(cfg, target, out, max_new_tokens=max_new_tokens, root=root)
    if not Path(cmd[0]).exists() and shutil.which(cmd[0]) is None:
        raise GeneralEvalError(
            f"eval.general.command: {cfg.command} not found (`make setup` "
            "builds lmms-eval's environment in .venv-lmms)"
        )
    log.info("lmms-eval: %s on %s (%s)", ", ".join(cfg.tasks), target.model, target.base_url)
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(root / ".cache" / "lmms-eval" / "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("VIRTUAL_ENV", None)  # our venv is not lmms-eval's
    logfile = out / LOG
    with open(logfile, "wb") as fh:
        try:
            proc = subprocess.run(
                cmd,
                cwd=data_dir,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=cfg.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GeneralEvalError(
                f"lmms-eval ({', '.join(cfg.tasks)}) took longer than "
                f"eval.general.timeout_s = {cfg.timeout_s:g} s "
                f"(log: {logfile})"
            ) from None
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace")[-2000:]
        raise GeneralEvalError(
            f"lmms-eval ({', '.join(cfg.tasks)}) exited with "
            f"{proc.returncode} (log: {logfile}):\n{tail}"
        )
    result = read_results(out, cfg)
    if keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        for task in cfg.tasks:
            if (samples := _newest(out, f"*_samples_{task}.jsonl")) is not None:
                shutil.copyfile(samples, keep / f"samples_{task}.jsonl")
    return result


@contextmanager
def target_for(
    name: str, model_dir: Path | None, cfg: EvalConfig, *, log_dir: Path
) -> Iterator[Target]:
    """The served model (``eval.engine: openai``), or a loopback ``transformers serve`` of
    ``model_dir`` for as long as the block runs."""
    if cfg.engine == "openai" and name in cfg.server.models:
        yield Target(
            cfg.server.base_url,
            cfg.server.models[name],
            os.environ.get(cfg.server.api_key_env) or "EMPTY",
        )
        return
    if model_dir is None:
        raise GeneralEvalError(f"model {name}: neither served nor a model directory")

    served = serving.servable_dir(Path(model_dir)).resolve()
    try:
        proc, port, _ = serving.start_on_free_port(
            served, host="127.0.0.1", device="auto", log_dir=log_dir, log_name=f"serve-{name}.log"
        )
    except RuntimeError as exc:
        raise GeneralEvalError(f"model {name}: transformers serve did not start: {exc}") from None
    try:
        yield Target(f"http://127.0.0.1:{port}/v1", str(served))
    finally:
        serving.stop(proc)
