"""Served vs in-process evaluation: the same N prompts answered by ``mirage evaluate``'s two
engines, on the trained embedded model (``models/mirage``, else ``models/base``).

* **in-process** -- :class:`mirage_safety.evaluation.engines.HFEngine` (batched greedy
  generation, ``--batch-size``);
* **served** -- :class:`~mirage_safety.evaluation.engines.ServedEngine` against a real
  ``transformers serve --continuous-batching`` on loopback (``--concurrency`` requests in
  flight), the path a vLLM server takes on GPUs.

Reported: prompts/s of each (median of ``--repeat`` runs, a warm-up first), the ratio, and
how many answers are identical (greedy decoding: all of them should be).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/served_inference.py [--n 200]

Writes ``benchmarks/results/served_inference.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from mirage_safety.config import parse_params
from mirage_safety.data.image_packs import image_at
from mirage_safety.evaluation.engines import HFEngine, ServedEngine
from mirage_safety.io import write_json_atomic
from mirage_safety.models.serving import free_port, start, stop

RESULTS = Path(__file__).parent / "results" / "served_inference.json"
SPLITS = ("test_easy", "test_hard", "test_benign", "test_benign_shift")


def load_prompts(data: Path, n: int) -> list[tuple[str, list]]:
    per_split = [json.loads((data / "mis" / f"{s}.json").read_text()) for s in SPLITS]
    out = []
    for i in range(n):
        recs = per_split[i % len(per_split)]
        rec = recs[(i // len(per_split)) % len(recs)]
        root = data / "mis"
        out.append(
            (
                rec["question"],
                [image_at(root, rec["image_path1"]), image_at(root, rec["image_path2"])],
            )
        )
    return out


def timed(fn, repeat: int) -> tuple[float, list]:
    times, answers = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        answers = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), answers


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="data")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    model = Path(
        args.model or ("models/mirage" if Path("models/mirage").is_dir() else "models/base")
    )
    prompts = load_prompts(Path(args.data), args.n)
    log = Path(".cache/serve/bench.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cfg = parse_params(
        {
            "eval": {
                "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens,
                "engine": "openai",
                "server": {
                    "base_url": url,
                    "models": {"mirage": str(model)},
                    "concurrency": args.concurrency,
                },
            }
        }
    ).eval
    hf = HFEngine(model, cfg)
    hf.answer(prompts[: args.batch_size], progress=False)  # warm-up: load + first batch
    hf_s, hf_out = timed(lambda: hf.answer(prompts, progress=False), args.repeat)
    proc = start(
        model, host="127.0.0.1", port=port, device="cpu", log=log, extra=("--continuous-batching",)
    )
    try:
        served = ServedEngine("mirage", cfg)
        served.answer(prompts[: args.concurrency], progress=False)  # warm-up
        sv_s, sv_out = timed(lambda: served.answer(prompts, progress=False), args.repeat)
    finally:
        stop(proc, 30)
    same = sum(
        1
        for a, b in zip(hf_out, sv_out, strict=True)
        if not isinstance(b, str) and a.text == b.text
    )
    result = {
        "n": args.n,
        "model": str(model),
        "max_new_tokens": args.max_new_tokens,
        "in_process": {
            "batch_size": args.batch_size,
            "seconds": hf_s,
            "prompts_per_s": args.n / hf_s,
        },
        "served": {
            "server": "transformers serve",
            "concurrency": args.concurrency,
            "seconds": sv_s,
            "prompts_per_s": args.n / sv_s,
            "errors": sum(isinstance(b, str) for b in sv_out),
        },
        "served_vs_in_process": hf_s / sv_s,
        "identical_answers": same,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(RESULTS, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
