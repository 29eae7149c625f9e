"""Throughput of the `generate` stage on the embedded world (samples per second).

A sample is one record with its two rendered 64 px images (train, test, general and
instruct records all count).  The figure is end to end: planning, rendering, PNG
encoding, JSON writing, validation, hashing and the atomic swap.

    .venv/bin/python benchmarks/generate_throughput.py [--workers 2] [--repeat 3]

Writes ``benchmarks/results/generate_throughput.json`` (every repeat's rate, best, median).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mirage_safety.config import load_params
from mirage_safety.data.generate import generate
from mirage_safety.io import write_json_atomic

RESULTS = Path(__file__).parent / "results" / "generate_throughput.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = load_params(args.params, profile="default").data
    rates = []
    for _ in range(args.repeat):
        # every repeat starts with the previous one's ~60k images written back and deleted
        # (measured: later repeats are still slower, and so are separate processes run one
        # after another, so the slow-down is the file system's, not this process's)
        os.sync()
        # inside the repo, like the stage itself (/tmp may sit on a slower path)
        with tempfile.TemporaryDirectory(dir=".", prefix=".bench-") as tmp:
            t0 = time.perf_counter()
            manifest = generate(cfg, Path(tmp) / "data", workers=args.workers, progress=False)
            dt = time.perf_counter() - t0
        n = sum(f["count"] for f in manifest["files"].values())
        rates.append(n / dt)
        print(f"{n} samples in {dt:.2f} s -> {n / dt:,.0f} samples/s")
    result = {"samples": n, "samples_per_s": [round(r) for r in rates],
              "samples_per_s_best": round(max(rates)),
              "samples_per_s_median": round(sorted(rates)[len(rates) // 2]),
              "workers": args.workers, "cpu_count": os.cpu_count(),
              "image_size": cfg.world.image_size}
    write_json_atomic(RESULTS, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
