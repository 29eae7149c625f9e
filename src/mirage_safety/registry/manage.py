"""``mirage registry promote VERSION | rollback | show``: move the ``champion`` alias by hand.

Aliases (MLflow 3): ``champion`` is what ``models:/mirage@champion`` serves;
``challenger`` marks the latest candidate the gate refused.  Every champion change --
through the gate (``mirage register``), ``promote`` or ``rollback`` -- is recorded

* on the registered model: tag ``champion_history`` (a JSON list of versions, oldest
  first, the current champion last) and tag ``previous_champion``, so ``rollback`` knows
  where to go back to;
* on the new champion version: ``champion.how`` (gate | manual | rollback),
  ``champion.by`` (who: the user, or ``mirage register``), ``champion.reason`` (why),
  ``champion.since`` (UTC) and ``champion.previous`` (the champion it replaced).

A manual ``promote`` bypasses the gate on purpose (a human decision); the version's gate
verdict stays visible in its ``gate.*`` tags and a refused one is warned about.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from mirage_safety.config import Params
from mirage_safety.tracking import resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
PREVIOUS_TAG = "previous_champion"
_HISTORY_MAX = 200  # keep the tag small; older entries are beyond any sensible rollback
_TAG_MAX = 5000  # MLflow's limit on a tag value


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


def _v(version: Any) -> str:
    """MLflow 3 returns versions as int, tags and aliases take str: compare as str."""
    return str(version)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None (no alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # no such model: RESOURCE_DOES_NOT_EXIST; no such alias: INVALID_PARAMETER_VALUE
        # "Registered model alias ... not found" (connection errors must propagate)
        unset_alias = (
            exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()
        )
        if _not_found(exc) or unset_alias:
            return None
        raise


def _require_model(client: MlflowClient, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            raise RegistryError(
                f"registered model {name!r} does not exist (tracking URI: {_uri()})"
            ) from None
        raise


def _uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def _require_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    _require_model(client, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _not_found(exc) or "invalid" in str(exc).lower():
            known = ", ".join(_v(v.version) for v in _versions(client, name)) or "none"
            raise RegistryError(
                f"model {name!r} has no version {version!r} (versions: {known})"
            ) from None
        raise


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Champion versions oldest first; the current champion last (alias set by hand included)."""
    model = _require_model(client, name)
    raw = (model.tags or {}).get(HISTORY_TAG, "[]")
    try:
        history = [str(v) for v in json.loads(raw)]
    except (ValueError, TypeError):
        history = []
    current = alias_version(client, name, CHAMPION)
    if current is not None and (not history or history[-1] != _v(current.version)):
        history.append(_v(current.version))  # someone moved the alias outside these tools
    return history


def _save_history(client: MlflowClient, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-_HISTORY_MAX:]))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def current_user() -> str:
    """Who runs the command (recorded on manual promotions and rollbacks)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return os.environ.get("USER") or "unknown"


def set_champion(
    client: MlflowClient,
    name: str,
    version: str | int,
    *,
    how: str,
    by: str,
    reason: str | None = None,
    history: list[str] | None = None,
) -> str | None:
    """Point ``champion`` at ``version``, record who/why/previous; return the previous one.

    ``how`` is ``gate``, ``manual`` or ``rollback``.  ``history`` replaces the stored
    history (rollback passes it already ending in ``version``); by default ``version`` is
    appended.  A version that held ``challenger`` loses that alias: it is no longer one.
    """
    mv = _require_version(client, name, version)
    version = _v(mv.version)
    current = alias_version(client, name, CHAMPION)
    previous = _v(current.version) if current is not None else None
    if history is None:
        history = champion_history(client, name)
        if history[-1:] != [version]:
            history.append(version)
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and _v(challenger.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    _save_history(client, name, history)
    tags = {"champion.how": how, "champion.by": by, "champion.since": _now()}
    if reason:
        tags["champion.reason"] = reason[:_TAG_MAX]
    # "previous" = where a rollback would go: the champion before this one in the history
    # (after a rollback that is the one before the restored version, not the one undone)
    back_to = history[-2] if len(history) >= 2 else None
    if back_to is not None:
        tags["champion.previous"] = back_to
        client.set_registered_model_tag(name, PREVIOUS_TAG, back_to)
    else:
        if "champion.previous" in (mv.tags or {}):
            client.delete_model_version_tag(name, version, "champion.previous")
        if PREVIOUS_TAG in (_require_model(client, name).tags or {}):
            client.delete_registered_model_tag(name, PREVIOUS_TAG)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


def set_challenger(client: MlflowClient, name: str, version: str | int) -> None:
    client.set_registered_model_alias(name, CHALLENGER, _v(version))


def promote(
    client: MlflowClient,
    name: str,
    version: str | int,
    *,
    reason: str | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Make ``version`` the champion (no gate); the old champion stays in the history."""
    mv = _require_version(client, name, version)
    version = _v(mv.version)
    current = alias_version(client, name, CHAMPION)
    gate = (mv.tags or {}).get("gate.decision")
    if current is not None and _v(current.version) == version:
        return {
            "model_name": name,
            "champion_version": int(version),
            "previous_champion_version": int(version),
            "changed": False,
            "gate_decision": gate,
        }
    previous = set_champion(
        client,
        name,
        version,
        how="manual",
        by=by or current_user(),
        reason=reason or "manual promotion",
    )
    return {
        "model_name": name,
        "champion_version": int(version),
        "previous_champion_version": int(previous) if previous else None,
        "changed": True,
        "gate_decision": gate,
    }


def rollback(
    client: MlflowClient, name: str, *, reason: str | None = None, by: str | None = None
) -> dict[str, Any]:
    """Move ``champion`` back to the previous champion (history tag, else the champion's
    ``champion.previous`` tag)."""
    history = champion_history(client, name)
    recorded = HISTORY_TAG in (_require_model(client, name).tags or {})
    if len(history) < 2:
        current_mv = alias_version(client, name, CHAMPION)
        # no history tag at all (aliases set by other tools): trust the version's tag
        previous = (
            (current_mv.tags or {}).get("champion.previous")
            if current_mv is not None and not recorded
            else None
        )
        if current_mv is None or not previous:
            raise RegistryError(
                f"nothing to roll back for model {name!r}: "
                + (
                    f"version {current_mv.version} is the only champion so far"
                    if current_mv
                    else "it has no champion"
                )
            )
        history = [previous, _v(current_mv.version)]
    current = history.pop()
    target = history[-1]
    try:
        _require_version(client, name, target)
    except RegistryError:
        raise RegistryError(
            f"cannot roll back model {name!r} from version {current}: the "
            f"previous champion, version {target}, no longer exists"
        ) from None
    why = f"rolled back from version {current}" + (f": {reason}" if reason else "")
    set_champion(
        client, name, target, how="rollback", by=by or current_user(), reason=why, history=history
    )
    client.set_model_version_tag(name, current, "champion.rolled_back_at", _now())
    return {
        "model_name": name,
        "champion_version": int(target),
        "previous_champion_version": int(current),
        "changed": True,
    }


def show(client: MlflowClient, name: str) -> dict[str, Any]:
    """Aliases, champion history and every version with its gate verdict."""
    model = _require_model(client, name)
    aliases = {k: int(v) for k, v in (getattr(model, "aliases", {}) or {}).items()}
    versions = []
    for mv in _versions(client, name):
        tags = mv.tags or {}
        versions.append(
            {
                "version": int(mv.version),
                # search results carry no aliases in MLflow 3: invert the model's alias map
                "aliases": sorted(a for a, v in aliases.items() if v == int(mv.version)),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "gate_decision": tags.get("gate.decision"),
                "compared_to": tags.get("gate.compared_to"),
                "champion_how": tags.get("champion.how"),
            }
        )
    champion = alias_version(client, name, CHAMPION)
    challenger = alias_version(client, name, CHALLENGER)
    return {
        "model_name": name,
        "tracking_uri": _uri(),
        "champion_version": int(champion.version) if champion else None,
        "challenger_version": int(challenger.version) if challenger else None,
        "aliases": aliases,
        "champion_history": champion_history(client, name),
        "versions": versions,
    }


# --------------------------------------------------------------------------- CLI
def _client(args: argparse.Namespace, params: Params) -> tuple[MlflowClient, str]:
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri(params.tracking))
    return mlflow.MlflowClient(), args.model_name or params.registry.model_name


def _cli_promote(args: argparse.Namespace, params: Params) -> int:
    client, name = _client(args, params)
    out = promote(client, name, args.version, reason=args.reason, by=args.by)
    if not out["changed"]:
        print(f"version {out['champion_version']} of {name!r} is already the champion")
        return 0
    if out["gate_decision"] == "reject":
        print(
            f"warning: the gate refused version {out['champion_version']}; promoting it "
            "anyway as asked",
            file=sys.stderr,
        )
    print(
        f"{name}@{CHAMPION} -> version {out['champion_version']} "
        f"(was {out['previous_champion_version'] or 'none'})"
    )
    return 0


def _cli_rollback(args: argparse.Namespace, params: Params) -> int:
    client, name = _client(args, params)
    out = rollback(client, name, reason=args.reason, by=args.by)
    print(
        f"{name}@{CHAMPION} -> version {out['champion_version']} "
        f"(rolled back from {out['previous_champion_version']})"
    )
    return 0


def _cli_show(args: argparse.Namespace, params: Params) -> int:
    client, name = _client(args, params)
    info = show(client, name)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"model {name!r} at {info['tracking_uri']}")
    print(f"  champion:   {info['champion_version'] or '-'}")
    print(f"  challenger: {info['challenger_version'] or '-'}")
    print(f"  history:    {' -> '.join(info['champion_history']) or '-'}")
    for v in info["versions"]:
        aliases = ",".join(v["aliases"]) or "-"
        print(
            f"  v{v['version']:<4} aliases={aliases:<20} gate={v['gate_decision'] or '-':<8} "
            f"vs {v['compared_to'] or '-'}"
        )
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace, params: Params) -> int:
        try:
            return func(args, params)
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "registry",
        help="show the MLflow registry, promote a version or roll the champion back",
        description=(
            "Manage the registered MIRage model's aliases. `promote VERSION` moves "
            "@champion to VERSION without the gate; `rollback` moves it back to the previous "
            "champion; `show` lists versions, aliases and gate verdicts. Tracking URI: "
            "$MLFLOW_TRACKING_URI or params' tracking.tracking_uri."
        ),
    )
    p.set_defaults(params_section="registry")
    p.add_argument(
        "--model-name", default=None, help="registered model (default: params' registry.model_name)"
    )
    rsub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    pr = rsub.add_parser("promote", help="make VERSION the champion (bypasses the gate)")
    pr.add_argument("version", help="model version number")
    pr.add_argument(
        "--reason", "--note", default=None, help="why (stored as the version tag champion.reason)"
    )
    pr.add_argument("--by", default=None, help="who (tag champion.by; default: the current user)")
    pr.set_defaults(func=_guard(_cli_promote))
    rb = rsub.add_parser("rollback", help="restore the previous champion")
    rb.add_argument("--reason", default=None, help="why (stored with the rollback)")
    rb.add_argument("--by", default=None, help="who (default: the current user)")
    rb.set_defaults(func=_guard(_cli_rollback))
    sh = rsub.add_parser("show", help="versions, aliases and gate verdicts")
    sh.add_argument("--json", action="store_true", help="machine-readable output")
    sh.set_defaults(func=_guard(_cli_show))
    return p
