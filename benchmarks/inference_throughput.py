"""Inference throughput: batched greedy generation vs one prompt at a time, same answers.

Both paths are the project's own (:mod:`mirage_safety.models.inference`) on the
embedded model -- ``models/base`` if it exists, else an untrained tiny VLM of the default
``BuiltinModelConfig`` -- over the same N multi-image prompts from ``data/mis`` test splits
(or a small world generated on the fly), with the same ``max_new_tokens``:

* **batched** -- :func:`generate_responses` (length-sorted, left-padded batches, KV cache);
* **one-by-one** -- :func:`generate_one` per prompt (no padding; the reference).

Reported for both: prompts/s and *useful* new tokens/s (each answer's tokens up to and
including its end-of-sequence token, counted from the generated ids, so the padding a
finished row keeps producing in a batch is not credited), the speed-up (target >= 5x on
CPU), and whether the two paths' answers are identical (they must be under greedy decoding
in float32).  A warm-up batch runs first and is not timed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/inference_throughput.py [--n 96]

Writes ``benchmarks/results/inference_throughput.json``.  About a minute on 2 cores with
the smoke-profile model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mirage_safety.io import write_json_atomic
from mirage_safety.models.inference import generate_one, generate_responses
from mirage_safety.training.sft import set_cpu_threads

RESULTS = Path(__file__).parent / "results" / "inference_throughput.json"
SPLITS = ("test_easy", "test_hard", "test_benign")


# --------------------------------------------------------------------------- inputs
def load_prompts(data: Path, n: int) -> list[tuple[str, list[Path]]]:
    """``n`` prompts taken round-robin from the test splits (so lengths and kinds mix)."""
    per_split = []
    for split in SPLITS:
        path = data / "mis" / f"{split}.json"
        if path.is_file():
            recs = json.loads(path.read_text())
            per_split.append(
                [
                    (
                        r["question"],
                        [data / "mis" / r["image_path1"], data / "mis" / r["image_path2"]],
                    )
                    for r in recs
                ]
            )
    prompts = [p for group in zip(*per_split, strict=False) for p in group]
    if len(prompts) < n:
        raise SystemExit(f"{data}: only {len(prompts)} test prompts, asked for {n}")
    return prompts[:n]


def generated_world(tmp: Path, n: int) -> Path:
    from mirage_safety.config import parse_params
    from mirage_safety.data.generate import generate

    per_split = -(-n // len(SPLITS))
    world = {
        "n_train": 8,
        "n_test_per_split": per_split,
        "n_general_train": 8,
        "n_general_test": 4,
        "n_instruct": 4,
    }
    generate(parse_params({"data": {"world": world}}).data, tmp / "data", workers=1, progress=False)
    return tmp / "data"


def load_model(model_dir: Path, data: Path) -> tuple[Any, Any, str]:
    from mirage_safety.models.loading import load_for_inference

    if (model_dir / "config.json").is_file() or (model_dir / "pin.json").is_file():
        model, processor = load_for_inference(model_dir, device="cpu")
        return model, processor, str(model_dir)
    from mirage_safety.config import BuiltinModelConfig, parse_params
    from mirage_safety.models.tiny_vlm import build_tiny_vlm

    corpus = [
        q
        for split in SPLITS
        if (data / "mis" / f"{split}.json").is_file()
        for q in (r["question"] for r in json.loads((data / "mis" / f"{split}.json").read_text()))
    ]
    image_size = parse_params({}).data.world.image_size
    model, processor = build_tiny_vlm(corpus, BuiltinModelConfig(), image_size, seed=0)
    with torch.no_grad():  # untrained: keep it from stopping at once (empty answers)
        model.get_input_embeddings().weight[processor.tokenizer.all_special_ids] = 0.0
    model.eval()
    return model, processor, "untrained default BuiltinModelConfig"


# --------------------------------------------------------------------------- counting
class TokenCounter:
    """Wraps ``model.generate`` to count useful new tokens: up to and including EOS."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.tokens = 0
        self._generate: Callable[..., Any] = model.generate
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        model.generate = self

    def __call__(self, **kwargs: Any) -> Any:
        out = self._generate(**kwargs)
        new = out[:, kwargs["input_ids"].shape[1] :].tolist()
        for row in new:
            stop = next((i for i, t in enumerate(row) if t in self.eos), None)
            self.tokens += len(row) if stop is None else stop + 1
        return out

    def take(self) -> int:
        n, self.tokens = self.tokens, 0
        return n


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/base", type=Path)
    ap.add_argument("--data", default="data", type=Path)
    ap.add_argument("--n", type=int, default=96, help="prompts (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    threads = set_cpu_threads()

    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        data = args.data
        if not all((data / "mis" / f"{s}.json").is_file() for s in SPLITS):
            data = generated_world(Path(tmp), args.n)
        prompts = load_prompts(data, args.n)
        model, processor, source = load_model(args.model, data)
        counter = TokenCounter(model)
        mnt = args.max_new_tokens

        generate_responses(
            model,
            processor,
            prompts[: args.batch_size],  # warm-up
            batch_size=args.batch_size,
            max_new_tokens=4,
            progress=False,
        )
        generate_one(model, processor, *prompts[0], max_new_tokens=4)
        counter.take()

        t0 = time.perf_counter()
        batched = generate_responses(
            model,
            processor,
            prompts,
            batch_size=args.batch_size,
            max_new_tokens=mnt,
            progress=False,
        )
        t_batched = time.perf_counter() - t0
        tok_batched = counter.take()

        t0 = time.perf_counter()
        single = [
            generate_one(model, processor, q, imgs, max_new_tokens=mnt) for q, imgs in prompts
        ]
        t_single = time.perf_counter() - t0
        tok_single = counter.take()

    mismatches = sum(a != b for a, b in zip(batched, single, strict=True))
    tok = processor.tokenizer
    prompt_lengths = [len(tok(q)["input_ids"]) for q, _ in prompts]
    result = {
        "model": source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": mnt,
        "question_tokens_mean": statistics.fmean(prompt_lengths),
        "batched_prompts_per_s": len(prompts) / t_batched,
        "batched_new_tokens_per_s": tok_batched / t_batched,
        "one_by_one_prompts_per_s": len(prompts) / t_single,
        "one_by_one_new_tokens_per_s": tok_single / t_single,
        "speedup": t_single / t_batched,
        "new_tokens": tok_single,
        "identical_outputs": mismatches == 0 and tok_batched == tok_single,
        "mismatched_outputs": mismatches,
        "batched_s": t_batched,
        "one_by_one_s": t_single,
        "device": "cpu",
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(
        f"batched (batch {args.batch_size}): {result['batched_prompts_per_s']:.2f} prompts/s, "
        f"{result['batched_new_tokens_per_s']:.0f} new tokens/s"
    )
    print(
        f"one-by-one:        {result['one_by_one_prompts_per_s']:.2f} prompts/s, "
        f"{result['one_by_one_new_tokens_per_s']:.0f} new tokens/s"
    )
    print(
        f"speed-up: {result['speedup']:.1f}x (target >= 5x); identical outputs: "
        f"{result['identical_outputs']} ({mismatches} of {len(prompts)} differ)"
    )
    write_json_atomic(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
