"""The training benchmark's plot: drawn from the results JSON, a clear error without one."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module():
    path = REPO / "benchmarks" / "plot_train_throughput.py"
    spec = importlib.util.spec_from_file_location("plot_train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_reads_the_committed_results_and_orders_by_ratio(tmp_path):
    plot = _module()
    shutil.copy(REPO / "benchmarks/results/train_throughput_large.json", tmp_path)
    report = json.loads((tmp_path / "train_throughput_large.json").read_text())
    rows = plot.ratios(report)
    assert rows[-1][0] == "mirage_compiled" and ("sfttrainer", 1.0, 1.0, 1.0) in rows
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    assert all(lo <= med <= hi for _, med, lo, hi in rows)
    out = plot.plot(tmp_path, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_names_what_is_missing(tmp_path):
    plot = _module()
    with pytest.raises(FileNotFoundError, match=r"run benchmarks/train_throughput\.py"):
        plot.plot(tmp_path, tmp_path / "plot.png")
    with pytest.raises(ValueError, match="SFTTrainer contender"):
        plot.ratios({"runs": {}})
