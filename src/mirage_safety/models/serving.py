"""A model folder behind ``transformers serve`` on loopback: start it on a (free) port, wait
for ``/health``, stop it.  Used by ``mirage serve``, by the general-capability evaluation
(lmms-eval against a loopback server of each model) and by the tests; a LoRA directory is
merged into its base first and a Hub pin is served from the Hub cache, since the server
loads plain checkpoints."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from mirage_safety.models.folder import ModelDirError, read_model_meta, read_pin
from mirage_safety.models.loading import load_for_inference

CACHE = Path(".cache") / "serve"


def transformers_cli() -> str:
    found = shutil.which("transformers")
    return found or str(Path(sys.executable).with_name("transformers"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def servable_dir(path: Path, cache: Path = CACHE, *, base: Path | None = None) -> Path:
    """A directory ``transformers serve`` can load for the model folder ``path``: itself, a
    Hub pin's snapshot in the Hub cache, or a LoRA adapter merged into its base (``base``:
    the base packaged next to it, else the one its metadata names) under ``cache``."""
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    pin = read_pin(path)
    if pin is not None:  # a Hub pin: the snapshot of the pinned commit in the Hub cache
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(pin["model_id"], revision=pin["commit"], local_files_only=True)
        )
    meta = read_model_meta(path)
    if meta is None or meta["method"] != "lora":
        return path

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    out = cache / f"merged-{digest}"
    model, processor = load_for_inference(path, base_dir=base, device="cpu")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def start(
    model_dir: Path,
    *,
    host: str,
    port: int,
    device: str,
    log: Path | None,
    timeout_s: float = 180.0,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """``transformers serve`` for ``model_dir`` (``extra``: more of its options, e.g.
    ``--continuous-batching``); returns once ``/health`` answers."""
    cmd = [
        transformers_cli(),
        "serve",
        "--device",
        device,
        "--host",
        host,
        "--port",
        str(port),
        *extra,
        str(model_dir),
    ]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - child keeps it
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"},
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"transformers serve exited {proc.returncode}" + (f" (log: {log})" if log else "")
            )
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(
                    f"transformers serve not healthy after {timeout_s:.0f}s"
                    + (f" (log: {log})" if log else "")
                ) from None
            time.sleep(0.5)


def start_on_free_port(
    model_dir: Path,
    *,
    host: str,
    device: str,
    log_dir: Path,
    log_name: str | None = None,
    timeout_s: float = 180.0,
    extra: tuple[str, ...] = (),
    on_retry: Any = None,
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """:func:`start` on a free port: ``(process, port, its log)``, the log
    ``log_dir/<log_name>`` (default ``serve-<port>.log``).  A free port can be
    taken by another process before the server binds it, so a server that exits at once
    is started again on another port (three tries); any other failure is raised with the
    log's tail."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port(host)
        log = log_dir / (log_name or f"serve-{port}.log")
        try:
            return (
                start(
                    model_dir,
                    host=host,
                    port=port,
                    device=device,
                    log=log,
                    timeout_s=timeout_s,
                    extra=extra,
                ),
                port,
                log,
            )
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            if attempt == 2 or "exited" not in str(exc):
                raise RuntimeError(f"{exc}\n{tail}") from None
            if on_retry is not None:
                on_retry(port)
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen[Any], timeout_s: float = 20.0) -> None:
    """Terminate a server process, killing it if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
