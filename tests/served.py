"""A real ``transformers serve`` (OpenAI-compatible) on loopback for tests: started for a
saved model directory with :func:`mirage_safety.models.serving.start`, stopped afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mirage_safety.models.serving import free_port, start, stop


@contextlib.contextmanager
def serve(
    model_dir: Path, log: Path, *, port: int | None = None, timeout_s: float = 180.0
) -> Iterator[str]:
    """``transformers serve --device cpu`` for ``model_dir``; yields the ``/v1`` base URL.
    Requests must name the model by the same path."""
    port = port or free_port()
    proc = start(model_dir, host="127.0.0.1", port=port, device="cpu", log=log, timeout_s=timeout_s)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)
