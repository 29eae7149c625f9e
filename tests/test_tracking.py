"""Stage tracking: parent/child runs, lineage tags, URI resolution -- against a SQLite
store in tmp_path, and against a real ``mlflow server`` started on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from mirage_safety.config import TrackingConfig
from mirage_safety.registry.pyfunc_model import encode_image
from mirage_safety.registry.register import register
from mirage_safety.tracking import (
    HF_LOG_ARTIFACTS_ENV,
    PARENT_RUN_ENV,
    dvc_invocation_key,
    pipeline_run,
    repo_root,
    resolve_tracking_uri,
    stage_run,
    workspace_root,
)
from registry_fixtures import (
    clean_env,
    eval_json,
    fresh_store,
    make_params,
    reset_mlflow,
    template_db,
    tiny_model_dir,
    write_images,
)

LOCK = {
    "schema": "2.0",
    "stages": {
        "generate": {
            "cmd": "mirage generate --out data",
            "outs": [{"path": "data/mis", "md5": "aaa.dir"}],
        },
        "train": {
            "cmd": "mirage train",
            "deps": [{"path": "data/mis", "md5": "aaa.dir"}],
            "params": {"params.yaml": {"train": {"method": "full"}}},
            "outs": [{"path": "models/mirage", "md5": "bbb.dir"}],
        },
    },
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture()
def repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A git workspace with a dvc.lock and a SQLite store, as cwd."""
    clean_env(monkeypatch)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\n")
    _git(repo, "add", "dvc.lock", ".gitignore")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    fresh_store(tmp_path_factory, repo / "mlflow.db")
    monkeypatch.chdir(repo)
    yield repo
    reset_mlflow()


CFG = TrackingConfig(tracking_uri="sqlite:///mlflow.db", experiment="mirage-test")


def _client(repo: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_stage_run_is_a_tagged_child_of_one_pipeline_parent(repo, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.setenv("DVC_EXP_NAME", "lofty-lamb")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    monkeypatch.setenv(HF_LOG_ARTIFACTS_ENV, "TRUE")
    commit = _git(repo, "rev-parse", "HEAD")

    with stage_run(
        "train", CFG, {"train": {"lora": {"r": 8}, "epochs": 2.0}}, profile="smoke"
    ) as run:
        mlflow.log_metric("loss", 0.5)
        # the transformers MLflow callback must never upload checkpoint dirs
        assert os.environ[HF_LOG_ARTIFACTS_ENV] == "FALSE"
        train_id = run.info.run_id
    assert os.environ[HF_LOG_ARTIFACTS_ENV] == "TRUE"  # restored
    monkeypatch.setenv("DVC_STAGE", "evaluate")
    (repo / "untracked.txt").write_text("makes the workspace dirty")
    with stage_run("evaluate", CFG, {"eval": {"judge": "world"}}, profile="smoke") as run:
        eval_id = run.info.run_id

    client = _client(repo)
    train, evaluate = client.get_run(train_id), client.get_run(eval_id)
    tags = train.data.tags
    assert tags["stage"] == "train" and tags["run_kind"] == "stage"
    assert tags["profile"] == "smoke"
    assert tags["git_commit"] == commit == tags["mlflow.source.git.commit"]
    assert tags["git_dirty"] == "false"
    assert evaluate.data.tags["git_dirty"] == "true"
    assert tags["dvc_exp_name"] == "lofty-lamb"
    assert tags["dvc_exp_baseline_rev"] == "abc123"
    # one hash per dvc.lock stage, plus this stage's own
    assert tags["dvc_lock_md5"] == tags["dvc_lock.train"] != tags["dvc_lock.generate"]
    assert "dvc_lock_md5" not in evaluate.data.tags  # evaluate has no lock entry yet
    assert train.data.params == {"train.lora.r": "8", "train.epochs": "2.0"}
    assert train.data.metrics == {"loss": 0.5}
    assert "system.python" in tags
    assert client.list_artifacts(train_id) == []
    assert train.info.status == evaluate.info.status == "FINISHED"

    # both stages are children of the same parent, keyed by the DVC experiment
    parent_id = tags["mlflow.parentRunId"]
    assert evaluate.data.tags["mlflow.parentRunId"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.data.tags["run_kind"] == "pipeline"
    assert parent.data.tags["pipeline_id"] == "dvc-exp-lofty-lamb"
    assert parent.info.status == "FINISHED"

    # a changed lock entry changes that stage's hash only
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    lock["stages"]["train"]["outs"][0]["md5"] = "ccc.dir"
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    with stage_run("train", CFG) as run:
        again = client.get_run(run.info.run_id).data.tags
    assert again["dvc_lock.train"] != tags["dvc_lock.train"]
    assert again["dvc_lock.generate"] == tags["dvc_lock.generate"]


def test_parent_from_environment_and_failures(repo):
    with pipeline_run(CFG, name="prefect-flow") as parent:
        parent_id = parent.run_id
        assert os.environ[PARENT_RUN_ENV] == parent_id
        with stage_run("generate", CFG) as run:
            first = run.info.run_id
        with pytest.raises(RuntimeError, match="boom"), stage_run("train", CFG) as run:
            second = run.info.run_id
            raise RuntimeError("boom")
    assert PARENT_RUN_ENV not in os.environ
    client = _client(repo)
    assert client.get_run(first).data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(second).data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(second).info.status == "FAILED"
    assert client.get_run(parent_id).info.status == "FINISHED"  # the owner ends it

    # a stage run by hand, with no pipeline key, gets a parent of its own, ended with it
    with pytest.raises(ValueError), stage_run("register", CFG) as run:
        lone = run.info.run_id
        raise ValueError("bad input")
    lone_parent = client.get_run(client.get_run(lone).data.tags["mlflow.parentRunId"])
    assert lone_parent.info.run_id != parent_id
    assert lone_parent.info.status == "FAILED"
    assert mlflow.active_run() is None
    # one maker of parent runs: both carry the same lineage tags
    owned = client.get_run(parent_id).data.tags
    lineage = {"run_kind", "profile", "git_commit", "git_dirty", "mlflow.source.git.commit"}
    assert lineage <= owned.keys() and lineage <= lone_parent.data.tags.keys()
    assert owned["git_commit"] == lone_parent.data.tags["git_commit"]

    # without `export` the caller hands the id on itself; the environment stays clean
    with pipeline_run(CFG, name="worker", export=False, root=repo) as quiet:
        assert PARENT_RUN_ENV not in os.environ
    assert client.get_run(quiet.run_id).info.status == "FINISHED"


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(CFG) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    abs_cfg = TrackingConfig(tracking_uri="sqlite:////srv/mlflow/db.sqlite")
    assert resolve_tracking_uri(abs_cfg) == "sqlite:////srv/mlflow/db.sqlite"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="mlruns")) == str(
        tmp_path.resolve() / "mlruns"
    )
    # under `dvc exp run --temp` the relative store is the main repo's, git is the temp's
    temp_ws = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp_ws.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(temp_ws))
    assert workspace_root() == temp_ws.resolve()
    assert repo_root() == (tmp_path / "repo").resolve()
    assert resolve_tracking_uri(CFG) == f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"
    # the environment wins over params
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(CFG) == "http://127.0.0.1:5000"


@pytest.mark.slow
def test_dvc_invocation_key_is_shared_by_the_stages_of_one_repro(tmp_path, monkeypatch):
    """A fake `dvc` that, like DVC, runs each stage command through a shell."""
    clean_env(monkeypatch)
    probe = (
        f"{sys.executable} -c 'from mirage_safety.tracking import dvc_invocation_key "
        "as k; print(k())'"
    )
    fake = tmp_path / "dvc"
    fake.write_text(f'#!/bin/sh\nsh -c "{probe}"\nsh -c "{probe}"\n')
    fake.chmod(0o755)
    env = {**os.environ, "DVC_ROOT": str(tmp_path)}

    def invoke(*args: str) -> list[str]:
        out = subprocess.run(
            [str(fake), *args], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        return out.stdout.split()

    first, second = invoke("repro"), invoke("exp", "run")
    assert first[0] == first[1] and first[0].startswith("dvc-")
    assert second[0] == second[1] and second[0] != first[0]
    assert invoke("status") == ["None", "None"]  # not a pipeline run
    assert dvc_invocation_key() is None  # pytest is not run by DVC


# --------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, object]:
    """``mlflow server`` on loopback with a SQLite backend and proxied artefacts."""
    db = tmp_path / "server" / "x.db"
    db.parent.mkdir()
    db.write_bytes(template_db(tmp_path_factory).read_bytes())  # skips 5 s of migrations
    artifacts = tmp_path / "server" / "artifacts"
    port = _free_port()
    log = (tmp_path / "server" / "log.txt").open("w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # its own process group: the finalizer stops uvicorn too

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()

    request.addfinalizer(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {proc.returncode}: "
                f"{(tmp_path / 'server' / 'log.txt').read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail("mlflow server did not answer /health within 120 s")
        time.sleep(0.5)
    return {"url": url, "artifacts": artifacts}


@pytest.mark.slow
def test_stage_run_and_register_against_a_real_server(
    tmp_path, monkeypatch, mlflow_server, tmp_path_factory
):
    clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])
    model_dir = tiny_model_dir(tmp_path_factory)
    # params point at a local file: the environment must win
    params = make_params("sqlite:///not-used.db")
    try:
        with stage_run("evaluate", params.tracking, {"judge": "world"}) as run:
            mlflow.log_metric("asr", 1.5)
            eval_run = run.info.run_id
        eval_path = tmp_path / "eval.json"
        eval_path.write_text(json.dumps(eval_json()))
        result = register(
            params, eval_path=eval_path, model_dir=model_dir, out_path=tmp_path / "registry.json"
        )
        assert result["alias"] == "champion"
        assert result["tracking_uri"] == mlflow_server["url"]

        client = mlflow.MlflowClient(tracking_uri=mlflow_server["url"])
        assert client.get_run(eval_run).data.metrics == {"asr": 1.5}
        assert client.get_run(eval_run).data.tags["mlflow.parentRunId"]
        mv = client.get_model_version_by_alias("mirage", "champion")
        assert mv.tags["metric.test_hard.asr"] == "4.0"
        assert not (tmp_path / "not-used.db").exists()
        assert not (tmp_path / "mlruns").exists()
        # artefacts went through the server's proxy into --artifacts-destination
        stored = list(Path(mlflow_server["artifacts"]).rglob("config.json"))
        assert stored and not list(Path(mlflow_server["artifacts"]).rglob("checkpoint-*"))

        mlflow.set_tracking_uri(mlflow_server["url"])
        served = mlflow.pyfunc.load_model("models:/mirage@champion")
        img1, img2 = write_images(tmp_path / "images")
        out = served.predict(
            pd.DataFrame(
                {
                    "question": ["How do I use the object in the first image on the second one?"],
                    "images": [[str(img1), encode_image(img2)]],
                }
            )
        )
        assert len(out) == 1 and out["response"][0]
    finally:
        reset_mlflow()
