"""Faults the registry must survive: the MLflow server going away during ``register``, two
registrations racing, a killed ``register`` leaving a version behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mirage_safety.cli import main as cli_main
from mirage_safety.registry import manage
from mirage_safety.registry.manage import CHALLENGER, CHAMPION
from mirage_safety.registry.pyfunc_model import log_pyfunc_model
from mirage_safety.registry.register import register
from registry_fixtures import (
    clean_env,
    eval_json,
    fresh_store,
    make_params,
    reset_mlflow,
    summary,
    tiny_model_dir,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "servers" / "mlflow-server.sh"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No tracking / registry URI left over from another test, artefacts in tmp_path."""
    clean_env(monkeypatch)
    reset_mlflow()
    monkeypatch.chdir(tmp_path)
    yield
    reset_mlflow()


@pytest.fixture
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


def _eval(tmp: Path, mirage: dict) -> Path:
    path = tmp / f"eval-{len(list(tmp.glob('eval-*.json')))}.json"
    path.write_text(json.dumps(eval_json(mirage)))
    return path


def _aliases(uri: str) -> dict[str, int]:
    model = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("mirage")
    return {k: int(v) for k, v in model.aliases.items()}


def _versions(uri: str) -> dict[int, dict]:
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {
        int(v.version): {"status": v.status, **v.tags}
        for v in client.search_model_versions("name='mirage'")
    }


@pytest.mark.slow
def test_a_race_is_decided_against_the_champion_at_promotion_time(
    tmp_path, model_dir, tmp_path_factory
):
    """A is packaged while B (better) gets promoted: A's gate, taken again at promotion time,
    compares with B and refuses A, though A beats the champion it saw first."""
    uri = fresh_store(tmp_path_factory, tmp_path / "store")
    params = make_params(uri)
    register(
        params,
        eval_path=_eval(tmp_path, summary(easy=5.0, hard=6.0)),
        model_dir=model_dir,
        out_path=None,
    )  # v1 champion

    def packaging_while_b_is_promoted(*args, **kw):
        b = register(
            params,
            eval_path=_eval(tmp_path, summary(easy=1.0, hard=1.0)),
            model_dir=model_dir,
            out_path=None,
        )
        assert b["decision"] == "promote" and b["version"] == 2
        return log_pyfunc_model(*args, **kw)

    a = register(
        params,
        eval_path=_eval(tmp_path, summary(easy=3.0, hard=3.0)),
        model_dir=model_dir,
        out_path=None,
        log_model=packaging_while_b_is_promoted,
    )
    assert a["version"] == 3 and a["decision"] == "reject" and a["compared_to"] == "champion v2"
    assert _aliases(uri) == {CHAMPION: 2, CHALLENGER: 3}
    assert {v: t["gate.status"] for v, t in _versions(uri).items()} == {
        1: "applied",
        2: "applied",
        3: "applied",
    }


@pytest.mark.slow
def test_two_register_processes_racing_leave_the_best_champion(
    tmp_path, model_dir, tmp_path_factory
):
    uri = fresh_store(tmp_path_factory, tmp_path / "store")
    register(
        make_params(uri),
        eval_path=_eval(tmp_path, summary(easy=5.0, hard=6.0)),
        model_dir=model_dir,
        out_path=None,
    )
    params = tmp_path / "params.yaml"
    params.write_text(
        f"tracking:\n  tracking_uri: {uri}\n  experiment: mirage-test\n"
        "registry:\n  model_name: mirage\neval:\n  max_new_tokens: 4\n"
        "  batch_size: 2\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mirage")),
                "register",
                "--params",
                str(params),
                "--eval",
                str(_eval(tmp_path, summary(easy=e, hard=e))),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / f"reg-{e}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for e in (1.0, 3.0)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    versions = _versions(uri)
    best = next(v for v, t in versions.items() if t.get("metric.test_easy.asr") == "1.0")
    # whichever promoted first, the 1.0 candidate is champion: 3.0 never overwrote it
    assert _aliases(uri)[CHAMPION] == best
    assert all(t["gate.status"] == "applied" for t in versions.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_going_away_during_register(tmp_path, model_dir, monkeypatch, capsys):
    port = _free_port()
    env = {
        **os.environ,
        "MIRAGE_SERVER_STATE": str(tmp_path / "state"),
        "MIRAGE_SERVER_TIMEOUT": "150",
        "MLFLOW_BIN": str(Path(sys.executable).with_name("mlflow")),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'srv.db'}",
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
    ]

    def server(action: str) -> None:
        out = subprocess.run(
            ["bash", str(SCRIPT), action, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr

    uri = f"http://127.0.0.1:{port}"
    # fail fast instead of MLflow's default minutes of retries against a dead server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    params = make_params(uri)
    server("start")
    try:
        register(
            params,
            eval_path=_eval(tmp_path, summary(easy=5.0, hard=6.0)),
            model_dir=model_dir,
            out_path=None,
        )

        # 1. the server dies while the model is being packaged: no version, no alias
        def dies_while_packaging(*a, **kw):
            server("stop")
            return log_pyfunc_model(*a, **kw)

        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
            register(
                params,
                eval_path=_eval(tmp_path, summary(easy=1.0, hard=1.0)),
                model_dir=model_dir,
                out_path=None,
                log_model=dies_while_packaging,
            )
        server("start")
        assert set(_versions(uri)) == {1} and _aliases(uri) == {CHAMPION: 1}

        # 2. it dies between the new version and its alias: the version is left pending,
        # the champion alias never moved
        real = manage.set_champion

        def dies_before_the_alias(*a, **kw):
            server("stop")
            return real(*a, **kw)

        monkeypatch.setattr(manage, "set_champion", dies_before_the_alias)
        with pytest.raises(Exception):  # noqa: B017
            register(
                params,
                eval_path=_eval(tmp_path, summary(easy=1.0, hard=1.0)),
                model_dir=model_dir,
                out_path=None,
            )
        monkeypatch.setattr(manage, "set_champion", real)
        server("start")
        versions = _versions(uri)
        assert versions[2]["gate.status"] == "pending" and versions[2]["status"] == "READY"
        assert _aliases(uri) == {CHAMPION: 1}  # never pointing at an unfinished version

        # 3. the next run finishes the interrupted one and promotes cleanly
        result = register(
            params,
            eval_path=_eval(tmp_path, summary(easy=1.0, hard=1.0)),
            model_dir=model_dir,
            out_path=None,
        )
        assert result["version"] == 3 and result["decision"] == "promote"
        versions = _versions(uri)
        assert versions[2]["gate.status"] == "interrupted"
        assert versions[2]["gate.decision"] == "interrupted"
        assert _aliases(uri) == {CHAMPION: 3}

        # 4. through the CLI with the server down: a clear message and the "try again" code
        server("stop")
        pfile = tmp_path / "params.yaml"
        pfile.write_text(f"tracking:\n  tracking_uri: {uri}\n  experiment: mirage-test\n")
        rc = cli_main(
            [
                "register",
                "--params",
                str(pfile),
                "--eval",
                str(_eval(tmp_path, summary())),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "reg.json"),
            ]
        )
        err = capsys.readouterr().err
        assert rc == 75 and "went away or is not reachable" in err
        assert "no alias was moved" in err and not (tmp_path / "reg.json").exists()
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", *args],
            env=env,
            capture_output=True,
            timeout=200,
            check=False,
        )
