"""GPU smoke test: a ~1.5B-parameter random-weight LLaVA-family VLM through 20 bf16 SFT
steps of the project's own trainer, then a served-evaluation batch.

Run it on a GPU machine (``benchmarks/gpu_smoke.sh``; under 8 minutes on one H100/H200):

* builds the model with the real classes (CLIP vision tower, LLaVA projector, a Llama
  decoder of ``--layers`` x ``--hidden``), the embedded world's tokenizer and processor, and
  saves it as a standard checkpoint;
* trains ``--steps`` steps (bf16 autocast, fp32 masters, vision tower frozen, assistant-only
  loss) on generated world data with :func:`mirage_safety.training.sft.run_sft`, and
  reports non-padding tokens/s and MFU (6 x trainable-and-frozen forward parameters x
  tokens/s over the GPU's dense bf16 peak; the vision tower's FLOPs are left out);
* serves the checkpoint with ``transformers serve --continuous-batching`` and answers
  ``--prompts`` test prompts through :class:`~mirage_safety.evaluation.engines.ServedEngine`,
  reporting prompts/s.

``--device cpu --layers 2 --hidden 256`` runs the same code path on a laptop in a minute
(that is how it was checked without a GPU).  Writes ``benchmarks/results/gpu_smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

# dense bf16 peak FLOP/s of known accelerators (vendor datasheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
RESULTS = Path(__file__).parent / "results" / "gpu_smoke.json"


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def main() -> int:
    import torch

    from mirage_safety.config import BuiltinModelConfig, SFTConfig, parse_params
    from mirage_safety.data.generate import generate
    from mirage_safety.data.image_packs import image_at
    from mirage_safety.evaluation.engines import ServedEngine
    from mirage_safety.models.loading import freeze_vision_tower
    from mirage_safety.models.serving import free_port, start, stop
    from mirage_safety.models.tiny_vlm import build_tiny_vlm, count_parameters, save_tiny_vlm
    from mirage_safety.training.sft import load_train_records, run_sft

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mirage-gpu-smoke-"))
    t0 = time.perf_counter()

    world = {
        "image_size": args.image_size,
        "n_train": 256,
        "n_test_per_split": 16,
        "n_general_train": 64,
        "n_general_test": 8,
        "n_instruct": 8,
    }
    generate(
        parse_params({"data": {"world": world}}).data, work / "data", workers=2, progress=False
    )
    rows = load_train_records(work / "data" / "mis" / "train.json")
    corpus = [t["value"].replace("<image>", " ") for r in rows for t in r.record["conversations"]]
    heads = max(1, args.hidden // 128)
    cfg = BuiltinModelConfig(
        vision_hidden=768,
        vision_layers=4,
        vision_heads=12,
        patch_size=16,
        text_hidden=args.hidden,
        text_layers=args.layers,
        text_heads=heads,
        intermediate_size=int(args.hidden * 2.75),
        vocab_size=4096,
    )
    model, processor = build_tiny_vlm(corpus, cfg, args.image_size, seed=0)
    n_params = count_parameters(model)
    ckpt = save_tiny_vlm(model, processor, work / "model")
    frozen, _ = freeze_vision_tower(model)  # the paper's set-up: vision tower frozen
    if args.device.startswith("cuda"):
        model.to(args.device)

    settings = SFTConfig(
        learning_rate=1e-5,
        batch_size=args.batch_size,
        max_steps=args.steps,
        epochs=1.0,
        warmup_ratio=0.0,
        save_steps=10**6,
        logging_steps=1,
        max_length=1024,
        seed=0,
        bf16=args.device.startswith("cuda"),
    )
    t_train = time.perf_counter()
    trainer, result = run_sft(
        model, processor, rows, settings, work / "ckpt", image_size=args.image_size, progress=False
    )
    train_s = time.perf_counter() - t_train
    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or "cpu"
    )
    peak = peak_flops(device)
    text_params = n_params - frozen
    mfu = (6 * text_params * result.tokens_per_s / peak) if peak else None
    del trainer, model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    tests = json.loads((work / "data" / "mis" / "test_hard.json").read_text())
    root = work / "data" / "mis"
    prompts = [
        (r["question"], [image_at(root, r["image_path1"]), image_at(root, r["image_path2"])])
        for r in (tests * (args.prompts // len(tests) + 1))[: args.prompts]
    ]
    port = free_port()
    proc = start(
        ckpt,
        host="127.0.0.1",
        port=port,
        device=args.device,
        log=work / "serve.log",
        extra=("--continuous-batching",),
    )
    try:
        ecfg = parse_params(
            {
                "eval": {
                    "max_new_tokens": 64,
                    "engine": "openai",
                    "server": {
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "models": {"mirage": str(ckpt)},
                        "concurrency": 32,
                    },
                }
            }
        ).eval
        engine = ServedEngine("mirage", ecfg)
        engine.answer(prompts[:4], progress=False)  # warm-up
        t_serve = time.perf_counter()
        answers = engine.answer(prompts, progress=False)
        serve_s = time.perf_counter() - t_serve
    finally:
        stop(proc, 30)
    out = {
        "device": device,
        "parameters": n_params,
        "text_parameters": text_params,
        "train": {
            "steps": result.global_step,
            "seconds": train_s,
            "tokens_per_s": result.tokens_per_s,
            "final_loss": result.final_loss,
            "mfu": mfu,
            "peak_bf16_flops": peak,
        },
        "served": {
            "prompts": len(prompts),
            "seconds": serve_s,
            "prompts_per_s": len(prompts) / serve_s,
            "errors": sum(isinstance(a, str) for a in answers),
        },
        "total_s": time.perf_counter() - t0,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
