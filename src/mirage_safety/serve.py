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
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from mirage_safety.models import serving
from mirage_safety.models.serving import CACHE, start, start_on_free_port
from mirage_safety.registry.weights_ref import is_reference, materialize


def servable_dir(model: str, cache: Path = CACHE) -> Path:
    """A directory ``transformers serve`` can load for ``model`` (a dir or a models:/ URI)."""
    if model.startswith("models:/"):
        import mlflow

        dest = cache / ("registry-" + hashlib.sha256(model.encode()).hexdigest()[:12])
        shutil.rmtree(dest, ignore_errors=True)
        local = Path(mlflow.artifacts.download_artifacts(model, dst_path=str(dest)))
        model_dir = local / "artifacts" / "model"
        base = local / "artifacts" / "base"
        if is_reference(model_dir):
            model_dir = materialize(model_dir)
        return serving.servable_dir(model_dir, cache, base=base if base.is_dir() else None)
    return serving.servable_dir(Path(model), cache)


def _cli(args: argparse.Namespace) -> int:
    model_dir = servable_dir(args.model)
    extra = ("--continuous-batching",) if args.continuous_batching else ()
    if args.port:  # the port asked for, or an error
        port, log = args.port, CACHE / f"serve-{args.port}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = start(
                model_dir,
                host=args.host,
                port=port,
                device=args.device,
                log=log,
                timeout_s=args.timeout,
                extra=extra,
            )
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise RuntimeError(f"{exc}\n{tail}") from None
    else:
        proc, port, log = start_on_free_port(
            model_dir,
            host=args.host,
            device=args.device,
            log_dir=CACHE,
            timeout_s=args.timeout,
            extra=extra,
            on_retry=lambda p: print(
                f"transformers serve on port {p} exited; trying another port",
                file=sys.stderr,
                flush=True,
            ),
        )
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


def add_cli(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve a model on loopback (transformers serve)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a model directory or a registry URI (models:/mirage@champion)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--device", default="auto", help="cpu, cuda:0, auto (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health")
    p.add_argument(
        "--continuous-batching",
        action="store_true",
        help="transformers serve's continuous batching (many requests in flight)",
    )
    p.set_defaults(func=_cli)
    return p
