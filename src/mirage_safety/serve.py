"""``mirage serve``: the model under test behind an OpenAI-compatible server on loopback.

    mirage serve models/mirage                  # a trained model directory
    mirage serve models:/mirage@champion        # a registered version (downloaded)

starts ``transformers serve`` (``/v1/chat/completions``, images as ``image_url`` data URLs)
for the model, waits until ``/health`` answers, prints the base URL and the model id to
put in ``eval.server`` (``base_url``, ``models.mirage``), and keeps serving until
interrupted.  A LoRA model directory (``mirage_model.json`` says ``method: lora``) is
merged into its base first and saved under ``.cache/serve/``, since the server loads
plain checkpoints; a Hub pin directory (``pin.json``) is served from the Hub cache at its
pinned commit.  On GPUs serve the same directory with vLLM instead::

    vllm serve models/mirage --served-model-name mirage --limit-mm-per-prompt '{"image": 2}'
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CACHE = Path(".cache") / "serve"


def transformers_cli() -> str:
    found = shutil.which("transformers")
    return found or str(Path(sys.executable).with_name("transformers"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def servable_dir(model: str, cache: Path = CACHE) -> Path:
    """A directory ``transformers serve`` can load for ``model`` (a dir or a models:/ URI)."""
    from mirage_safety.models.loading import PIN_FILE
    from mirage_safety.registry.pyfunc_model import ModelDirError, read_model_meta

    if model.startswith("models:/"):
        import mlflow

        dest = cache / ("registry-" + hashlib.sha256(model.encode()).hexdigest()[:12])
        shutil.rmtree(dest, ignore_errors=True)
        local = Path(mlflow.artifacts.download_artifacts(model, dst_path=str(dest)))
        model_dir = local / "artifacts" / "model"
        base = local / "artifacts" / "base"
        from mirage_safety.registry.weights_ref import is_reference, materialize

        if is_reference(model_dir):
            model_dir = materialize(model_dir)
        return _merged(model_dir, base if base.is_dir() else None, cache)
    path = Path(model)
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    pin = path / PIN_FILE
    if pin.is_file():  # a Hub pin: the snapshot of the pinned commit in the Hub cache
        from huggingface_hub import snapshot_download

        from mirage_safety.io import read_json

        p = read_json(pin)
        return Path(snapshot_download(p["model_id"], revision=p["commit"],
                                      local_files_only=True))
    meta = read_model_meta(path)
    if meta is not None and meta["method"] == "lora":
        return _merged(path, None, cache)
    return path


def _merged(model_dir: Path, base: Path | None, cache: Path) -> Path:
    from mirage_safety.registry.pyfunc_model import load_model_dir, read_model_meta

    meta = read_model_meta(model_dir)
    if meta is None or meta["method"] != "lora":
        return model_dir
    digest = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    out = cache / f"merged-{digest}"
    model, processor = load_model_dir(model_dir, base, device="cpu")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def start(model_dir: Path, *, host: str, port: int, device: str, log: Path | None,
          timeout_s: float = 180.0, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """``transformers serve`` for ``model_dir`` (``extra``: more of its options, e.g.
    ``--continuous-batching``); returns once ``/health`` answers."""
    cmd = [transformers_cli(), "serve", "--device", device, "--host", host, "--port",
           str(port), *extra, str(model_dir)]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - child keeps it
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"})
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited {proc.returncode}"
                               + (f" (log: {log})" if log else ""))
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(f"transformers serve not healthy after {timeout_s:.0f}s"
                                   + (f" (log: {log})" if log else "")) from None
            time.sleep(0.5)


def start_on_free_port(model_dir: Path, *, host: str, device: str, log_dir: Path,
                       log_name: str | None = None, timeout_s: float = 180.0,
                       extra: tuple[str, ...] = (), on_retry: Any = None
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
            return start(model_dir, host=host, port=port, device=device, log=log,
                         timeout_s=timeout_s, extra=extra), port, log
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


def _cli(args: argparse.Namespace) -> int:
    model_dir = servable_dir(args.model)
    extra = ("--continuous-batching",) if args.continuous_batching else ()
    if args.port:  # the port asked for, or an error
        port, log = args.port, CACHE / f"serve-{args.port}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = start(model_dir, host=args.host, port=port, device=args.device, log=log,
                         timeout_s=args.timeout, extra=extra)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise RuntimeError(f"{exc}\n{tail}") from None
    else:
        proc, port, log = start_on_free_port(
            model_dir, host=args.host, device=args.device, log_dir=CACHE,
            timeout_s=args.timeout, extra=extra,
            on_retry=lambda p: print(f"transformers serve on port {p} exited; trying "
                                     "another port", file=sys.stderr, flush=True))
    url = f"http://{args.host}:{port}/v1"
    print(f"serving {args.model} at {url}", flush=True)
    print(f"  eval.server: {{base_url: {url}, models: {{mirage: {model_dir}}}}}", flush=True)
    print(f"  log: {log}; Ctrl-C stops it", flush=True)

    def stop(*_: Any) -> None:
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc, 30)
        return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model on loopback (transformers serve)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model directory or a registry URI (models:/mirage@champion)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--device", default="auto", help="cpu, cuda:0, auto (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health")
    p.add_argument("--continuous-batching", action="store_true",
                   help="transformers serve's continuous batching (many requests in flight)")
    p.set_defaults(func=_cli)
