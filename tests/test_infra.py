"""infra/: the loopback server scripts really start, serve and stop; the production
compose file wires the services the pipeline needs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVERS = REPO / "infra" / "servers"
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _script(
    name: str, *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SERVERS / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _group_alive(pgid: int) -> bool:
    return (
        subprocess.run(
            [sys.executable, str(SERVERS / "_proc.py"), "alive", str(pgid)], check=False
        ).returncode
        == 0
    )


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MIRAGE_SERVER_STATE": str(tmp_path / "state"), "MIRAGE_SERVER_TIMEOUT": "150"})
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
def test_mlflow_server_script_start_serve_stop(tmp_path: Path, server_env: dict[str, str]) -> None:
    import mlflow

    port = _free_port()
    args = [
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'ml.db'}",
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
    ]
    pidfile = tmp_path / "state" / f"mlflow-{port}.pid"
    started = _script("mlflow-server.sh", "start", *args, env=server_env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
        pgid = int(pidfile.read_text())
        # a real tracking server: a run with a metric and a proxied artefact round-trip
        uri = f"http://127.0.0.1:{port}"
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp_id = client.create_experiment("infra-test")
        run = client.create_run(exp_id)
        client.log_metric(run.info.run_id, "asr", 0.5)
        note = tmp_path / "note.txt"
        note.write_text("hello")
        client.log_artifact(run.info.run_id, str(note))
        assert client.get_run(run.info.run_id).data.metrics == {"asr": 0.5}
        assert list((tmp_path / "artifacts").rglob("note.txt"))  # stored by the server

        again = _script("mlflow-server.sh", "start", *args, env=server_env)
        assert again.returncode == 0 and "already running" in again.stdout
        status = _script("mlflow-server.sh", "status", *args, env=server_env)
        assert status.returncode == 0, status.stdout
    finally:
        stopped = _script("mlflow-server.sh", "stop", *args, env=server_env)
    assert stopped.returncode == 0 and "stopped" in stdout_of(stopped)
    assert not pidfile.exists()
    assert not _group_alive(pgid)  # uvicorn workers included
    assert not _listening(port)
    status = _script("mlflow-server.sh", "status", *args, env=server_env)
    assert status.returncode == 3


def stdout_of(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_mlflow_server_script_refuses_a_busy_port(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    """A port already answering /health (not ours) is reported, not silently shared."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        out = _script("mlflow-server.sh", "start", "--port", str(port), env=server_env, timeout=60)
    finally:
        httpd.shutdown()
    assert out.returncode != 0 and "already serves something else" in out.stderr


@pytest.mark.slow
def test_prefect_server_script_schedules_and_runs_through_the_worker(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    """Server on loopback + process pool + worker; `deploy` registers the nightly cron
    deployment; a run of it goes through the worker (the scheduled path) and completes
    the pipeline of a tiny repo; `stop` ends every process."""
    from fake_pipeline import make_fake_repo

    port, worker_port = _free_port(), _free_port()
    env = {**server_env, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for var in ("PREFECT_API_URL", "PREFECT_PROFILE", "MIRAGE_REPO_DIR"):
        env.pop(var, None)
    api = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    prefect = str(Path(sys.executable).parent / "prefect")
    args = ["--port", str(port), "--worker-port", str(worker_port)]
    state = tmp_path / "state"
    repo = make_fake_repo(tmp_path)
    started = _script("prefect-server.sh", "start", *args, env=env)
    try:
        assert started.returncode == 0, stdout_of(started)
        assert "created process work pool mirage-process" in started.stdout
        server_pgid = int((state / f"prefect-server-{port}.pid").read_text())
        worker_pgid = int((state / f"prefect-worker-{port}.pid").read_text())
        assert _listening(worker_port)  # the worker's health endpoint

        deployed = _script("prefect-server.sh", "deploy", *args, env=env)
        assert deployed.returncode == 0, stdout_of(deployed)
        # `prefect deploy` of prefect.yaml (prefect 3.9.1; 3.8.8 failed here)
        # structured output, not the pretty-printed table: the CLI wraps long strings (a
        # checkout under a long path) at the terminal width
        shown = subprocess.run(
            [prefect, "deployment", "inspect", "mirage-retrain/nightly-retrain", "-o", "json"],
            env=api,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shown.returncode == 0, stdout_of(shown)
        deployment = json.loads(shown.stdout)
        crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
        assert crons == ["0 3 * * *"] and deployment["work_pool_name"] == "mirage-process"
        spec = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]
        assert deployment["description"] == spec["description"]
        assert sorted(deployment["tags"]) == sorted(spec["tags"])
        steps = json.dumps(deployment.get("pull_steps") or [])
        assert json.dumps(str(REPO)) in steps  # workers run this checkout

        ran = subprocess.run(
            [
                prefect,
                "deployment",
                "run",
                "mirage-retrain/nightly-retrain",
                "--param",
                f"repo_dir={repo}",
                "--param",
                "exp_name=via-worker",
                "--param",
                "wait_for_lock_s=0",
                "--param",
                "track=false",
                "--watch",
                "--watch-timeout",
                "240",
            ],
            env=api,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert ran.returncode == 0, stdout_of(ran)
        assert "Completed" in ran.stdout
        assert json.loads((repo / "metrics/registry.json").read_text())["decision"] == "promote"
    finally:
        stopped = _script("prefect-server.sh", "stop", *args, env=env)
    assert stopped.returncode == 0, stdout_of(stopped)
    assert "prefect worker stopped" in stopped.stdout
    assert not _group_alive(server_pgid) and not _group_alive(worker_pgid)
    assert not _listening(port) and not _listening(worker_port)


def test_compose_stack_wires_databases_object_store_and_gpu_worker() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"} <= set(
        services
    )
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "postgresql+psycopg2://" in mlflow_cmd and "@postgres:5432/mlflow" in mlflow_cmd
    assert "--artifacts-destination s3://mlflow/" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("/prefect")
    initdb = (COMPOSE.parent / "initdb").glob("*.sql")
    assert any("CREATE DATABASE prefect" in p.read_text() for p in initdb)
    assert "local/mlflow local/dvc" in " ".join(services["minio-init"]["command"])

    worker = services["prefect-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    worker_cmd = " ".join(worker["command"])
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    assert "--pool mirage-gpu" in worker_cmd and "mirage-gpu" in pools
    # the CPU pool: the retrain flow and unplaced stages, its own clone, no GPU
    cpu = services["prefect-worker-cpu"]
    assert "--pool mirage-cpu" in " ".join(cpu["command"]) and "deploy" not in cpu
    assert cpu["volumes"][0].split(":")[0] != worker["volumes"][0].split(":")[0]
    assert cpu["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # UIs and APIs published on loopback only
    for svc in services.values():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), mapping
    for name in ("mlflow.Dockerfile", "worker.Dockerfile"):
        assert (COMPOSE.parent / name).is_file()
    assert "torch==2.13.0" in (COMPOSE.parent / "worker.Dockerfile").read_text()
