"""Registry by reference: a registered version holds a pointer to its weights, not a copy.

DVC owns the bytes.  For a full fine-tune of a 7B model a copy per registered version is
~16 GB; with ``registry.store: reference`` the logged pyfunc holds the config, processor
and code, and ``weights_ref.json``::

    {"repo": <git URL or path of the repo whose dvc.lock tracks the model>,
     "rev": <the commit of that dvc.lock>, "path": "models/mirage",
     "dir_md5": "<the out's md5 in dvc.lock>.dir", "remote": <the DVC remote, for humans>,
     "files": {"model.safetensors": "<md5>", ...}}

Loading the version anywhere (:func:`materialize`) fetches the listed files through DVC
(:class:`dvc.api.DVCFileSystem` at ``rev``: the repo's cache if it has them, else its DVC
remote) and checks each file's md5 against the pointer: a tampered or truncated file is a
clear :class:`~mirage_safety.models.folder.ModelDirError`, never a silently
different model.  ``registry.store: auto`` (the default) references models whose weights
exceed ``registry.reference_above_mb`` and copies smaller ones (the embedded model stays
self-contained).

Prerequisites, checked before anything is logged: the model directory is a DVC out in
``dvc.lock``, that ``dvc.lock`` is committed (the pointer names the commit), and the repo
has a DVC remote (``dvc push`` sends the bytes there; a pointer into a cache nobody else
can read would only load on this machine).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from mirage_safety.config import ConfigError, RegistryConfig
from mirage_safety.io import read_json, write_json_atomic
from mirage_safety.models.folder import ModelDirError
from mirage_safety.tracking import dvc_out_md5

REF_FILE = "weights_ref.json"
#: files a pointer replaces (the rest -- config, tokenizer, processor -- travels as is)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


class WeightsReferenceError(ConfigError):
    """A model that cannot be registered by reference (the message says what to do)."""


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and "checkpoint-" not in str(p)
    )


def weights_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in weight_files(model_dir)) / 2**20


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _md5(path: Path) -> str:
    h = hashlib.md5()  # DVC's content hash
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def make_pointer(model_dir: Path, root: Path, *, repo: str | None = None) -> dict[str, Any]:
    """The pointer for ``model_dir`` (a DVC out of the repo at ``root``); raises
    :class:`WeightsReferenceError` naming what is missing."""

    model_dir, root = model_dir.resolve(), root.resolve()
    try:
        rel = model_dir.relative_to(root).as_posix()
    except ValueError:
        raise WeightsReferenceError(f"{model_dir}: not inside the repository {root}") from None
    dir_md5 = dvc_out_md5(model_dir, root)
    if not dir_md5:
        raise WeightsReferenceError(
            f"{rel}: not a DVC out in {root / 'dvc.lock'} (registry.store "
            "reference needs the model tracked by DVC)"
        )
    rev = _git(root, "rev-parse", "HEAD")
    committed = _git(root, "show", "HEAD:dvc.lock") if rev else None
    if not rev or committed is None or dir_md5 not in committed:
        raise WeightsReferenceError(
            f"{root / 'dvc.lock'}: the entry of {rel} is not committed; "
            "commit dvc.lock (and `dvc push`) before registering by "
            "reference"
        )
    remote = _default_remote(root)
    if remote is None:
        raise WeightsReferenceError(
            f"{root}: no DVC remote configured (`dvc remote add -d ...`): "
            "a registered pointer must resolve on other machines"
        )
    files = {p.relative_to(model_dir).as_posix(): _md5(p) for p in weight_files(model_dir)}
    return {
        "repo": repo or _git(root, "config", "--get", "remote.origin.url") or str(root),
        "rev": rev,
        "path": rel,
        "dir_md5": dir_md5,
        "remote": remote,
        "files": files,
    }


def _default_remote(root: Path) -> str | None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config.get("core", {}).get("remote")
        remotes = repo.config.get("remote", {})
        if not name and len(remotes) == 1:
            name = next(iter(remotes))
        return remotes.get(name, {}).get("url") if name else None


def write_pointer(staged: Path, pointer: dict[str, Any]) -> None:
    """Drop the weights from a staged copy of the model dir and leave the pointer."""
    for rel in pointer["files"]:
        (staged / rel).unlink(missing_ok=True)
    write_json_atomic(staged / REF_FILE, pointer)


def is_reference(model_dir: Path) -> bool:
    return (Path(model_dir) / REF_FILE).is_file()


def cache_root() -> Path:
    """Where fetched weights live: ``$MIRAGE_WEIGHTS_CACHE``, else ``~/.cache/mirage/weights``
    (one directory per DVC out md5, so every version of the same weights shares it)."""
    env = os.environ.get("MIRAGE_WEIGHTS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mirage" / "weights"


def materialize(model_dir: Path) -> Path:
    """A loadable copy of a by-reference model dir: its config / processor files plus the
    weights fetched through DVC, each md5-checked, under :func:`cache_root`.  The registered
    artefact itself is never written to (a local artefact store is loaded in place)."""
    import shutil
    import tempfile

    model_dir = Path(model_dir)
    pointer = read_json(model_dir / REF_FILE)
    dest = cache_root() / str(pointer["dir_md5"]).removesuffix(".dir")
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(url=pointer["repo"], rev=pointer["rev"])
    except Exception as exc:
        raise ModelDirError(
            f"{model_dir / REF_FILE}: cannot open the DVC repo "
            f"{pointer['repo']!r} at {pointer['rev'][:12]} ({exc})"
        ) from None
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(REF_FILE))
        for rel, md5 in pointer["files"].items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{pointer['path']}/{rel}", str(target))
            except Exception as exc:
                raise ModelDirError(
                    f"{pointer['path']}/{rel}: cannot fetch it through DVC "
                    f"from {pointer['repo']!r} (remote "
                    f"{pointer.get('remote')}): {exc}"
                ) from None
            got = _md5(target)
            if got != md5:
                raise ModelDirError(
                    f"{pointer['path']}/{rel}: md5 {got} does not match the "
                    f"registered {md5}: the weights in the DVC remote "
                    f"{pointer.get('remote')} were changed; not loading them"
                )
        (tmp / ".complete").write_text(pointer["rev"])
        if dest.exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def choose_store(cfg: RegistryConfig, model_dir: Path) -> str:
    """``copy`` or ``reference`` for this model (``auto``: by the size of its weights)."""
    if cfg.store != "auto":
        return cfg.store
    return "reference" if weights_mb(model_dir) > cfg.reference_above_mb else "copy"
