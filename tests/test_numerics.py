"""numerics.mode: portable gives the same bytes whatever the shell or the CPU kind asks for;
native follows them (which is why portable exists)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mirage_safety import cli, numerics
from mirage_safety.config import ConfigError, NumericsConfig, parse_params

# a few training steps through every kind of kernel the tiny VLM uses: oneDNN convolution,
# MKL matmuls, ATen's softmax / layer norm / GELU / reductions, fused AdamW
KERNELS = textwrap.dedent("""
    import hashlib, sys
    from mirage_safety import numerics
    from mirage_safety.config import load_params
    numerics.apply(load_params(sys.argv[1]).numerics)  # as `mirage` does before torch loads
    import torch
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 32, 8, stride=8)
    enc = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    head = torch.nn.Linear(32, 50)
    params = [*conv.parameters(), *enc.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-2, fused=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = torch.rand(16, 3, 32, 32, generator=g)
        y = torch.randint(0, 50, (16,), generator=g)
        h = conv(x).flatten(2).transpose(1, 2)
        loss = torch.nn.functional.cross_entropy(head(enc(h).mean(1)), y)
        opt.zero_grad(); loss.backward(); opt.step()
    md5 = hashlib.md5(b"".join(p.detach().numpy().tobytes() for p in params)).hexdigest()
    d = numerics.describe()
    print(d["mode"], d["aten_capability"], d["threads"], md5)
""")
SHELL_VARS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def _params(tmp_path: Path, mode: str) -> Path:
    p = tmp_path / f"params.{mode}.yaml"
    p.write_text(yaml.safe_dump({"numerics": {"mode": mode, "threads": 1}}))
    return p


def _train(params: Path, shell: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in SHELL_VARS}
    env.update(shell)
    out = subprocess.run(
        [sys.executable, "-c", KERNELS, str(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()


def _best_capability() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in SHELL_VARS},
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def kinds() -> tuple[dict[str, str], dict[str, str]]:
    """Two CPU kinds as far as the libraries can tell: this CPU's widest kernels on two
    threads, and the baseline kernels on MKL's AVX2 path and one thread."""
    best = _best_capability()
    if best == "DEFAULT":
        pytest.skip("this CPU has no vector ISA above the baseline to emulate another kind")
    return (
        {"ATEN_CPU_CAPABILITY": best.lower(), "OMP_NUM_THREADS": "2"},
        {
            "ATEN_CPU_CAPABILITY": "default",
            "MKL_CBWR": "AVX2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "OMP_NUM_THREADS": "1",
        },
    )


@pytest.mark.slow
def test_native_numerics_follow_the_cpu_kind(tmp_path, kinds):
    # the problem portable mode solves: another kind of CPU, other weights
    a, b = (_train(_params(tmp_path, "native"), k) for k in kinds)
    assert a[0] == b[0] == "native"
    assert a[1] != b[1]
    assert a[3] != b[3]


@pytest.mark.slow
def test_portable_numerics_are_the_same_bytes_on_every_kind(tmp_path, kinds):
    params = _params(tmp_path, "portable")
    a, b = (_train(params, k) for k in kinds)
    assert a == b
    assert a[:3] == ["portable", "DEFAULT", "1"]


def test_portable_environment_and_native_leaves_the_process_alone():
    env = numerics.environment(NumericsConfig(mode="portable", threads=3))
    assert env["ATEN_CPU_CAPABILITY"] == "default"
    assert env["MKL_CBWR"] == "COMPATIBLE,STRICT"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert numerics.environment(NumericsConfig(mode="native")) == {}
    assert parse_params({}).numerics.mode == "portable"


def test_a_params_file_that_does_not_load_stops_the_command_before_numerics(
    tmp_path, monkeypatch, capsys
):
    for var in SHELL_VARS:
        monkeypatch.delenv(var, raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("numerics: {mode: fastest}\n")
    assert cli.main(["train", "--params", str(bad)], set_numerics=True) == 2
    assert "numerics.mode" in capsys.readouterr().err
    assert cli.main(["train", "--params", str(tmp_path / "missing.yaml")], set_numerics=True) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert "ATEN_CPU_CAPABILITY" not in os.environ
    with pytest.raises(ConfigError, match=r"numerics\.mode"):
        parse_params(yaml.safe_load(bad.read_text()))
