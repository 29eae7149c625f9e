"""Throughput of the `generate` stage on the embedded world (samples per second).

A sample is one record with its two rendered 64 px images (train, test, general and
instruct records all count).  The figure is end to end: planning, rendering, PNG
encoding, JSON writing, validation, hashing and the atomic swap.

    .venv/bin/python benchmarks/generate_throughput.py [--workers 2] [--repeat 3]

Writes ``benchmarks/results/generate_throughput.json`` (every repeat's rate, best, median,
and the CPU time split into user and kernel time: creating ~60k small files costs the kernel
0.1-0.5 ms each on some machines, and that, not our code, is what varies between repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from mirage_safety.config import load_params
from mirage_safety.data.generate import generate
from mirage_safety.io import write_json_atomic

RESULTS = Path(__file__).parent / "results" / "generate_throughput.json"


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and its finished children (the pool)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = load_params(args.params, profile="default").data
    rates, user, system = [], [], []
    for _ in range(args.repeat):
        # every repeat starts with the previous one's ~60k images written back and deleted
        # (measured: later repeats are still slower, and so are separate processes run one
        # after another, so the slow-down is the file system's, not this process's)
        os.sync()
        # inside the repo, like the stage itself (/tmp may sit on a slower path)
        with tempfile.TemporaryDirectory(dir=".", prefix=".bench-") as tmp:
            (u0, s0), t0 = cpu_times(), time.perf_counter()
            manifest = generate(cfg, Path(tmp) / "data", workers=args.workers, progress=False)
            dt, (u1, s1) = time.perf_counter() - t0, cpu_times()
        n = sum(f["count"] for f in manifest["files"].values())
        rates.append(n / dt)
        user.append(u1 - u0)
        system.append(s1 - s0)
        print(
            f"{n} samples in {dt:.2f} s -> {n / dt:,.0f} samples/s "
            f"(CPU: user {u1 - u0:.1f} s, kernel {s1 - s0:.1f} s)"
        )
    result = {
        "samples": n,
        "samples_per_s": [round(r) for r in rates],
        "samples_per_s_best": round(max(rates)),
        "samples_per_s_median": round(sorted(rates)[len(rates) // 2]),
        "cpu_user_s": [round(u, 1) for u in user],
        "cpu_kernel_s": [round(k, 1) for k in system],
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "image_size": cfg.world.image_size,
    }
    write_json_atomic(RESULTS, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
