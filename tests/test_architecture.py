"""The pipeline's code dependencies, as DVC sees them.

* every project module a stage imports (directly, transitively, at module level or inside a
  function) is one of that stage's ``deps`` in ``dvc.yaml``, so editing it marks the stage
  changed;
* changing a default in ``config.py`` (a setting ``params.yaml`` leaves out) makes
  ``dvc status`` report every stage changed;
* the paths a stage's command reads and writes by default (``mirage_safety.paths``) are
  that stage's ``deps`` and ``outs`` in ``dvc.yaml``.

(The import layers themselves are checked by ``lint-imports`` in ``make test``.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))

#: the module each stage's command runs (``mirage <stage>`` -> its handler's module)
STAGE_ENTRY = {
    "generate": "mirage_safety.data.generate",
    "label": "mirage_safety.labelling.label",
    "curate": "mirage_safety.labelling.curate",
    "base": "mirage_safety.training.base",
    "train": "mirage_safety.training.train",
    "evaluate": "mirage_safety.evaluation.evaluate",
    "register": "mirage_safety.registry.register",
}


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _source_file(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    return Path(spec.origin).resolve().relative_to(REPO).as_posix()


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_command_is_in_the_entry_table() -> None:
    commands = {name: stage["cmd"].split()[1] for name, stage in _stages().items()}
    assert commands == {name: name for name in STAGE_ENTRY}


#: a stage command's path options: what it reads, and what it writes
_READS = ("data", "base", "base_model", "model", "eval_path", "model_dir")
_WRITES = ("out", "metrics", "plots")


def _declared(entry: dict, key: str) -> list[str]:
    return [next(iter(x)) if isinstance(x, dict) else x for x in entry.get(key) or []]


def _within(path: str, declared: list[str]) -> bool:
    """``path`` is declared, or is a folder holding something declared (``data`` for
    ``data/mis``)."""
    return any(d == path or d.startswith(path.rstrip("/") + "/") for d in declared)


def test_stage_paths_are_the_dvc_yaml_deps_and_outs() -> None:
    from mirage_safety import cli, paths

    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    layout = {v for k, v in vars(paths).items() if k.isupper()}
    for name, entry in _stages().items():
        command = commands[name]
        outs = [*_declared(entry, "outs"), *_declared(entry, "metrics"), *_declared(entry, "plots")]
        for options, declared, what in (
            (_WRITES, outs, "outs/metrics/plots"),
            (_READS, _declared(entry, "deps"), "deps"),
        ):
            for option in options:
                default = command.get_default(option)
                if default is None:
                    continue
                assert default in layout, f"mirage {name} --{option}: {default!r} not in paths"
                assert _within(default, declared), (
                    f"mirage {name} --{option} defaults to {default!r}, which is not among the "
                    f"stage's {what} in dvc.yaml: {declared}"
                )


def test_stage_code_deps_cover_every_module_the_stage_imports() -> None:
    graph = grimp.build_graph("mirage_safety", cache_dir=None)
    stages = _stages()
    missing = {}
    for stage, entry in STAGE_ENTRY.items():
        deps = [d for d in stages[stage].get("deps", []) if isinstance(d, str)]
        files = {_source_file(m) for m in graph.find_upstream_modules(entry) | {entry}}
        if gaps := sorted(f for f in files if not _covered(f, deps)):
            missing[stage] = gaps
    assert not missing, f"modules imported by a stage but not in its dvc.yaml deps: {missing}"


def _status(repo: Path) -> dict[str, set[str]]:
    """``{stage: changed deps}`` from ``dvc status`` (``"always changed"`` for such a
    stage)."""
    out = subprocess.run(
        [DVC, "status", "--json"], cwd=repo, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    changed: dict[str, set[str]] = {}
    for stage, entries in json.loads(out or "{}").items():
        for entry in entries:
            if isinstance(entry, dict):
                changed.setdefault(stage, set()).update(entry.get("changed deps", {}))
            else:
                changed.setdefault(stage, set()).add(str(entry))
    return changed


@pytest.mark.slow
def test_changing_a_code_default_marks_every_stage_changed(tmp_path) -> None:
    repo = tmp_path / "repo"
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    config = "src/mirage_safety/config.py"
    stages = _stages()
    # the dep entry (the file, or a folder above it) through which each stage sees config.py
    through = {}
    for stage in STAGE_ENTRY:
        entries = [
            d for d in stages[stage].get("deps", []) if isinstance(d, str) and _covered(config, [d])
        ]
        assert entries, f"stage {stage}: config.py is not among its deps"
        through[stage] = entries[0]
    # the copy's dvc.lock records config.py as it is now, so the edit below is the only
    # change to it DVC can see (a lock left behind by a code change would hide it)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    digest = hashlib.md5((repo / config).read_bytes()).hexdigest()
    for entry in lock["stages"].values():
        for dep in entry.get("deps", []):
            if dep["path"] == config:
                dep["md5"] = digest
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    before = _status(repo)
    text = (repo / config).read_text()
    old = "    batch_size: int = Field(16, ge=1)"  # TrainConfig.batch_size, not in params.yaml
    assert old in text
    (repo / config).write_text(text.replace(old, "    batch_size: int = Field(8, ge=1)"))
    after = _status(repo)
    for stage, dep in through.items():
        if stages[stage].get("always_changed"):
            assert "always changed" in after.get(stage, set()), (stage, after)
            continue
        assert dep not in before.get(stage, set()), (stage, dep, before)
        assert dep in after.get(stage, set()), (stage, dep, after)
