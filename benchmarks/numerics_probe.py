"""Which CPU numeric setting changes which bytes: base weights, MIRage weights, answers.

Runs the real stages (``mirage base``, ``train``, ``evaluate`` on the smoke profile) once
per *variant*, each a set of environment variables that makes this CPU compute the way
another CPU kind would, and compares the sha256 of what each variant wrote:

* ``ATEN_CPU_CAPABILITY`` (default / avx2 / avx512): the vector width of torch's own kernels;
* ``MKL_CBWR`` (AVX2, AVX512, COMPATIBLE): MKL's code path for every fp32 matmul;
* ``ONEDNN_MAX_CPU_ISA``: oneDNN's kernels (the vision tower's patch convolution);
* ``OMP_NUM_THREADS`` 1 vs 2: how parallel reductions split;
* ``GLIBC_TUNABLES`` / ``NPY_DISABLE_CPU_FEATURES``: libm's and numpy's own dispatch, the
  knobs ``numerics.mode: portable`` does not set, to show they do not matter.

Variants named ``native:*`` run with ``numerics.mode: native`` (the project sets nothing,
the variant's variables decide); ``portable:*`` with the default ``numerics.mode:
portable``, where the project's settings override whatever the shell says.

    .venv/bin/python benchmarks/numerics_probe.py [--variants NAME ...] [--out FILE]

Smoke data is generated, labelled and curated once in the work directory (default
``.cache/numerics-probe``); each variant then takes about a minute on two cores.  The
table goes to stdout and the JSON to ``benchmarks/results/numerics_probe.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mirage_safety.io import sha256_file, tree_hash  # noqa: E402
from mirage_safety.numerics import cpu_model  # noqa: E402

# glibc's ifunc selection as on a CPU without AVX2 / FMA / AVX-512 (exp, log, memcpy...)
OLD_GLIBC = (
    "glibc.cpu.hwcaps=-AVX2_Usable,-FMA_Usable,-AVX512F_Usable,"
    "-AVX512DQ_Usable,-AVX512BW_Usable,-AVX512VL_Usable"
)
# numpy's dispatched SIMD above its x86-64-v2 baseline
OLD_NUMPY = "X86_V3 X86_V4 AVX512_ICL"
KIND_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL",
    "GLIBC_TUNABLES": (
        "glibc.cpu.hwcaps=-AVX512F_Usable,-AVX512DQ_Usable,-AVX512BW_Usable,-AVX512VL_Usable"
    ),
}

VARIANTS: dict[str, dict[str, str]] = {
    # this CPU as it is, twice: run-to-run determinism
    "native:host": {},
    "native:host-again": {},
    "native:1-thread": {"OMP_NUM_THREADS": "1"},
    "native:aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "native:aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "native:mkl-avx2": {"MKL_CBWR": "AVX2"},
    "native:mkl-avx512": {"MKL_CBWR": "AVX512"},
    "native:mkl-compatible": {"MKL_CBWR": "COMPATIBLE,STRICT"},
    "native:onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    # an AVX2-only CPU (the AMD VM of the issue), as far as the libraries can tell
    "native:kind-avx2": KIND_AVX2,
    "portable:host": {},
    # the shell asks for this CPU's widest kernels on two threads: the project's settings win
    "portable:shell-avx512-2-threads": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_CBWR": "AVX512",
        "OMP_NUM_THREADS": "2",
    },
    # an AVX2-only CPU, with libm's and numpy's dispatch (which portable leaves alone) as on
    # a CPU without AVX2 / FMA / AVX-512 too
    "portable:kind-avx2-old-libm": {
        **KIND_AVX2,
        "GLIBC_TUNABLES": OLD_GLIBC,
        "NPY_DISABLE_CPU_FEATURES": OLD_NUMPY,
    },
}
NUMERIC_VARS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GLIBC_TUNABLES",
    "NPY_DISABLE_CPU_FEATURES",
)


def answers_hash(eval_dir: Path) -> str:
    """sha256 of the generated answers only (the response files also hold timings)."""
    h = hashlib.sha256()
    for f in sorted(eval_dir.glob("responses_*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            h.update(f"{row.get('id')}\t{row.get('split')}\t{row.get('response')}\n".encode())
    return h.hexdigest()


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NUMERIC_VARS}
    env.update(
        MIRAGE_PROFILE="smoke",
        MIRAGE_NO_TRACK="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT / "src"),
    )
    return env


def prepare(work: Path, mirage: str) -> None:
    """Smoke data (generate, label, curate) once, and one params file per mode."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for mode in ("portable", "native"):
        p = dict(params)
        p["numerics"] = {**(params.get("numerics") or {}), "mode": mode}
        (work / f"params.{mode}.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for d in ("policies", "prompts"):
        if not (work / d).exists():
            shutil.copytree(ROOT / d, work / d)
    if (work / "data" / "curated" / "train.json").is_file():
        return
    env = clean_env()
    log = work / "prepare.log"
    args = ["--params", "params.portable.yaml"]
    run([mirage, "generate", *args, "--out", "data", "--no-progress"], work, env, log)
    run([mirage, "label", *args, "--no-progress"], work, env, log)
    run([mirage, "curate", *args, "--no-progress"], work, env, log)


def probe(work: Path, mirage: str, name: str, extra: dict[str, str]) -> dict[str, object]:
    mode = name.split(":", 1)[0]
    out = work / "variants" / name.replace(":", "_")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**clean_env(), **extra}
    args = ["--params", f"params.{mode}.yaml"]
    log = out / "run.log"
    times = {
        "base_s": run(
            [
                mirage,
                "base",
                *args,
                "--data",
                "data",
                "--out",
                str(out / "base"),
                "--metrics",
                str(out / "metrics"),
                "--checkpoints",
                str(out / "ckpt_base"),
                "--no-mlflow",
                "--no-progress",
            ],
            work,
            env,
            log,
        ),
        "train_s": run(
            [
                mirage,
                "train",
                *args,
                "--data",
                "data",
                "--base",
                str(out / "base"),
                "--out",
                str(out / "mirage"),
                "--metrics",
                str(out / "metrics"),
                "--plots",
                str(out / "plots"),
                "--checkpoints",
                str(out / "ckpt_train"),
                "--no-mlflow",
                "--no-progress",
            ],
            work,
            env,
            log,
        ),
        "evaluate_s": run(
            [
                mirage,
                "evaluate",
                *args,
                "--data",
                "data",
                "--base-model",
                str(out / "base"),
                "--model",
                str(out / "mirage"),
                "--out",
                str(out / "eval"),
                "--metrics",
                str(out / "metrics" / "eval.json"),
                "--plots",
                str(out / "plots" / "eval.csv"),
                "--no-track",
                "--no-progress",
            ],
            work,
            env,
            log,
        ),
    }
    ran = json.loads((out / "metrics" / "train.json").read_text()).get("numerics", {})
    return {
        "variant": name,
        "env": extra,
        "ran": ran,
        **{k: round(v, 1) for k, v in times.items()},
        # tree: every file's name and bytes (tokenizer, config, ...); weights: the tensors
        "base_hash": tree_hash(out / "base"),
        "base_weights_hash": sha256_file(out / "base" / "model.safetensors"),
        "mirage_hash": tree_hash(out / "mirage"),
        "mirage_weights_hash": sha256_file(out / "mirage" / "model.safetensors"),
        "answers_hash": answers_hash(out / "eval"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=list(VARIANTS),
        help="variants to run (default: all)",
    )
    parser.add_argument(
        "--work",
        default=str(ROOT / ".cache" / "numerics-probe"),
        help="work directory (smoke data is made there once)",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "numerics_probe.json")
    )
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mirage = shutil.which("mirage", path=str(Path(sys.executable).parent)) or "mirage"
    prepare(work, mirage)
    rows = []
    for name in args.variants:
        row = probe(work, mirage, name, VARIANTS[name])
        rows.append(row)
        print(
            f"{name:40s} base {row['base_weights_hash'][:8]} (tree "
            f"{row['base_hash'][:8]})  mirage {row['mirage_weights_hash'][:8]} (tree "
            f"{row['mirage_hash'][:8]})  answers {row['answers_hash'][:8]}  "
            f"({row['base_s']} + {row['train_s']} + {row['evaluate_s']} s)",
            flush=True,
        )
    result = {"cpu": cpu_model(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
