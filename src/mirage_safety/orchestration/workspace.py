"""The workspace a pipeline run uses: git, DVC commands and their environment, and the run's
parameters applied as a DVC experiment applies them (``HEAD`` + ``-S`` overrides)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from mirage_safety.config import ConfigError, Params, load_params
from mirage_safety.evaluation.benchmarks.registry import check_benchmarks
from mirage_safety.orchestration.lock import LOCK_RELPATH, run_logger

PARAMS_FILE = "params.yaml"


def git(repo: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip()}")
    return out.stdout.strip() if out.returncode == 0 else ""


def dvc_cmd(*args: str) -> list[str]:
    # the venv's interpreter: the worker need not have the venv activated
    return [sys.executable, "-m", "dvc", *args]


def stage_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # `mirage` and `python` of this venv
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TQDM_MININTERVAL", "30")  # progress bars: a log line per 30 s
    env.update(overrides)
    return env


def validate_exp_name(repo: Path, name: str) -> None:
    """Fail before any work if ``name`` is not a valid, unused experiment name."""
    if (
        not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name)
        or ".." in name
        or name.endswith((".lock", "."))
    ):
        raise ConfigError(
            f"exp_name {name!r}: use letters, digits, '.', '_', '-' (a git ref name component)"
        )
    head = git(repo, "rev-parse", "HEAD")
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    if git(repo, "rev-parse", "--verify", "--quiet", ref, check=False):
        raise ConfigError(
            f"DVC experiment {name!r} already exists for baseline "
            f"{head[:7]}; choose another exp_name or remove it with "
            f"`dvc exp remove {name}`"
        )


def _quote(value: str) -> str:
    if "'" in value or "\\" in value:
        raise ConfigError(f"parameter value {value!r} may not contain quotes or backslashes")
    return f"'{value}'"


def prepare_params(
    repo: Path, *, profile: str, data_seed: int | None, data_revision: str | None
) -> Params:
    """Reset ``params.yaml`` to HEAD, apply this run's overrides, return the parsed config.

    The overrides go through DVC's ``--set-param`` implementation (Hydra override
    grammar, comments preserved), so the file is what ``dvc exp run -S`` would write.
    An override that the selected profile would shadow (``profiles.<p>.data.seed``)
    is refused: it would silently not apply.
    """
    from dvc.utils.hydra import apply_overrides

    path = repo / PARAMS_FILE
    applied = repo / LOCK_RELPATH.parent / "params.yaml.applied"  # what the last run wrote
    before = path.read_text()
    committed = git(repo, "show", f"HEAD:{PARAMS_FILE}", check=False)
    if committed and before.rstrip("\n") != committed.rstrip("\n"):
        if not applied.is_file() or applied.read_text() != before:  # someone's edits
            backup = repo / LOCK_RELPATH.parent / "params.yaml.before-retrain"
            backup.write_text(before)
            run_logger().warning(
                "params.yaml had uncommitted changes; reset to HEAD (previous content saved to %s)",
                backup,
            )
        path.write_text(committed + "\n")
    try:
        overrides = [f"++profile={_quote(profile)}"]
        if data_seed is not None:
            overrides.append(f"++data.seed={int(data_seed)}")
        if data_revision:
            source = load_params(path, profile=profile).data.source
            if source == "world":
                raise ConfigError(
                    "data_revision is set but data.source is 'world' "
                    "(the embedded world has no revisions)"
                )
            overrides.append(f"++data.{source}.revision={_quote(data_revision)}")
        apply_overrides(path, overrides)
        cfg = load_params(path, profile=profile)
        check_benchmarks(cfg.eval)
        if data_seed is not None and cfg.data.seed != data_seed:
            raise ConfigError(
                f"profile {profile!r} sets data.seed itself; the data_seed "
                f"override ({data_seed}) would not apply"
            )
        if data_revision and getattr(cfg.data, cfg.data.source).revision != data_revision:
            raise ConfigError(
                f"profile {profile!r} overrides data.{cfg.data.source}."
                "revision; the data_revision override would not apply"
            )
    except Exception:
        path.write_text(before)  # leave the workspace as we found it
        raise
    applied.write_text(path.read_text())
    return cfg


def cache_false_paths(repo: Path) -> list[str]:
    """Small stage outputs kept in git rather than the DVC cache (``cache: false``)."""
    try:
        stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return []
    paths: list[str] = []
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for item in stage.get(section) or []:
                if isinstance(item, dict):
                    paths += [
                        p
                        for p, opts in item.items()
                        if isinstance(opts, dict) and opts.get("cache") is False
                    ]
    return [p for p in dict.fromkeys(paths) if (repo / p).exists()]
