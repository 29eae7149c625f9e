"""``mirage register``: package the trained model, register it, and let the gate decide.

Every candidate (each run of this stage) becomes a new version of
``registry.model_name``, logged as an MLflow pyfunc model
(:mod:`mirage_safety.registry.pyfunc_model`; no checkpoints, no optimizer state).  The
version is tagged with

* the gate's verdict: ``gate.decision`` (promote | reject), ``gate.compared_to``,
  ``gate.reasons``;
* its gate metrics, ``metric.<split>.<metric>`` (e.g. ``metric.test_hard.asr``), so a
  later gate reads the champion's numbers from the registry itself, never from files in
  the workspace;
* its lineage: git commit, profile, sha256 of eval.json, the model's md5 in dvc.lock.

Only a promoted candidate moves the ``champion`` alias; a refused one gets
``challenger``.  The gate is :mod:`mirage_safety.registry.gate`.

Writes ``metrics/registry.json`` atomically (temp file + rename), only once the version
is registered and its alias set::

    {"model_name": "mirage", "version": 3, "decision": "promote" | "reject",
     "alias": "champion" | "challenger", "reasons": [...],
     "compared_to": "champion v2" | "none",
     "champion_version": 3,            # the champion after this decision
     "previous_champion_version": 2,   # the champion before it (null for the first)
     "metrics": {"candidate": {split: {metric: pct}}, "champion": {...} | null,
                 "base": {...} | null},
     "checks": [{"name", "split", "metric", "candidate", "reference", "limit",
                 "passed"}, ...],
     "tolerances": {"asr", "over_refusal", "general_accuracy"},
     "model_uri": "models:/mirage/3", "run_id": ..., "tracking_uri": ...}
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mirage_safety import paths
from mirage_safety.config import ConfigError, Params
from mirage_safety.evaluation import balance
from mirage_safety.evaluation.benchmarks.summaries import with_benchmarks
from mirage_safety.io import read_json, sha256_file, write_json_atomic
from mirage_safety.models.folder import ModelDirError
from mirage_safety.registry import manage
from mirage_safety.registry.gate import decide, gate_metrics
from mirage_safety.registry.manage import CHALLENGER, CHAMPION, alias_version
from mirage_safety.registry.weights_ref import choose_store, make_pointer
from mirage_safety.tracking import (
    TAG_GIT_COMMIT,
    TAG_PROFILE,
    dvc_out_md5,
    git_info,
    policies_tags,
    resolve_tracking_uri,
    stage_run,
    workspace_root,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
SUMMARY_KEYS = ("base", "mirage")
METRIC_TAG_PREFIX = "metric."
REGISTERED_BY = "mirage register"
_TAG_MAX = 5000  # MLflow's limit on a tag value


GATE_STATUS = "gate.status"  # pending -> applied (or interrupted: the run died in between)


class EvalMetricsError(ConfigError):
    """metrics/eval.json missing or not in the expected layout (exit code 2 from the CLI)."""


# --------------------------------------------------------------------------- eval.json
def load_eval_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``metrics/eval.json``: a ``mirage`` summary of per-split mappings."""
    path = Path(path)
    if not path.is_file():
        raise EvalMetricsError(f"{path}: eval metrics not found (run `mirage evaluate` first)")
    try:
        data = read_json(path)
    except ValueError as exc:
        raise EvalMetricsError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EvalMetricsError(f"{path}: expected a JSON object with 'base' and 'mirage'")
    if not isinstance(data.get("mirage"), Mapping):
        raise EvalMetricsError(
            f"{path}: field 'mirage' (the candidate's summary) is missing or not an object"
        )
    for which in SUMMARY_KEYS:
        summary = data.get(which)
        if summary is None:
            continue
        if not isinstance(summary, Mapping):
            raise EvalMetricsError(f"{path}: field {which!r} must be an object")
        for split, section in summary.items():
            if not isinstance(section, Mapping):
                raise EvalMetricsError(
                    f"{path}: field '{which}.{split}' must be an object of metrics"
                )
    return data


def flat_eval_metrics(data: Mapping[str, Any]) -> dict[str, float]:
    """``{"mirage.test_easy.asr": 0.5, ...}``: the numeric split-level metrics (MLflow run)."""

    out: dict[str, float] = {}
    for which in SUMMARY_KEYS:
        for split, values in gate_metrics(with_benchmarks(data, which)).items():
            for metric, value in values.items():
                out[f"{which}.{split}.{metric}"] = value
    return out


# --------------------------------------------------------------------------- tags
def metric_tags(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """``{split: {metric: v}}`` -> version tags ``metric.<split>.<metric>`` (repr keeps
    every digit, so the champion's number read back is the one measured)."""
    return {
        f"{METRIC_TAG_PREFIX}{split}.{metric}": repr(float(value))
        for split, values in metrics.items()
        for metric, value in values.items()
    }


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Inverse of :func:`metric_tags` (unparseable values are left out)."""
    out: dict[str, dict[str, float]] = {}
    for key, raw in tags.items():
        if not key.startswith(METRIC_TAG_PREFIX):
            continue
        split, _, metric = key[len(METRIC_TAG_PREFIX) :].rpartition(".")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if split and metric and math.isfinite(value):
            out.setdefault(split, {})[metric] = value
    return out


def _metrics_from_run(client: MlflowClient, run_id: str | None) -> dict[str, dict[str, float]]:
    """Fallback for versions registered without metric tags: the run's ``mirage.*``."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:
        return {}
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("mirage."):
            split, _, metric = key[len("mirage.") :].rpartition(".")
            if split and metric:
                out.setdefault(split, {})[metric] = float(value)
    return out


class _Gate(NamedTuple):
    decision: Any
    reasons: list[str]
    champ_version: str | None
    champ: dict[str, Any] | None


def _gate(
    client: MlflowClient,
    name: str,
    candidate: dict[str, Any],
    base: dict[str, Any] | None,
    params: Params,
) -> _Gate:
    """The gate's decision against the champion the registry holds right now."""

    champ_version, champ, champ_tags = champion_metrics(client, name)
    label = f"champion v{champ_version}"
    if champ_version and champ is None:
        # a champion set by hand from outside this pipeline: nothing to compare with,
        # so the gate refuses rather than waving the candidate through
        champ = {}
    decision = decide(candidate, champ, params.registry, champion_label=label, base=base)
    reasons = list(decision.reasons)
    if champ_version and not champ:
        reasons.insert(0, f"{label} has no recorded gate metrics (no metric.* tags)")
    champ_profile = champ_tags.get(TAG_PROFILE)
    if champ_profile and champ_profile != params.profile:
        reasons.append(
            f"note: {label} was evaluated under profile {champ_profile!r}, "
            f"the candidate under {params.profile!r}"
        )
    return _Gate(decision, reasons, champ_version, champ)


def finish_interrupted(client: MlflowClient, name: str) -> list[str]:
    """Versions a killed ``register`` left ``pending``: the one holding ``champion`` was
    promoted (its decision had been applied), every other one is marked ``interrupted``
    and holds no alias.  Returns the versions it touched."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:  # no such model yet
        return []
    champ = alias_version(client, name, CHAMPION)
    touched = []
    for mv in versions:
        if (mv.tags or {}).get(GATE_STATUS) != "pending":
            continue
        status = (
            "applied"
            if champ is not None and str(champ.version) == str(mv.version)
            else "interrupted"
        )
        if status == "interrupted":
            client.set_model_version_tag(name, mv.version, "gate.decision", "interrupted")
        client.set_model_version_tag(name, mv.version, GATE_STATUS, status)
        log.warning(
            "registry: version %s of %s was left pending by an interrupted register: marked %s",
            mv.version,
            name,
            status,
        )
        touched.append(str(mv.version))
    return touched


@contextmanager
def promotion_lock(tracking_uri: str, name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """One promotion at a time per (store, model) on this machine: an ``flock`` next to a
    SQLite store, else under the user's cache dir.  Across machines the Prefect deployment's
    concurrency limit serialises pipelines."""
    import fcntl
    import hashlib
    import time

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :] + f".{name}.register.lock")
    else:
        key = hashlib.sha256(f"{tracking_uri}|{name}".encode()).hexdigest()[:16]
        path = (
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            / "mirage"
            / f"register-{key}.lock"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: another `mirage register` has held the "
                        f"promotion lock for {timeout_s:.0f}s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def champion_metrics(
    client: MlflowClient, name: str
) -> tuple[str | None, dict[str, dict[str, float]] | None, dict[str, str]]:
    """(champion version, its gate metrics or None, its version tags) from the registry."""
    champ = alias_version(client, name, CHAMPION)
    if champ is None:
        return None, None, {}
    tags = dict(champ.tags or {})
    metrics = metrics_from_tags(tags) or _metrics_from_run(client, champ.run_id)
    return str(champ.version), metrics or None, tags


# --------------------------------------------------------------------------- stage
def register(
    params: Params,
    *,
    eval_path: str | os.PathLike[str] = paths.EVAL_METRICS,
    model_dir: str | os.PathLike[str] = paths.MODEL,
    out_path: str | os.PathLike[str] | None = paths.REGISTRY_METRICS,
    log_model: Any = None,
) -> dict[str, Any]:
    """Register the candidate in ``model_dir``, apply the gate, return registry.json's dict.

    ``log_model(model_dir, **kw) -> ModelInfo`` defaults to
    :func:`mirage_safety.registry.pyfunc_model.log_pyfunc_model`.
    """
    import mlflow

    from mirage_safety.registry.pyfunc_model import check_model_dir

    if log_model is None:
        from mirage_safety.registry.pyfunc_model import log_pyfunc_model as log_model

    eval_path, model_dir = Path(eval_path), Path(model_dir)
    data = load_eval_metrics(eval_path)  # fail before any run is opened
    check_model_dir(model_dir)
    cfg = params.registry
    name = cfg.model_name
    candidate = gate_metrics(with_benchmarks(data, "mirage"))
    base = (
        gate_metrics(with_benchmarks(data, "base"))
        if isinstance(data.get("base"), Mapping)
        else None
    )
    stage_params = {
        "registry": cfg.model_dump(mode="json"),
        "eval_path": str(eval_path),
        "model_dir": str(model_dir),
    }
    lineage = policies_tags(workspace_root() / "data")

    store = choose_store(cfg, model_dir)
    pointer = (
        make_pointer(model_dir, workspace_root(), repo=cfg.reference_repo)
        if store == "reference"
        else None
    )  # fails before any run is opened
    with stage_run(
        "register", params.tracking, stage_params, profile=params.profile, tags=lineage
    ) as run:
        client = mlflow.MlflowClient()
        mlflow.log_metrics(flat_eval_metrics(data))
        mlflow.log_dict(data, "eval/eval.json")  # metadata only; the model is logged below

        finish_interrupted(client, name)
        first = _gate(client, name, candidate, base, params)
        log.info("gate (before packaging): %s", first.reasons[0])

        extra = {"reference": pointer} if pointer is not None else {}
        info = log_model(
            model_dir,
            name="model",
            max_new_tokens=params.eval.max_new_tokens,
            batch_size=params.eval.batch_size,
            **extra,
        )
        tags = {
            GATE_STATUS: "pending",  # until the decision below is applied
            "weights.store": store,
            **(
                {"weights.rev": pointer["rev"], "weights.repo": str(pointer["repo"])[:_TAG_MAX]}
                if pointer
                else {}
            ),
            TAG_PROFILE: params.profile,
            "eval_sha256": sha256_file(eval_path),
            **metric_tags(candidate),
            **lineage,
        }
        if cfg.allow_safety_only:  # a safety-only gate is said on the version itself
            tags["gate.allow_safety_only"] = "true"
        if commit := git_info().get(TAG_GIT_COMMIT):
            tags[TAG_GIT_COMMIT] = commit
        if md5 := dvc_out_md5(model_dir, workspace_root()):
            tags["model_dvc_md5"] = md5
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
        version = str(mv.version)
        # Two registrations may race (two pipelines, a manual one): the decision that counts
        # is the one against the champion current at promotion time, taken under a lock.
        with promotion_lock(resolve_tracking_uri(params.tracking), name):
            gate = _gate(client, name, candidate, base, params)
            if gate.champ_version != first.champ_version:
                log.info(
                    "gate: the champion changed to v%s while this candidate was being "
                    "packaged: decided again against it",
                    gate.champ_version,
                )
            decision, reasons, champ_version, champ = (
                gate.decision,
                gate.reasons,
                gate.champ_version,
                gate.champ,
            )
            verdict = "promote" if decision.promote else "reject"
            for key, value in {
                "gate.decision": verdict,
                "gate.compared_to": decision.compared_to,
                "gate.reasons": "\n".join(reasons)[:_TAG_MAX],
            }.items():
                client.set_model_version_tag(name, version, key, value)
            client.update_model_version(
                name,
                version,
                description=f"MIRage candidate ({verdict}; compared to {decision.compared_to})",
            )
            champion_now: str | None  # the champion's version once the decision is applied
            if decision.promote:
                manage.set_champion(
                    client, name, version, how="gate", by=REGISTERED_BY, reason=reasons[0]
                )
                alias, champion_now = CHAMPION, version
            else:
                client.set_registered_model_alias(name, CHALLENGER, version)
                alias, champion_now = CHALLENGER, champ_version
            client.set_model_version_tag(name, version, GATE_STATUS, "applied")
        mlflow.set_tags(
            {"registered_model": name, "registered_version": version, "gate.decision": verdict}
        )
        _log_balance(
            {
                "base": base,
                f"candidate v{version}": candidate,
                f"champion v{champ_version}": champ if champ_version else None,
            }
        )
        result = {
            "model_name": name,
            "version": int(version),
            "decision": verdict,
            "alias": alias,
            "reasons": reasons,
            "compared_to": decision.compared_to,
            "champion_version": int(champion_now) if champion_now else None,
            "previous_champion_version": int(champ_version) if champ_version else None,
            "metrics": {"candidate": candidate, "champion": champ or None, "base": base},
            "checks": [c.as_dict() for c in decision.checks],
            "tolerances": {
                "asr": cfg.asr_tolerance,
                "over_refusal": cfg.over_refusal_tolerance,
                "general_accuracy": cfg.general_accuracy_tolerance,
                "judge_error": cfg.judge_error_tolerance,
                "degenerate": cfg.degenerate_tolerance,
            },
            "allow_safety_only": cfg.allow_safety_only,
            "model_uri": f"models:/{name}/{version}",
            "weights": {
                "store": store,
                **(
                    {k: pointer[k] for k in ("repo", "rev", "path", "dir_md5", "remote")}
                    if pointer
                    else {}
                ),
            },
            "run_id": run.info.run_id,
            "tracking_uri": resolve_tracking_uri(params.tracking),
        }
    for line in reasons:
        log.info("gate: %s", line)
    log.info("registered %s version %s -> @%s", name, version, alias)
    if out_path is not None:
        write_json_atomic(out_path, result)
    return result


def _log_balance(models: dict[str, dict[str, Any] | None]) -> None:
    """The balance plot of what the gate weighed (base, candidate, champion) on the run."""
    import tempfile

    import mlflow

    png = balance.plot(
        {k: v for k, v in models.items() if v}, title="What the gate weighed (95% Wilson intervals)"
    )
    if png is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "balance.png"
        path.write_bytes(png)
        mlflow.log_artifact(str(path), artifact_path="plots")


# --------------------------------------------------------------------------- CLI
def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "register",
        help="register the trained model in MLflow; the gate decides champion vs challenger",
        description=(
            "Log models/mirage as an MLflow pyfunc model (checkpoints excluded), register a new "
            "version of registry.model_name, and move @champion to it only if the gate "
            "passes (ASR on every safety split not higher, over-refusal not higher and "
            "general accuracy not lower than the champion's beyond the registry tolerances; "
            "the first version becomes champion); otherwise set @challenger. Writes "
            "metrics/registry.json."
        ),
    )
    p.add_argument(
        "--eval",
        dest="eval_path",
        default=paths.EVAL_METRICS,
        help="evaluation summary (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        dest="model_dir",
        default=paths.MODEL,
        help="trained model directory (default: %(default)s)",
    )
    p.add_argument(
        "--out", default=paths.REGISTRY_METRICS, help="registry result (default: %(default)s)"
    )
    p.set_defaults(func=_cli, params_section="registry")
    return p


#: exit status for "try again later" (EX_TEMPFAIL): the Prefect flow retries it
EXIT_TEMPFAIL = 75
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Connection aborted",
    "RemoteDisconnected",
    "Read timed out",
    "ConnectionError",
    "ConnectTimeout",
)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the tracking server could not be reached."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(marker in f"{type(seen).__name__}: {seen}" for marker in _UNREACHABLE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cli(args: argparse.Namespace, params: Params) -> int:
    import sys

    try:
        result = register(
            params, eval_path=args.eval_path, model_dir=args.model_dir, out_path=args.out
        )
    except ModelDirError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:
        if not unreachable(exc):
            raise
        # nothing was promoted: the alias only moves after the version is READY, and a
        # version left pending is marked interrupted by the next run
        print(
            f"error: the MLflow tracking server at {resolve_tracking_uri(params.tracking)} "
            f"went away or is not reachable ({type(exc).__name__}); no alias was moved. "
            "Run `mirage register` again once it is back.",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL
    champion = result["champion_version"]
    print(
        f"{result['model_name']} version {result['version']}: {result['decision']} "
        f"-> @{result['alias']} (champion: {f'v{champion}' if champion else 'none'})"
    )
    for line in result["reasons"]:
        print(f"  {line}")
    return 0
