"""Stage hand-off between checkouts through the DVC remote (``orchestration.pools``).

A stage placed on another work pool runs in another checkout, usually on another machine.
Bytes move only through the DVC remote, and DVC verifies them by hash:

1. The orchestrating run pushes the outs of the stages before it (:func:`push`).
2. The worker's checkout is set to the same commit with the run's ``params.yaml`` and
   ``dvc.lock``. It pulls what the stage depends on (:func:`pull_inputs`), reproduces the
   stage alone, and pushes its outs.
3. The worker returns its new ``dvc.lock`` entry and the stage's small ``cache: false``
   files (metrics, plots: in git, not in the DVC cache).
4. Back in the orchestrating checkout the entry is merged into ``dvc.lock``
   (:func:`merge_lock_entry`) and the outs are pulled (:func:`pull`), so the downstream
   stages and ``dvc exp save`` see exactly what the worker produced.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mirage_safety.io import write_text_atomic
from mirage_safety.orchestration.workspace import dvc_cmd, stage_env

LOCK_FILE = "dvc.lock"


class HandoffError(RuntimeError):
    """A DVC command of the hand-off failed; the message carries its output."""


def dvc(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    out = subprocess.run(
        dvc_cmd(*args),
        cwd=repo,
        env=stage_env(env or {}),
        capture_output=True,
        text=True,
        check=False,
    )
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise HandoffError(f"dvc {' '.join(args)} failed in {repo}: {text[-3000:]}")
    return text


def _remote_args(remote: str | None) -> list[str]:
    return ["--remote", remote] if remote else []


def push(
    repo: Path,
    stages: Sequence[str],
    *,
    remote: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Push the cached outs of ``stages`` (what a stage placed elsewhere depends on)."""
    if not stages:
        return ""
    return dvc(repo, "push", *_remote_args(remote), *stages, env=env)


def pull(
    repo: Path, stage: str, *, remote: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Pull ``stage``'s outs (the orchestrating checkout, after the worker pushed them)."""
    return dvc(repo, "pull", "--allow-missing", *_remote_args(remote), stage, env=env)


def _dvc_yaml(repo: Path) -> dict[str, Any]:
    return (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})


def _out_paths(stage_def: Mapping[str, Any]) -> list[str]:
    paths = []
    for section in ("outs", "metrics", "plots"):
        for item in stage_def.get(section) or []:
            paths.append(next(iter(item)) if isinstance(item, dict) else str(item))
    return paths


def inputs(repo: Path, stage: str) -> list[str]:
    """The stage's dependencies that other stages produce (paths under their outs): what a
    fresh checkout must pull before it can run the stage, and nothing more."""
    stages = _dvc_yaml(repo)
    produced = [p for name, d in stages.items() if name != stage for p in _out_paths(d)]
    deps = [str(d) for d in (stages.get(stage) or {}).get("deps") or []]
    return [d for d in deps if any(d == p or d.startswith(p.rstrip("/") + "/") for p in produced)]


def small_inputs(repo: Path, stage: str) -> dict[str, str]:
    """The stage's produced inputs kept in git, not the DVC cache (``metrics/eval.json``
    for ``register``): their text, sent along with the stage instead of through DVC."""
    small = {p for name in _dvc_yaml(repo) for p in cache_false_outs(repo, name)}
    return {
        p: (repo / p).read_text()
        for p in inputs(repo, stage)
        if p in small and (repo / p).is_file()
    }


def pull_inputs(
    repo: Path, stage: str, *, remote: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Pull the stage's produced inputs (:func:`inputs`, those in the DVC cache) and its
    own outs where the remote has them already (then ``dvc repro`` skips the stage)."""
    small = {p for name in _dvc_yaml(repo) for p in cache_false_outs(repo, name)}
    cached = [p for p in inputs(repo, stage) if p not in small]
    return dvc(repo, "pull", "--allow-missing", *_remote_args(remote), *cached, stage, env=env)


def read_lock(repo: Path) -> dict[str, Any]:
    path = repo / LOCK_FILE
    if not path.is_file():
        return {"schema": "2.0", "stages": {}}
    return yaml.safe_load(path.read_text()) or {"schema": "2.0", "stages": {}}


def lock_entry(repo: Path, stage: str) -> dict[str, Any] | None:
    return (read_lock(repo).get("stages") or {}).get(stage)


def merge_lock_entry(repo: Path, stage: str, entry: Mapping[str, Any]) -> None:
    """Replace ``stage``'s entry in ``repo``'s ``dvc.lock`` (the other stages untouched)."""
    lock = read_lock(repo)
    lock.setdefault("stages", {})[stage] = dict(entry)
    write_text_atomic(repo / LOCK_FILE, yaml.safe_dump(lock, sort_keys=False))


def cache_false_outs(repo: Path, stage: str) -> list[str]:
    """The stage's outs, metrics and plots kept in git, not in the DVC cache."""
    stages = _dvc_yaml(repo)
    out: list[str] = []
    for section in ("outs", "metrics", "plots"):
        for item in (stages.get(stage) or {}).get(section) or []:
            if isinstance(item, dict):
                out += [
                    p
                    for p, opts in item.items()
                    if isinstance(opts, dict) and opts.get("cache") is False
                ]
    return out


def upstream(stage: str, order: Sequence[str]) -> list[str]:
    """The stages before ``stage`` in the pipeline's order."""
    return list(order[: order.index(stage)])
