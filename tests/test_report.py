"""``mirage report``: DVC experiments (workspace + saved experiments) in one markdown table
and one PNG, read from a real git + DVC repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirage_safety.cli import main as cli_main
from mirage_safety.report import cell, experiment_rows, group_seeds
from mirage_safety.summary import dvc_executable


def _eval(asr_hard: float, rr_hard: float, over_shift: float) -> dict:
    return {
        "base": {
            "test_easy": {"asr": 100.0},
            "test_hard": {"asr": 100.0},
            "general": {"accuracy": 80.0},
        },
        "mirage": {
            "test_easy": {"asr": 4.5, "n": 200},
            "test_hard": {"asr": asr_hard, "rsr": 89.0, "rr": rr_hard, "n": 200},
            "test_benign": {"over_refusal": 2.0, "n": 200},
            "test_benign_shift": {"over_refusal": over_shift},
        },
    }


def test_report_from_eval_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cot, refusal = tmp_path / "cot" / "eval.json", tmp_path / "refusal" / "eval.json"
    for path, metrics in ((cot, _eval(2.0, 0.0, 37.0)), (refusal, _eval(3.5, 96.5, 99.5))):
        path.parent.mkdir()
        path.write_text(json.dumps(metrics))
    out = tmp_path / "reports"
    assert cli_main(["report", "--out", str(out), "--metrics", str(cot), str(refusal)]) == 0
    md = (out / "experiments.md").read_text()
    # columns: labels, noise, filter, seeds, base ASR easy/hard, ASR easy/hard, RSR easy/hard,
    # RR hard, over-refusal (benign, shifted benign), general acc. (missing -> –), base
    # general acc., rule citation easy/hard, filter recall / clean kept
    tail = "| – | – | – | –"
    assert (
        "| cot | – | – | – | 1 | 100.0 | 100.0 | 4.5 | 2.0 | – | 89.0 | 0.0 | 2.0 | 37.0 "
        f"| – | 80.0 {tail} |"
    ) in md
    assert (
        "| refusal | – | – | – | 1 | 100.0 | 100.0 | 4.5 | 3.5 | – | 89.0 | 96.5 | 2.0 "
        f"| 99.5 | – | 80.0 {tail} |"
    ) in md
    assert "![experiments](experiments.png)" in md
    assert (out / "experiments.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each experiment placed by ASR against over-refusal and general accuracy
    assert "![balance](experiments_balance.png)" in md
    assert (out / "experiments_balance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote " in capsys.readouterr().out


@pytest.mark.slow
def test_experiment_rows_read_the_workspace_and_experiments_through_dvc(tmp_path: Path) -> None:
    dvc = dvc_executable()
    if dvc is None:
        pytest.skip("dvc is not installed")
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "t"],
        ["git", "config", "user.email", "t@example.com"],
        [dvc, "init", "-q"],
    ):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "profile": "default",
                "label": {"style": "refusal", "format": "prose"},
                "train": {"seed": 1},
            }
        )
    )
    # the stage stands in for evaluate: RR depends on the label style, as it does for real
    (tmp_path / "evaluate.py").write_text(
        "import json, yaml\n"
        "p = yaml.safe_load(open('params.yaml'))\n"
        "style, seed = p['label']['style'], p['train']['seed']\n"
        f"m = {_eval(3.5, 96.5, 99.5)!r}\n"
        "m['mirage']['test_hard']['rr'] = (96.5 if style == 'refusal' else 0.0) + seed\n"
        "json.dump(m, open('metrics/eval.json', 'w'))\n"
    )
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "evaluate": {
                        "cmd": f"{sys.executable} evaluate.py",
                        "deps": ["evaluate.py"],
                        "params": ["label.style", "train.seed"],
                        "metrics": [{"metrics/eval.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    (tmp_path / "metrics").mkdir()
    subprocess.run([dvc, "repro", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=tmp_path, check=True)
    for seed in (1, 2):
        subprocess.run(
            [
                dvc,
                "exp",
                "run",
                "--temp",
                "-q",
                "-n",
                f"labels-cot-s{seed}",
                "-S",
                "label.style=cot",
                "-S",
                f"train.seed={seed}",
            ],
            cwd=tmp_path,
            check=True,
        )

    rows = experiment_rows(str(tmp_path))  # a repo other than the working directory
    got = sorted(
        (r["name"], r["label_style"], r["seed"], r["metrics"]["mirage"]["test_hard"]["rr"])
        for r in rows
    )
    # --temp leaves the workspace as it was: each row has its own params and metrics
    assert got == [
        ("labels-cot-s1", "cot", 1, 1.0),
        ("labels-cot-s2", "cot", 2, 2.0),
        ("workspace", "refusal", 1, 97.5),
    ]
    assert sorted(r["name"] for r in experiment_rows(str(tmp_path), include_workspace=False)) == [
        "labels-cot-s1",
        "labels-cot-s2",
    ]
    # the two seeds of one configuration are one row: mean [min–max]
    grouped = {r["name"]: r for r in group_seeds(rows)}
    assert sorted(grouped) == ["labels-cot", "workspace"]
    assert len(grouped["labels-cot"]["members"]) == 2
    assert cell(grouped["labels-cot"], "mirage.test_hard.rr") == "1.5 [1.0–2.0]"
    assert cell(grouped["workspace"], "mirage.test_hard.rr") == "97.5"
