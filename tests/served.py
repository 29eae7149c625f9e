"""A real ``transformers serve`` (OpenAI-compatible) on loopback for tests: started for a
saved model directory, health-checked, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transformers_cli() -> str:
    found = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    return found


@contextlib.contextmanager
def serve(model_dir: Path, log: Path, *, timeout_s: float = 180.0) -> Iterator[str]:
    """``transformers serve --device cpu`` for ``model_dir``; yields the ``/v1`` base URL.
    Requests must name the model by the same path."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([transformers_cli(), "serve", "--device", "cpu", "--host",
                                 "127.0.0.1", "--port", str(port), str(model_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited {proc.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve not healthy after {timeout_s}s:\n"
                                       f"{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
