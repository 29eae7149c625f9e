"""The Prefect ``retrain`` flow against a real (temporary) Prefect server, real git + DVC
repos and a SQLite MLflow.

* a tiny repo whose five stages are small python commands: the flow runs them in order,
  a transient failure is retried, a config error is not, artefacts and a DVC experiment
  are recorded, the stages' MLflow parent is the flow's, and a second run reruns only
  the stages whose inputs changed;
* two concurrent flow runs in one workspace never overlap; a run that finds the
  workspace busy with ``wait_for_lock_s=0`` fails fast naming the holder;
* the deployments (``flows/deploy.py`` and ``prefect.yaml``) carry the same cron
  schedule, parameters and concurrency limit and load the real flow;
* (slow, e2e) the real pipeline with the smoke profile in a copy of this repo leaves a
  registered model version in a SQLite MLflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `flows` lives at the repo root, next to src/
    sys.path.insert(0, str(REPO))

from flows import retrain as R  # noqa: E402
from flows.deploy import NIGHTLY_CRON, NIGHTLY_PARAMETERS, build_deployment  # noqa: E402

from fake_pipeline import PARAMS_YAML, make_fake_repo  # noqa: E402
from repo_copy import commit, copy_worktree, git_init, run  # noqa: E402

_run, _git_init, _commit = run, git_init, commit


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session: 10-20 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    # no telemetry from the temporary server (no network here; it only adds noise)
    previous = os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)
        else:
            os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = previous


def _flow_run(state: Any) -> tuple[Any, list[Any], list[Any]]:
    """The flow run, its task runs and its artefacts, read back from the server."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort

    run_id = state.state_details.flow_run_id

    async def read() -> tuple[Any, list[Any], list[Any]]:
        # every paging field explicit, so any server version reads the same
        async with get_client() as client:
            flow_run = await client.read_flow_run(run_id)
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
                offset=0,
            )
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.ID_DESC,
                limit=200,
                offset=0,
            )
        return flow_run, tasks, artifacts

    return asyncio.run(read())


def _task(tasks: list[Any], name: str) -> Any:
    found = [t for t in tasks if t.name == name]
    assert len(found) == 1, [t.name for t in tasks]
    return found[0]


# --------------------------------------------------------------------------- units
def test_classify_failure_retries_only_transient() -> None:
    cfg = "ERROR: failed to reproduce 'train': failed to run: mirage train, exited with 2"
    assert R.classify_failure(255, "ConnectionError: x\n" + cfg)[0] is False  # exit 2 wins
    bug = "ValueError: boom\nERROR: failed to reproduce 'x': failed to run: c, exited with 1"
    transient, reason, code = R.classify_failure(255, bug)
    assert (transient, code) == (False, 1) and "not a known transient" in reason
    net = "requests.exceptions.ConnectionError: refused\n" + bug.split("\n")[1]
    assert R.classify_failure(255, net)[0] is True
    killed = "ERROR: failed to reproduce 'train': failed to run: mirage train, exited with -9"
    assert R.classify_failure(255, killed) == (True, R.classify_failure(255, killed)[1], -9)
    assert R.classify_failure(255, "ERROR: Unable to acquire lock. Most likely ...")[0]
    assert R.classify_failure(255, "httpx: Server error '503 Service Unavailable'")[0]
    assert not R.classify_failure(255, "step 503 loss 0.1\nKeyError: 'x'")[0]


def test_stage_failed_survives_pickling() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(R.StageFailed("train", 255, 1, True, "net", "tail")))
    assert (exc.stage, exc.transient, exc.stage_exit) == ("train", True, 1)
    assert "stage 'train' failed" in str(exc)


def test_metrics_rows_and_report() -> None:
    rows = R.metrics_rows(
        {
            "base": {"test_easy": {"asr": 80, "n": 10, "by_category": {}}},
            "mirage": {"test_easy": {"asr": 0.5, "rsr": 99.5}, "general": {"accuracy": 61.0}},
            "agreement": {"mirage": {"kappa": 0.9}},
            "judges": {"p": "w"},
        }
    )
    assert [list(r) for r in rows] == [["model", "split", "asr", "rsr", "accuracy", "n"]] * 3
    assert rows[0] == {
        "model": "base",
        "split": "test_easy",
        "asr": 80.0,
        "rsr": None,
        "accuracy": None,
        "n": 10.0,
    }
    md = R.report_markdown(
        {"exp_name": "e1", "profile": "smoke", "stages": []},
        rows,
        {"decision": "reject", "version": 3, "alias": "challenger", "reasons": ["asr 5.00 > 0.50"]},
    )
    assert "**reject**" in md and "- asr 5.00 > 0.50" in md and "| mirage | general |" in md
    # a split the judge could not score: the row says its zeros mean nothing
    noted = R.metrics_rows(
        {
            "mirage": {
                "test_hard": {"asr": 0.0, "judged_share": 0.0},
                "general": {"accuracy": 61.0},
            },
            "min_judged_share": 95.0,
        }
    )
    assert noted[0]["note"] == "rates not usable: judged 0% < 95%" and noted[1]["note"] == ""


def test_prepare_params_resets_to_head_and_refuses_shadowed_override(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path)
    params = repo / "params.yaml"
    params.write_text(PARAMS_YAML.replace("seed: 1", "seed: 99"))  # uncommitted edit
    cfg = R.prepare_params(repo, profile="smoke", data_seed=None, data_revision=None)
    assert (cfg.profile, cfg.data.seed) == ("smoke", 1)  # HEAD + profile only
    text = params.read_text()
    assert "# fake pipeline params" in text and "profile: smoke" in text  # comments kept
    backup = repo / ".dvc/tmp/params.yaml.before-retrain"
    assert "seed: 99" in backup.read_text()
    backup.unlink()  # the next run finds only its predecessor's overrides: no backup
    assert R.prepare_params(repo, profile="default", data_seed=7, data_revision=None).data.seed == 7
    assert not backup.exists()

    shadowing = PARAMS_YAML + "  fixed:\n    data:\n      seed: 5\n"
    params.write_text(shadowing)
    _commit(repo, "profile with a fixed seed")
    with pytest.raises(R.ConfigError, match=r"sets data\.seed itself"):
        R.prepare_params(repo, profile="fixed", data_seed=7, data_revision=None)
    assert params.read_text() == shadowing  # left as found
    with pytest.raises(R.ConfigError, match=r"data\.source is 'world'"):
        R.prepare_params(repo, profile="default", data_seed=None, data_revision="abc")
    with pytest.raises(R.ConfigError, match="not defined"):
        R.prepare_params(repo, profile="nope", data_seed=None, data_revision=None)


def test_pipeline_lock_excludes_threads_and_names_holder(tmp_path: Path) -> None:
    repo = tmp_path
    with R.pipeline_lock(repo, holder={"flow_run": "run-A"}):
        with (
            pytest.raises(R.PipelineBusyError, match="flow_run=run-A"),
            R.pipeline_lock(repo, wait_s=0.3),
        ):
            pass
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(_try_lock(repo)))
        t.start()
        t.join()
        assert got == ["busy"]
    assert _try_lock(repo) == "acquired"  # released on exit
    assert (repo / R.LOCK_RELPATH).read_text() == ""  # holder info cleared


def _try_lock(repo: Path) -> str:
    try:
        with R.pipeline_lock(repo):
            return "acquired"
    except R.PipelineBusyError:
        return "busy"


# --------------------------------------------------------------------------- flow runs
@pytest.mark.slow
def test_retrain_flow_retries_records_and_reruns_only_changes(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    repo = make_fake_repo(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MIRAGE_PROFILE", raising=False)
    (repo / "fail-once-train").touch()  # transient failure on the first attempt

    state = R.retrain(
        repo_dir=str(repo),
        profile="smoke",
        data_seed=7,
        exp_name="first",
        retry_delay_s=0.1,
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert [s["stage"] for s in result["stages"]] == list(R.STAGES)
    assert all(s["reran"] for s in result["stages"])
    train = next(s for s in result["stages"] if s["stage"] == "train")
    assert train["attempts"] == 2 and not (repo / "fail-once-train").exists()

    _, tasks, artifacts = _flow_run(state)
    assert _task(tasks, "dvc repro train").run_count == 2
    assert _task(tasks, "dvc repro generate").run_count == 1
    by_key = {a.key: a for a in artifacts}
    assert {"mirage-retrain-report", "mirage-eval-metrics", "mirage-registry-decision"} <= set(
        by_key
    )
    table = by_key["mirage-eval-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {
        "model": "mirage",
        "split": "test_easy",
        "asr": 0.5,
        "rsr": 90.0,
        "rr": 5.0,
        "hr": 4.5,
        "over_refusal": None,
        "accuracy": None,
    } in table
    report = by_key["mirage-retrain-report"].data
    assert "**promote**" in report and "`first`" in report and "| train | yes |" in report

    # MLflow: one parent run, FINISHED, whose id the stages received
    registry = json.loads((repo / "metrics/registry.json").read_text())
    assert registry["parent_run_id"] == result["parent_run_id"]
    assert (registry["dvc_exp_name"], registry["profile_env"]) == ("first", "smoke")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dvc_exp_name"] == "first"
    assert parent.data.tags["gate.decision"] == "promote"
    assert parent.data.metrics["mirage.test_easy.asr"] == 0.5

    # DVC experiment with the run's params and metrics
    exps = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo))
    saved = {
        exp["name"]: exp["revs"][0]["data"]
        for base in exps
        for exp in base.get("experiments") or []
    }
    assert set(saved) == {"first"}
    assert saved["first"]["params"]["params.yaml"]["data"]["data"]["seed"] == 7
    assert saved["first"]["params"]["params.yaml"]["data"]["profile"] == "smoke"
    eval_json = saved["first"]["metrics"]["metrics/eval.json"]["data"]
    assert eval_json["mirage"]["test_easy"]["asr"] == 0.5

    # second run: only train's own input changed -> train, evaluate, register rerun
    (repo / "train_input.txt").write_text("v2\n")
    remote = tmp_path / "dvc-remote"  # a local-directory DVC remote stands in for S3
    _run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "store", str(remote)], repo
    )
    result2 = R.retrain(
        repo_dir=str(repo),
        profile="smoke",
        data_seed=7,
        exp_name="second",
        retry_delay_s=0.1,
        dvc_push=True,
    )
    reran = {s["stage"]: s["reran"] for s in result2["stages"]}
    assert reran == {
        "generate": False,
        "label": False,
        "curate": False,
        "base": False,
        "train": True,
        "evaluate": True,
        "register": True,
    }
    assert result2["experiment"]["name"] == "second"
    assert result2["parent_run_id"] != result["parent_run_id"]
    pushed = [p for p in remote.rglob("*") if p.is_file()]
    assert len(pushed) == len(R.STAGES) - 1  # one cached out per stage but register

    # an existing experiment name is refused before any work
    with pytest.raises(R.ConfigError, match="already exists"):
        R.retrain(repo_dir=str(repo), profile="smoke", exp_name="first")


@pytest.mark.slow
def test_config_error_is_not_retried(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_fake_repo(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (repo / "fail-config-base").touch()
    state = R.retrain(
        repo_dir=str(repo),
        exp_name="bad",
        retry_delay_s=0.1,
        save_experiment_ref=False,
        return_state=True,
    )
    assert state.is_failed()
    _, tasks, artifacts = _flow_run(state)
    base = _task(tasks, "dvc repro base")
    assert base.run_count == 1 and base.state.is_failed()
    assert "exited 2" in base.state.message or "permanent" in base.state.message
    assert not any(t.name == "dvc repro train" for t in tasks)  # stopped at the failure
    assert not artifacts


@pytest.mark.slow
def test_two_concurrent_runs_never_overlap(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_fake_repo(tmp_path)
    timeline = tmp_path / "timeline.jsonl"
    monkeypatch.setenv("FAKE_TIMELINE", str(timeline))
    monkeypatch.setenv("FAKE_STAGE_SLEEP", "0.3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results: dict[int, Any] = {}

    def run(seed: int) -> None:
        # lean runs (no MLflow parent, no exp save): only the workspace lock is under test
        results[seed] = R.retrain(
            repo_dir=str(repo),
            data_seed=seed,
            exp_name=f"seed-{seed}",
            wait_for_lock_s=300,
            retry_delay_s=0.1,
            track=False,
            save_experiment_ref=False,
            return_state=True,
        )

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(state.is_completed() for state in results.values()), results

    events = [json.loads(line) for line in timeline.read_text().splitlines()]
    spans: dict[str, list[float]] = {}
    for ev in events:
        spans.setdefault(ev["pipeline"], []).append(ev["t"])
    assert set(spans) == {"seed-11", "seed-12"}
    assert len(events) == 2 * 2 * len(R.STAGES)  # both ran every stage (new seed each)
    (_, a_end), (b_start, _) = sorted((min(ts), max(ts)) for ts in spans.values())
    assert a_end < b_start, "two pipeline runs overlapped in one workspace"

    # while one run holds the workspace, a fail-fast run is rejected with the holder named
    with R.pipeline_lock(repo, holder={"flow_run": "manual-maintenance"}):
        state = R.retrain(repo_dir=str(repo), exp_name="blocked", return_state=True)
    assert state.is_failed()
    with pytest.raises(R.PipelineBusyError, match="manual-maintenance"):
        state.result()


# --------------------------------------------------------------------------- deployments
def test_served_deployment_schedule_parameters_and_limit() -> None:
    dep = build_deployment()
    assert dep.name == "nightly-retrain"
    assert [s.schedule.cron for s in dep.schedules] == [NIGHTLY_CRON] == ["0 3 * * *"]
    assert dep.parameters == NIGHTLY_PARAMETERS
    assert dep.concurrency_limit == 1
    assert dep.concurrency_options.collision_strategy == "ENQUEUE"
    assert dep.work_pool_name is None  # served: runs in the serving process

    pooled = build_deployment(work_pool="mirage-process")
    assert pooled.work_pool_name == "mirage-process"
    assert pooled.entrypoint == "flows/retrain.py:retrain"
    pull = pooled.storage.to_pull_step()  # workers run flows from this checkout
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    assert [s.schedule.cron for s in pooled.schedules] == [NIGHTLY_CRON]
    assert pooled.parameters == NIGHTLY_PARAMETERS


def test_prefect_yaml_deployments_load_the_flow() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    by_name = {d.name: d for d in model.deployments if d.entrypoint == "flows/retrain.py:retrain"}
    assert set(by_name) == {"nightly-retrain", "nightly-retrain-gpu"}
    # stage deployments: named after their pool, the stage flow (orchestration.pools)
    stages = [d for d in model.deployments if d.entrypoint == "flows/stage.py:run_stage"]
    assert stages and all(d.name == d.work_pool.name for d in stages)
    stage_flow = load_flow_from_entrypoint(f"{REPO / 'flows/stage.py'}:run_stage")
    assert stage_flow.name == "mirage-stage"
    assert len(by_name) + len(stages) == len(model.deployments)
    for dep in by_name.values():
        assert dep.entrypoint == "flows/retrain.py:retrain"
        assert [s.cron for s in dep.schedules] == [NIGHTLY_CRON]
        assert dep.parameters == NIGHTLY_PARAMETERS
        assert dep.concurrency_limit.limit == 1
        assert dep.concurrency_limit.collision_strategy == "ENQUEUE"
        path, name = dep.entrypoint.split(":")
        flow_obj = load_flow_from_entrypoint(f"{REPO / path}:{name}")
        assert flow_obj.name == R.retrain.name
        flow_obj.validate_parameters(dep.parameters)  # raises on unknown / bad params
    assert by_name["nightly-retrain"].work_pool.name == "mirage-process"
    assert by_name["nightly-retrain-gpu"].work_pool.name == "mirage-gpu"


# --------------------------------------------------------------------------- e2e
def _pipeline_ready() -> str | None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mirage"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    missing = [s for s in R.STAGES if s not in out.stdout]
    return f"mirage CLI lacks stage(s) {missing}" if missing else None


@pytest.mark.slow
@pytest.mark.e2e
def test_real_pipeline_smoke_end_to_end(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real seven stages with the smoke profile: a registered version in SQLite MLflow."""
    if reason := _pipeline_ready():
        pytest.skip(reason)
    import mlflow

    repo = copy_worktree(REPO, tmp_path / "mirage")
    for var in ("MLFLOW_TRACKING_URI", "MIRAGE_PROFILE", "MIRAGE_PARENT_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    state = R.retrain(
        repo_dir=str(repo), profile="smoke", exp_name="e2e-smoke", retries=0, return_state=True
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert all(s["reran"] for s in result["stages"])
    registry = json.loads((repo / "metrics/registry.json").read_text())
    assert registry["decision"] in ("promote", "reject")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    version = client.get_model_version(registry["model_name"], str(registry["version"]))
    assert version.tags["gate.decision"] == registry["decision"]
    children = client.search_runs(
        [client.get_run(result["parent_run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    stages = {"label", "curate", "train", "evaluate", "register"}
    assert {r.data.tags.get("stage") for r in children} >= stages
    # every run that used the policies carries their content hash
    from mirage_safety.labelling.policies import load_policies

    sha = load_policies(repo / "policies").sha256
    tagged = {r.data.tags.get("stage"): r.data.tags.get("policies_sha256") for r in children}
    assert {s: tagged[s] for s in stages} == dict.fromkeys(stages, sha)
    labelled = json.loads((repo / "data/labelled/manifest.json").read_text())
    assert labelled["policies_sha256"] == sha
    assert json.loads((repo / "metrics/curate.json").read_text())["kept"] > 0
    assert any(row["model"] == "mirage" for row in result["metrics"])
    # the embedded benchmark splits, scored by their protocols for both models, in the
    # report's Table-5 layout and in the evaluate run's MLflow metrics
    bench = json.loads((repo / "metrics/eval.json").read_text())["benchmarks"]
    for name, key in (("world_single", "asr"), ("world_oversensitive", "refusal_rate")):
        for model in ("base", "mirage"):
            assert bench[name][model]["n"] > 0 and bench[name][model]["judge_errors"] == 0
            assert isinstance(bench[name][model][key], float)
    assert "## External benchmarks" in (repo / "eval/report.md").read_text()
    # general ability through lmms-eval against a loopback server of each model; the gate
    # weighed it (helpfulness half) and its per-sample logs are kept
    evaluated = json.loads((repo / "metrics/eval.json").read_text())
    for model in ("base", "mirage"):
        g = evaluated[model]["general"]
        assert g["harness"] == "lmms-eval" and g["n"] == 40
        assert g["accuracy"] == g["tasks"]["mirage_world_general"]["score"]
        kept = repo / "eval/general" / model / "samples_mirage_world_general.jsonl"
        assert len(kept.read_text().splitlines()) == 40
    assert (
        registry["metrics"]["candidate"]["general"]["accuracy"]
        == evaluated["mirage"]["general"]["accuracy"]
    )
    assert any(c["name"] == "general degenerate answers" for c in registry["checks"])
    assert "## General capability (lmms-eval)" in (repo / "eval/report.md").read_text()
    evaluate_run = next(r for r in children if r.data.tags.get("stage") == "evaluate")
    assert "benchmarks.world_single.mirage.asr" in evaluate_run.data.metrics
