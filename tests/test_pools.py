"""Stages on the work pools they need (``orchestration.pools``), the DVC remote as the only
hand-off: a real loopback Prefect server, two process work pools with one worker each, each
worker in its own clone, a local-directory DVC remote and a loopback MLflow server.

One test, three flow runs on the smoke profile (sharing the first run's work):

1. the pipeline with ``train`` on the ``gpu`` pool completes; the gpu clone holds only
   what ``train`` needs (no ``data/labelled``, no ``eval/``), MLflow has one parent with
   every stage's child (``train``'s logged from the gpu worker), and ``dvc exp show`` in the
   orchestrating clone lists the run with the worker's hashes for ``train``;
2. a commit that changes ``train.seed``; the gpu worker is killed while it trains: the
   flow ends failed with the stage's time-out;
3. a new gpu worker, the same commit again: it completes, ``generate`` / ``label`` /
   ``curate`` / ``base`` not re-run, ``train`` run on the pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from repo_copy import REPO, commit, copy_worktree, run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BIN = Path(sys.executable).parent
if str(REPO) not in sys.path:  # `flows` lives at the repo root, next to src/
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        for p in [*parent.children(recursive=True), parent]:
            p.kill()
    except psutil.NoSuchProcess:
        pass
    proc.wait(timeout=30)


def _mlflow(tmp: Path) -> tuple[str, subprocess.Popen]:
    port = _free_port()
    (tmp / "mlflow").mkdir()
    proc = _start(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow' / 'db.sqlite'}",
            "--artifacts-destination",
            str(tmp / "mlflow" / "artifacts"),
            "--workers",
            "1",
        ],
        tmp,
        tmp / "mlflow" / "log.txt",
        {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url, proc
        except OSError:
            time.sleep(0.5)
    _kill_tree(proc)
    pytest.fail(f"mlflow server did not start: {(tmp / 'mlflow' / 'log.txt').read_text()[-2000:]}")


def _worker(pool: str, clone: Path, api: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MIRAGE_", "DVC_"))}
    # heartbeats every 5 s: the server sees a dead worker within seconds, not minutes
    env.update(
        PREFECT_API_URL=api,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return _start(
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--limit",
            "1",
        ],
        clone,
        log,
        env,
    )


def _state(flow_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _wait(flow_run_id: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_ = _state(flow_run_id)
        if run_.state is not None and run_.state.is_final():
            return run_
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish within {timeout_s:g}s")


def _stage_runs(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
        )


@pytest.mark.slow
def test_train_on_a_second_pool_through_the_dvc_remote(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from flows.deploy import build_stage_deployment
    from flows.retrain import retrain
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    for var in ("MLFLOW_TRACKING_URI", "MIRAGE_PROFILE", "MIRAGE_PARENT_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow_url, mlflow_proc = _mlflow(tmp_path)
    workers: list[subprocess.Popen] = []
    try:
        # the orchestrating clone: a DVC remote and the placement, committed
        cpu = copy_worktree(REPO, tmp_path / "cpu-clone")
        remote = tmp_path / "dvc-remote"
        run([str(BIN / "dvc"), "remote", "add", "-d", "handoff", str(remote)], cpu)
        params = yaml.safe_load((cpu / "params.yaml").read_text())
        params["tracking"]["tracking_uri"] = mlflow_url
        params["orchestration"] = {"pools": {"train": "gpu"}, "stage_timeout_s": 240}
        (cpu / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        commit(cpu, "train on the gpu pool, hand-off through a local DVC remote")
        gpu = tmp_path / "gpu-clone"
        run(["git", "clone", "-q", str(cpu), str(gpu)], tmp_path)

        with get_client(sync_client=True) as client:
            for pool in ("cpu", "gpu"):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        retrain.from_source(source=str(cpu), entrypoint="flows/retrain.py:retrain").to_deployment(
            name="pipeline", work_pool_name="cpu"
        ).apply()
        build_stage_deployment("gpu", source=gpu).apply()
        workers.append(_worker("cpu", cpu, prefect_api, tmp_path / "cpu-worker.log"))
        gpu_worker = _worker("gpu", gpu, prefect_api, tmp_path / "gpu-worker-1.log")
        workers.append(gpu_worker)

        def pipeline(exp: str) -> Any:
            flow_run = run_deployment(
                "mirage-retrain/pipeline",
                timeout=0,
                parameters={
                    "profile": "smoke",
                    "exp_name": exp,
                    "repo_dir": str(cpu),
                    "retries": 0,
                },
            )
            return flow_run.id

        # --- 1: the whole pipeline, train on the gpu pool
        first = _wait(pipeline("pools-1"), 1500)
        assert first.state.is_completed(), (
            first.state.message,
            (tmp_path / "cpu-worker.log").read_text()[-3000:],
        )
        (stage_run,) = _stage_runs("gpu")
        assert stage_run.state.is_completed()
        # the gpu clone pulled train's inputs only, never the orchestrator's workspace
        assert (gpu / "models" / "mirage").is_dir() and (gpu / "data" / "curated").is_dir()
        assert not (gpu / "data" / "labelled").exists() and not (gpu / "eval").exists()
        lock_cpu = yaml.safe_load((cpu / "dvc.lock").read_text())["stages"]
        lock_gpu = yaml.safe_load((gpu / "dvc.lock").read_text())["stages"]
        assert lock_cpu["train"] == lock_gpu["train"]
        assert json.loads((cpu / "metrics" / "train.json").read_text()) == json.loads(
            (gpu / "metrics" / "train.json").read_text()
        )
        # MLflow: one parent, a child per stage, train's child logged on the gpu worker
        client = mlflow.MlflowClient(tracking_uri=mlflow_url)
        exp = client.get_experiment_by_name(params["tracking"]["experiment"])
        parents = client.search_runs(
            [exp.experiment_id], filter_string="tags.dvc_exp_name = 'pools-1'"
        )
        parent = next(r for r in parents if "mlflow.parentRunId" not in r.data.tags)
        children = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        assert {r.data.tags.get("stage") for r in children} >= {
            "label",
            "curate",
            "train",
            "evaluate",
            "register",
        }
        # the experiment in the orchestrating clone holds every stage's hashes
        shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], cpu))
        text = json.dumps(shown)
        assert "pools-1" in text
        mirage_md5 = next(
            o["md5"] for o in lock_gpu["train"]["outs"] if o["path"] == "models/mirage"
        )
        assert mirage_md5 in text

        # one pipeline per repo and branch on any machine: a server-side limit of 1, free now
        with get_client(sync_client=True) as pc:
            limits = [
                lim
                for lim in pc.read_global_concurrency_limits()
                if lim.name.startswith("mirage-pipeline-")
            ]
        assert len(limits) == 1 and limits[0].limit == 1 and limits[0].active_slots == 0

        # --- 2: a commit that retrains; the gpu worker dies in the middle of train
        params["train"]["seed"] = 7
        (cpu / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        commit(cpu, "another training seed")
        second_id = pipeline("pools-2")
        deadline = time.monotonic() + 900
        while not any(r.state.is_running() for r in _stage_runs("gpu")):
            assert time.monotonic() < deadline, "train never started on the gpu pool"
            time.sleep(1)
        time.sleep(5)  # inside the stage
        _kill_tree(gpu_worker)
        second = _wait(second_id, 900)
        assert second.state.is_failed(), second.state
        # found by the worker's missing heartbeats, long before the 240 s stage time-out
        assert "pool gpu has no live worker" in (second.state.message or ""), second.state
        orphan = max(_stage_runs("gpu"), key=lambda r: r.created)
        assert orphan.state.is_crashed(), orphan.state  # set so by the orchestrating run

        # --- 3: a worker comes back; the re-run skips the data stages
        workers.append(_worker("gpu", gpu, prefect_api, tmp_path / "gpu-worker-2.log"))
        third = _wait(pipeline("pools-3"), 1500)
        assert third.state.is_completed(), third.state.message
        # what ran shows in MLflow: a child run per stage that ran, none for skipped ones
        (parent3,) = [
            r
            for r in client.search_runs(
                [exp.experiment_id], filter_string="tags.dvc_exp_name = 'pools-3'"
            )
            if "mlflow.parentRunId" not in r.data.tags
        ]
        ran = {
            r.data.tags.get("stage")
            for r in client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent3.info.run_id}'",
            )
        }
        assert "train" in ran and not ran & {"generate", "label", "curate", "base"}, ran
        latest = max(_stage_runs("gpu"), key=lambda r: r.created)
        assert latest.state.is_completed()
        assert (
            yaml.safe_load((cpu / "dvc.lock").read_text())["stages"]["train"]
            == yaml.safe_load((gpu / "dvc.lock").read_text())["stages"]["train"]
        )
    finally:
        for proc in workers:
            _kill_tree(proc)
        _kill_tree(mlflow_proc)


@pytest.mark.slow
def test_placement_needs_a_shared_tracking_server_and_known_stages(
    tmp_path: Path, monkeypatch
) -> None:
    from flows.retrain import _check_dvc_remote, _check_shared_tracking

    from mirage_safety.config import ConfigError, parse_params
    from mirage_safety.orchestration import handoff

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({"orchestration": {"pools": {"train": "gpu"}}})
    with pytest.raises(ConfigError, match=r"train -> gpu.*sqlite:///.*shared MLflow server"):
        _check_shared_tracking(tmp_path, params)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    _check_shared_tracking(tmp_path, params)  # a server: fine
    # ... and a DVC remote to hand off through
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([str(BIN / "dvc"), "init", "-q"], repo)
    with pytest.raises(ConfigError, match="no default remote is configured"):
        _check_dvc_remote(repo, params)
    run([str(BIN / "dvc"), "remote", "add", "-d", "store", str(tmp_path / "store")], repo)
    _check_dvc_remote(repo, params)
    named = parse_params({"orchestration": {"pools": {"train": "gpu"}, "remote": "s3"}})
    with pytest.raises(ConfigError, match="remote 's3' is not configured"):
        _check_dvc_remote(repo, named)
    with pytest.raises(ConfigError, match=r"orchestration\.pools: unknown stage\(s\) \['trian'\]"):
        parse_params({"orchestration": {"pools": {"trian": "gpu"}}})
    # what a placed stage pulls: the outs of other stages it depends on, nothing else
    assert handoff.inputs(REPO, "train") == [
        "models/base",
        "data/curated/train.json",
        "data/mis/images",
        "data/general",
    ]
    assert handoff.inputs(REPO, "generate") == []
    assert "metrics/eval.json" in handoff.inputs(REPO, "register")
