"""MLflow tracking for pipeline stages: one parent run per pipeline, one child run per stage.

DVC owns the bytes; MLflow owns the metadata.  Every stage wraps its work in
:func:`stage_run`, which

* points MLflow at ``$MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri``.  A relative
  SQLite/file path is resolved against the repository root: ``$DVC_ROOT`` when DVC runs
  the stage, else the current directory; inside a ``dvc exp run --temp/--queue``
  workspace (``<repo>/.dvc/tmp/exps/...``) against the main repository, so every
  experiment lands in the same ``mlflow.db``;
* opens a CHILD run of the pipeline's PARENT run.  The parent is found, in order:

  1. ``$MIRAGE_PARENT_RUN_ID`` -- set by whoever owns the pipeline (the Prefect flow,
     :func:`pipeline_run`, ``python -m mirage_safety.tracking start``); the owner ends it;
  2. the run already active in this process (a flow calling stages in-process);
  3. a parent keyed by a pipeline id, created by the first stage and reused by the later
     ones: ``$MIRAGE_PIPELINE_ID`` if set, else the ``dvc repro`` / ``dvc exp run``
     process that runs this stage (its pid + start time, read from ``/proc``: every stage
     of one ``dvc repro`` shares it, two invocations never do), else the DVC experiment
     name ``$DVC_EXP_NAME``;
  4. otherwise (a stage run by hand) a new parent for this one stage.

* tags the child with the stage, profile, git commit + dirty flag, the ``dvc.lock`` hash
  of every stage (``dvc_lock.<stage>``; the lineage the run saw) and of its own stage
  (``dvc_lock_md5``), the DVC experiment name (``dvc_exp_name``, from ``$DVC_EXP_NAME``
  which ``dvc exp run`` sets) and baseline commit; logs the stage params flattened
  (``lora.r``...) and system info (tags ``system.*``).

It never logs checkpoints or data: those are DVC outs.  Inside :func:`stage_run`
``HF_MLFLOW_LOG_ARTIFACTS`` is forced off so the ``transformers`` MLflow callback cannot
upload checkpoint dirs; the only artefact the pipeline logs is the registered model
(``mirage register``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mirage_safety import numerics
from mirage_safety.config import TrackingConfig, load_params

if TYPE_CHECKING:
    import mlflow

PARENT_RUN_ENV = "MIRAGE_PARENT_RUN_ID"
PIPELINE_ID_ENV = "MIRAGE_PIPELINE_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# Set by DVC itself (dvc/env.py, dvc/stage/run.py): the repo root for every stage command,
# the stage's address, and under `dvc exp run` the experiment name and its baseline commit.
DVC_ROOT_ENV = "DVC_ROOT"
DVC_STAGE_ENV = "DVC_STAGE"
DVC_EXP_NAME_ENV = "DVC_EXP_NAME"
DVC_EXP_BASELINE_ENV = "DVC_EXP_BASELINE_REV"
# transformers' MLflowCallback uploads the whole output dir (checkpoints) when this is true
HF_LOG_ARTIFACTS_ENV = "HF_MLFLOW_LOG_ARTIFACTS"

# Tag keys (plain names so they are easy to filter on: tags.stage = 'train').
TAG_KIND = "run_kind"  # "pipeline" (parent) or "stage" (child)
TAG_STAGE = "stage"
TAG_PROFILE = "profile"
TAG_PIPELINE_ID = "pipeline_id"
TAG_GIT_COMMIT = "git_commit"
TAG_GIT_DIRTY = "git_dirty"
TAG_DVC_LOCK = "dvc_lock_md5"  # this stage's dvc.lock entry
TAG_DVC_LOCK_PREFIX = "dvc_lock."  # dvc_lock.<stage> for every stage in dvc.lock
TAG_DVC_EXP = "dvc_exp_name"
TAG_DVC_EXP_BASELINE = "dvc_exp_baseline_rev"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # shown by the MLflow UI

_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
_EXP_TMP_PARTS = (".dvc", "tmp", "exps")  # where dvc exp run --temp/--queue works


# --------------------------------------------------------------------------- locations
def workspace_root() -> Path:
    """The workspace the stage runs in: ``$DVC_ROOT`` under DVC, else the cwd (git and
    ``dvc.lock`` are read here: in a ``dvc exp`` temp workspace, that workspace's)."""
    return Path(os.environ.get(DVC_ROOT_ENV) or os.getcwd()).resolve()


def repo_root() -> Path:
    """The main repository: :func:`workspace_root`, or the repo that owns a ``dvc exp``
    temp workspace (``<repo>/.dvc/tmp/exps/<tmp>``).  Relative stores resolve here."""
    root = workspace_root()
    parts = root.parts
    n = len(_EXP_TMP_PARTS)
    for i in range(len(parts) - n):
        if parts[i : i + n] == _EXP_TMP_PARTS:
            return Path(*parts[:i])
    return root


def resolve_tracking_uri(tracking: TrackingConfig, root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` or the configured URI, relative local paths made absolute."""
    uri = os.environ.get(TRACKING_URI_ENV) or tracking.tracking_uri
    root = root or repo_root()
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :]
        # sqlite:////abs/path has a 4th slash -> absolute; anything else is relative
        if db and not db.startswith("/") and db != ":memory:":
            return f"sqlite:///{(root / db).as_posix()}"
        return uri
    if "://" not in uri and not uri.startswith("file:"):  # a bare file-store directory
        path = Path(uri)
        return str(path if path.is_absolute() else (root / path).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def configure(tracking: TrackingConfig) -> str:
    """Set this process's tracking URI and experiment (created if needed); return the
    experiment id.  Stages call it; :func:`pipeline_run` leaves the process alone."""
    import mlflow

    uri = resolve_tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(mlflow.MlflowClient(), tracking.experiment, uri)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def ensure_experiment(
    client: mlflow.MlflowClient, name: str, uri: str, root: Path | None = None
) -> str:
    """The id of experiment ``name`` in ``client``'s store, created if needed.

    With a local store the experiment's artefacts go to ``<repo>/mlruns`` (git- and
    DVC-ignored); with a server the server decides (``--artifacts-destination``).
    """
    import mlflow

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = ((root or repo_root()) / "mlruns").as_uri() if is_local_store(uri) else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except mlflow.exceptions.MlflowException:
        # another process created it between our lookup and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


# --------------------------------------------------------------------------- metadata
def _git(args: list[str], root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(root: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the workspace (empty when not a git checkout).

    Dirty means tracked or untracked-but-not-ignored changes; DVC outs, mlflow.db and
    the venv are git-ignored and do not count.
    """
    root = root or workspace_root()
    commit = _git(["rev-parse", "HEAD"], root)
    if not commit:
        return {}
    status = _git(["status", "--porcelain"], root)
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: str(bool(status)).lower()}


def _entry_md5(entry: Mapping[str, Any]) -> str:
    relevant = {k: entry.get(k) for k in ("cmd", "deps", "params", "outs")}
    canon = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.md5(canon.encode()).hexdigest()  # md5 like DVC's own hashes


def _lock_stages(root: Path) -> Mapping[str, Any]:
    """The ``stages`` mapping of ``root/dvc.lock``; empty when it is missing or unreadable
    (lineage tags are best effort, never a reason to fail a stage)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    stages = data.get("stages") if isinstance(data, Mapping) else None
    return stages if isinstance(stages, Mapping) else {}


def dvc_lock_hashes(root: Path | None = None) -> dict[str, str]:
    """``{stage: md5}`` of every stage entry (cmd, deps, params, outs) in ``dvc.lock``.

    Under ``dvc repro`` DVC rewrites a stage's lock entry after its command finishes, so
    while a stage runs its own entry is that of its *previous* completed run (absent on a
    first run) while the upstream stages' entries are those of the data it reads.
    """
    stages = _lock_stages(root or workspace_root())
    return {
        str(name): _entry_md5(entry) for name, entry in stages.items() if isinstance(entry, Mapping)
    }


def dvc_lock_hash(stage: str, root: Path | None = None) -> str | None:
    """md5 of one stage's ``dvc.lock`` entry (``DVC_STAGE`` may be ``dvc.yaml:name``)."""
    return dvc_lock_hashes(root).get(stage.rsplit(":", 1)[-1])


def dvc_out_md5(path: Path, root: Path) -> str | None:
    """md5 DVC recorded for ``path`` as some stage's out in dvc.lock (lineage tag)."""
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # not inside the repo: no out of it
        return None
    for entry in _lock_stages(root).values():
        for out in (entry or {}).get("outs") or []:
            if str(out.get("path", "")).rstrip("/") == rel:
                return out.get("md5")
    return None


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping (or pydantic model) -> ``{"a.b.c": "value"}`` strings MLflow accepts."""
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:_MAX_PARAM_LEN]
    return flat


def policies_tags(data_dir: Path | str = "data") -> dict[str, str]:
    """``{policies_sha256: ...}`` of the policies the training labels were written under
    (the curated, else the labelled, data's manifest); {} when there is none."""
    for rel in ("curated/manifest.json", "labelled/manifest.json"):
        path = Path(data_dir) / rel
        if path.is_file():
            try:
                sha = json.loads(path.read_text(encoding="utf-8")).get("policies_sha256")
            except (OSError, ValueError, AttributeError):
                continue
            if sha:
                return {"policies_sha256": str(sha)}
    return {}


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def system_info() -> dict[str, str]:
    """Python / library versions, CPU count and CUDA availability."""
    info = {
        "system.python": platform.python_version(),
        "system.platform": platform.platform(),
        "system.cpu_count": str(os.cpu_count() or 0),
        "system.cpu": numerics.cpu_model(),
    }
    for dist in ("torch", "transformers", "peft", "accelerate", "mlflow", "dvc", "prefect"):
        info[f"system.{dist}"] = _dist_version(dist)
    if "torch" in sys.modules:  # importing torch only for a tag costs seconds
        torch = sys.modules["torch"]
        cuda = bool(torch.cuda.is_available())
        info["system.cuda_available"] = str(cuda).lower()
        info.update(
            {f"system.numerics.{k}": str(v) for k, v in numerics.describe().items() if k != "cpu"}
        )
        if cuda:
            info["system.cuda_device_count"] = str(torch.cuda.device_count())
            info["system.cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _profile(params: Mapping[str, Any] | Any | None, profile: str | None) -> str:
    if profile:
        return profile
    if params is not None:
        value = getattr(params, "profile", None)
        if value is None and isinstance(params, Mapping):
            value = params.get("profile")
        if isinstance(value, str):
            return value
    return os.environ.get("MIRAGE_PROFILE") or "default"


def run_tags(stage: str, profile: str) -> dict[str, str]:
    """The lineage tags every stage run carries."""
    root = workspace_root()
    tags: dict[str, str] = {TAG_KIND: "stage", TAG_STAGE: stage, TAG_PROFILE: profile}
    git = git_info(root)
    tags.update(git)
    if TAG_GIT_COMMIT in git:
        tags[MLFLOW_GIT_COMMIT] = git[TAG_GIT_COMMIT]
    hashes = dvc_lock_hashes(root)
    tags.update({f"{TAG_DVC_LOCK_PREFIX}{name}": md5 for name, md5 in hashes.items()})
    own = (os.environ.get(DVC_STAGE_ENV) or stage).rsplit(":", 1)[-1]
    if own in hashes:
        tags[TAG_DVC_LOCK] = hashes[own]
    if exp := os.environ.get(DVC_EXP_NAME_ENV):
        tags[TAG_DVC_EXP] = exp
    if baseline := os.environ.get(DVC_EXP_BASELINE_ENV):
        tags[TAG_DVC_EXP_BASELINE] = baseline
    return tags


# --------------------------------------------------------------------------- runs
def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[1]), fields[19]
    except (IndexError, ValueError):
        return None


def _is_dvc_pipeline(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    names = [Path(a).name for a in argv if a]
    if "dvc" not in names:
        return False
    rest = names[names.index("dvc") + 1 :]
    return "repro" in rest or ("exp" in rest and "run" in rest)


def dvc_invocation_key(max_depth: int = 8) -> str | None:
    """``dvc-<pid>-<start>`` of the ``dvc repro`` / ``dvc exp run`` running this stage.

    DVC runs each stage command as a child (through a shell) of one process, so every
    stage of one invocation finds the same ancestor, and pid + start time never repeat.
    None outside DVC (``$DVC_ROOT`` unset) or where ``/proc`` is unavailable.
    """
    if not os.environ.get(DVC_ROOT_ENV):
        return None
    pid = os.getppid()
    for _ in range(max_depth):
        if pid <= 1:
            return None
        stat = _proc_stat(pid)
        if stat is None:
            return None
        if _is_dvc_pipeline(pid):
            return f"dvc-{pid}-{stat[1]}"
        pid = stat[0]
    return None


def pipeline_key() -> str | None:
    """The key the stages of one pipeline execution share (see the module doc)."""
    if key := os.environ.get(PIPELINE_ID_ENV):
        return key
    if key := dvc_invocation_key():
        return key
    if exp := os.environ.get(DVC_EXP_NAME_ENV):
        return f"dvc-exp-{exp}"
    return None


def _find_or_create_parent(experiment_id: str, key: str | None, profile: str) -> str:
    """Parent run for ``key`` (reused across stage processes), or a fresh one if no key."""
    import mlflow

    client = mlflow.MlflowClient()
    if key:
        escaped = key.replace("'", "\\'")
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{TAG_KIND} = 'pipeline' and tags.{TAG_PIPELINE_ID} = '{escaped}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            return found[0].info.run_id
    return create_pipeline_run(
        client,
        experiment_id,
        name=f"pipeline-{key}" if key else "pipeline",
        profile=profile,
        tags={TAG_PIPELINE_ID: key} if key else None,
    )


def create_pipeline_run(
    client: mlflow.MlflowClient,
    experiment_id: str,
    *,
    name: str,
    profile: str,
    tags: Mapping[str, str] | None = None,
    root: Path | None = None,
) -> str:
    """Create a pipeline's parent run; return its id.  Every parent is made here, so
    every parent carries the same lineage tags (kind, profile, git commit and dirty flag,
    the DVC experiment name) whoever opens it: a stage, :func:`pipeline_run`, the Prefect
    flow or ``python -m mirage_safety.tracking start``."""
    git = git_info(root)
    all_tags = {TAG_KIND: "pipeline", TAG_PROFILE: profile, **git}
    if TAG_GIT_COMMIT in git:
        all_tags[MLFLOW_GIT_COMMIT] = git[TAG_GIT_COMMIT]
    if exp := os.environ.get(DVC_EXP_NAME_ENV):
        all_tags[TAG_DVC_EXP] = exp
    all_tags.update(tags or {})
    return str(client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id)


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextmanager
def stage_run(
    stage: str,
    tracking: TrackingConfig,
    params: Mapping[str, Any] | Any | None = None,
    *,
    profile: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Run one pipeline stage as a child MLflow run (see the module doc for the parent).

    ``params`` (a mapping or pydantic model, e.g. the stage's config slice) is logged
    flattened.  The yielded run is the active fluent run, so ``mlflow.log_metric`` etc.
    inside the block go to it.  An exception marks the child (and a parent this call
    manages) FAILED and propagates.
    """
    import mlflow

    experiment_id = configure(tracking)
    prof = _profile(params, profile)
    client = mlflow.MlflowClient()

    owned_parent = False  # a parent found/created by key is closed here after each stage
    parent_id = os.environ.get(PARENT_RUN_ENV)
    active = mlflow.active_run()
    if active is not None and parent_id and active.info.run_id != parent_id:
        raise RuntimeError(
            f"${PARENT_RUN_ENV}={parent_id} but run {active.info.run_id} is active in this "
            "process; end it or unset the variable"
        )
    if not parent_id and active is not None:
        parent_id = active.info.run_id
    if not parent_id:
        parent_id = _find_or_create_parent(experiment_id, pipeline_key(), prof)
        owned_parent = True
    parent = client.get_run(parent_id)  # fails clearly on a wrong MIRAGE_PARENT_RUN_ID
    # keep children next to their parent (the flow may use another experiment)
    experiment_id = parent.info.experiment_id
    if owned_parent and parent.info.status != "RUNNING":
        client.update_run(parent_id, status="RUNNING")  # reopened by a later stage

    all_tags = run_tags(stage, prof)
    if tags:
        all_tags.update(tags)
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=stage,
        parent_run_id=parent_id,
        nested=active is not None,
        tags=all_tags,
    )
    status = "FAILED"
    try:
        with run, _env(HF_LOG_ARTIFACTS_ENV, "FALSE"):
            if params is not None:
                mlflow.log_params(flatten_params(params))
            mlflow.set_tags(system_info())
            yield run
            status = "FINISHED"
    finally:
        if owned_parent:
            # the parent lives as long as its last stage; reopen-by-key keeps it current
            client.set_terminated(parent_id, status=status)


@dataclass(frozen=True)
class PipelineRun:
    """An open parent run: the client on its store, its id and the store's URI (which
    child processes get as ``$MLFLOW_TRACKING_URI``)."""

    client: mlflow.MlflowClient
    run_id: str
    tracking_uri: str


@contextmanager
def pipeline_run(
    tracking: TrackingConfig,
    *,
    name: str = "pipeline",
    tags: Mapping[str, str] | None = None,
    profile: str | None = None,
    root: Path | None = None,
    export: bool = True,
) -> Iterator[PipelineRun]:
    """Open a pipeline's parent run for the block; it ends FINISHED, or FAILED if the block
    raises.

    The store, the artefact root and the git commit are resolved against ``root`` (default:
    the current repository), so a Prefect worker outside the repo opens the same run.  This
    process's MLflow globals are left alone.  With ``export`` the block runs with
    ``$MIRAGE_PARENT_RUN_ID`` set, so the stages of a ``dvc repro`` started inside it
    become its children; without it the caller hands the id to its subprocesses itself.
    """
    import mlflow

    uri = resolve_tracking_uri(tracking, root=root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(client, tracking.experiment, uri, root)
    run_id = create_pipeline_run(
        client, exp_id, name=name, profile=_profile(None, profile), tags=tags, root=root
    )
    status = "FAILED"
    try:
        with _env(PARENT_RUN_ENV, run_id) if export else nullcontext():
            yield PipelineRun(client, run_id, uri)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)


def main(argv: list[str] | None = None) -> int:
    """``python -m mirage_safety.tracking start|end``: parent runs for shell pipelines.

    ``start`` prints a new parent run id (``export MIRAGE_PARENT_RUN_ID=$(...)``);
    ``end RUN_ID [--status FAILED]`` closes it.
    """
    import argparse

    import mlflow

    parser = argparse.ArgumentParser(prog="python -m mirage_safety.tracking")
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start")
    start.add_argument("--name", default="pipeline")
    end = sub.add_parser("end")
    end.add_argument("run_id")
    end.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    if args.cmd == "start":
        uri = resolve_tracking_uri(cfg.tracking)
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp_id = ensure_experiment(client, cfg.tracking.experiment, uri)
        print(create_pipeline_run(client, exp_id, name=args.name, profile=cfg.profile))
    else:
        mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(cfg.tracking)).set_terminated(
            args.run_id, status=args.status
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
