"""Throw-away git repos for end-to-end tests: a copy of this working tree, committed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


def git_init(repo: Path) -> None:
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def copy_worktree(src: Path, dst: Path) -> Path:
    """Tracked + untracked-not-ignored files of ``src`` into a fresh git repo ``dst``."""
    listing = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=src,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listing):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    git_init(dst)
    commit(dst, "copy of the working tree")
    return dst
