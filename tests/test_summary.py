"""``mirage summary``: metrics (dvc metrics show or the JSON files), the MLflow UI command
and the champion, read from a real SQLite registry."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from mirage_safety.cli import main as cli_main
from mirage_safety.summary import dvc_executable
from registry_fixtures import clean_env, fresh_store, reset_mlflow


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "tracking": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mirage"},
                "registry": {"model_name": "mirage"},
            }
        )
    )
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval.json").write_text(
        json.dumps(
            {
                "mirage": {"test_hard": {"asr": 1.25, "n": 28}, "general": {"accuracy": 61.5}},
                "judges": {"primary": "world"},
            }
        )
    )
    (metrics / "registry.json").write_text(
        json.dumps(
            {
                "version": 2,
                "decision": "reject",
                "alias": "challenger",
                "reasons": ["not promoted: worse than the champion v1 on test_hard ASR"],
            }
        )
    )
    yield tmp_path
    reset_mlflow()


def _summary(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert cli_main(["summary", *extra]) == 0
    return capsys.readouterr().out


def _registry_with_champion(tmp_path: Path, factory: pytest.TempPathFactory) -> None:
    uri = fresh_store(factory, tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("mirage")
    source = tmp_path / "mlruns" / "m"
    source.mkdir(parents=True)
    for _ in range(2):
        client.create_model_version("mirage", str(source))
    client.set_registered_model_alias("mirage", "champion", "1")
    client.set_model_version_tag("mirage", "1", "champion.how", "gate")
    client.set_registered_model_alias("mirage", "challenger", "2")


def test_summary_headline_table(project, capsys):
    (project / "metrics" / "eval.json").write_text(
        json.dumps(
            {
                "base": {
                    "test_easy": {"asr": 100.0},
                    "test_hard": {"asr": 98.5, "rsr": 0.0},
                    "general": {"accuracy": 80.25},
                },
                "mirage": {
                    "test_easy": {"asr": 2.0},
                    "test_hard": {"asr": 1.25, "rsr": 91.0},
                    "test_benign": {"over_refusal": 3.5},
                    "test_benign_shift": {"over_refusal": 37.0},
                    "general": {"accuracy": 79.0},
                },
                "judges": {"primary": "world"},
            }
        )
    )
    (project / "metrics" / "base.json").write_text(
        json.dumps({"general_accuracy_per_task": {"same": 85.0, "which": 55.5}})
    )
    (project / "metrics" / "train.json").write_text(
        json.dumps(
            {
                "numerics": {
                    "mode": "portable",
                    "cpu": "AMD EPYC",
                    "aten_capability": "DEFAULT",
                    "mkl_cbwr": "COMPATIBLE,STRICT",
                    "threads": 2,
                }
            }
        )
    )
    out = _summary(capsys)
    assert (
        "computed on: AMD EPYC, numerics portable (ATen DEFAULT, MKL COMPATIBLE,STRICT, 2 threads)"
    ) in out
    assert "== Results (metrics/eval.json, rates in %)" in out
    header = next(line for line in out.splitlines() if "ASR easy" in line)
    assert header.split() == [
        "model",
        "ASR",
        "easy",
        "ASR",
        "hard",
        "RSR",
        "hard",
        "RR",
        "hard",
        "HR",
        "hard",
        "over-refusal",
        "over-ref.",
        "shifted",
        "general",
        "acc.",
    ]
    assert re.search(r"\n  base +100\.0 +98\.5 +0\.0 +- +- +- +- +80\.2\n", out)
    assert re.search(r"\n  mirage +2\.0 +1\.2 +91\.0 +- +- +3\.5 +37\.0 +79\.0\n", out)
    assert "base general accuracy per task: same 85.0, which 55.5" in out
    assert "judge: world" in out
    assert "every metric: `dvc metrics show`" in out
    assert "mirage.test_hard.asr" not in out  # the flat list is for --all only


def test_summary_marks_rates_the_judge_could_not_score(project, capsys):
    (project / "metrics" / "eval.json").write_text(
        json.dumps(
            {
                "mirage": {
                    "test_easy": {"asr": 0.0, "judged_share": 0.0},
                    "test_hard": {"asr": 0.0, "rsr": 96.0, "judged_share": 99.0},
                    "general": {"accuracy": 79.0},
                },
                "min_judged_share": 95.0,
                "judges": {"primary": "openai"},
            }
        )
    )
    out = _summary(capsys)
    assert re.search(r"\n  mirage +n/a +0\.0 +96\.0 ", out)
    assert "n/a: mirage test_easy: judged 0% < 95% (judge errors; see eval/report.md)" in out


def test_summary_without_an_evaluation(project, capsys):
    (project / "metrics" / "eval.json").unlink()
    assert "no evaluation yet (run `dvc repro`)" in _summary(capsys)


@pytest.mark.slow
def test_summary_from_files_with_a_champion(project, capsys, tmp_path_factory):
    _registry_with_champion(project, tmp_path_factory)
    out = _summary(capsys, "--all", "--no-dvc")
    assert "== Metrics (metrics/*.json)" in out
    assert "\nmetrics/eval.json\n" in out
    assert re.search(r"\n  mirage\.test_hard\.asr +1\.25\n", out)
    assert re.search(r"\n  mirage\.general\.accuracy +61\.5\n", out)
    assert re.search(r"\n  version +2\n", out)  # metrics/registry.json
    assert "primary" not in out  # strings are not metrics
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out
    assert "champion: mirage version 1  (models:/mirage@champion; became champion by gate)" in out
    assert "challenger: version 2" in out
    assert "last registration: version 2 -> reject (@challenger): not promoted" in out


def test_summary_without_store_or_champion(project, capsys, tmp_path_factory):
    out = _summary(capsys, "--no-dvc")
    assert "the MLflow store" in out and "does not exist yet" in out
    assert not (project / "mlflow.db").exists()  # reporting never creates a store

    fresh_store(tmp_path_factory, project / "mlflow.db")
    out = _summary(capsys, "--no-dvc")
    assert "no champion yet for registered model 'mirage'" in out


@pytest.mark.slow
def test_summary_runs_dvc_metrics_show(project, capsys):
    dvc = dvc_executable()
    if dvc is None:
        pytest.skip("dvc is not installed")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=project, check=True)
    (project / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "evaluate": {
                        "cmd": "true",
                        "metrics": [{"metrics/eval.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    out = _summary(capsys, "--all")
    assert "== Metrics (dvc metrics show)" in out
    assert "metrics/eval.json" in out and "1.25" in out and "61.5" in out


def test_summary_with_an_unreachable_server(project, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    out = _summary(capsys, "--no-dvc")
    assert f"open http://127.0.0.1:{port} in a browser" in out
    assert "champion unknown: cannot read the registry" in out
