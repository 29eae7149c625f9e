"""CPU numerics that do not depend on the CPU: the ``numerics`` params section.

Why: the same code, params and data gave other weights on an AMD AVX2 machine than on an
Intel AVX-512 one, because each numeric library picks its kernels by CPU, and kernels of
another vector width or another blocking sum in another order (docs/numerics.md has the
measurements: which setting changes which bytes).  In ``portable`` mode every library
involved takes its CPU-independent path:

* ATen (torch's own kernels: element-wise, softmax, norms, reductions, fused AdamW):
  ``ATEN_CPU_CAPABILITY=default``, the kernels compiled for baseline x86-64, with no
  runtime dispatch to AVX2 / AVX-512 variants;
* MKL (every fp32 matmul): conditional numerical reproducibility in its ``COMPATIBLE``
  branch, ``STRICT`` (bitwise the same whatever the thread count and alignment);
* oneDNN (the vision tower's patch convolution): capped at SSE4.1;
* threads: a fixed count (ATen splits parallel reductions by thread count).

These are read once, when each library initialises, so they must be in the environment
before ``import torch``: the ``mirage`` command applies them (:func:`apply`) right after
it parses its params, before any handler runs, and every subprocess it starts inherits
them.  An in-process call of ``cli.main`` (a test) keeps its own numerics; :func:`describe`
records what really ran, and stages put it in their metrics.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from mirage_safety.config import NumericsConfig

#: the environment of ``portable`` mode, besides the thread counts
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment(cfg: NumericsConfig) -> dict[str, str]:
    """The variables ``cfg`` sets (empty for ``native``: the process is left alone)."""
    if cfg.mode == "native":
        return {}
    return {**PORTABLE_ENV, **dict.fromkeys(THREAD_VARS, str(cfg.threads))}


def apply(cfg: NumericsConfig) -> dict[str, str]:
    """Put ``cfg``'s variables in this process's environment (and its children's); call it
    before torch loads.  Returns what was set."""
    env = environment(cfg)
    os.environ.update(env)
    return env


@cache
def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it ("Model name")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def describe() -> dict[str, Any]:
    """What this process computes with: the CPU, the kernels torch dispatches to, MKL's
    reproducibility branch, the thread count (for metrics and run tags)."""
    import torch

    portable = (
        torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        and os.environ.get("MKL_CBWR") == PORTABLE_ENV["MKL_CBWR"]
    )
    return {
        "mode": "portable" if portable else "native",
        "cpu": cpu_model(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "threads": torch.get_num_threads(),
    }
