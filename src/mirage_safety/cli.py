"""``mirage``: one subcommand per pipeline stage, plus registry and report tools.

Each stage module exposes ``add_cli(subparsers)`` which adds its subcommand and sets
``func`` on it; heavy imports (torch, transformers, mlflow) happen inside the handlers
so ``mirage --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from mirage_safety import __version__, numerics
from mirage_safety.config import ConfigError
from mirage_safety.data.schema import DataValidationError

# Order is the order a sample travels: generate -> label -> curate -> base -> train ->
# evaluate -> register.
_STAGE_MODULES = (
    "mirage_safety.data.generate",
    "mirage_safety.labelling.label",
    "mirage_safety.labelling.curate",
    "mirage_safety.training.base",
    "mirage_safety.models.tiny_hub",
    "mirage_safety.training.train",
    "mirage_safety.evaluation.evaluate",
    "mirage_safety.evaluation.rejudge",
    "mirage_safety.registry.register",
    "mirage_safety.registry.manage",
    "mirage_safety.serve",
    "mirage_safety.report",
    "mirage_safety.summary",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirage",
        description="MIRage safety fine-tuning pipeline (stages run by `dvc repro`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not implemented yet
                continue
            raise
        module.add_cli(sub)
    return parser


def run() -> int:
    """The ``mirage`` command (and ``python -m mirage_safety.cli``): the CPU numerics of its
    params first, since the libraries read them once, before anything imports torch; then
    :func:`main`.  In-process callers of :func:`main` keep their own environment."""
    numerics.apply_for_command(sys.argv[1:])
    return main()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mirage_safety.labelling.curate import CurationError
    from mirage_safety.labelling.label import LabellingError
    from mirage_safety.labelling.policies import PolicyError
    from mirage_safety.models.folder import ModelDirError
    from mirage_safety.training.base import HubResolveError

    try:
        _check_params(args)
        return int(args.func(args) or 0)
    except (ConfigError, DataValidationError, HubResolveError, ModelDirError, PolicyError,
            LabellingError, CurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _check_params(args: argparse.Namespace) -> None:
    """The checks of a command's params whose rules live above ``config.py`` (which
    benchmarks exist and which judges each accepts), before the command does any work."""
    params_path = getattr(args, "params", None)
    if not params_path or not Path(params_path).is_file():
        return  # a command without params, or one that reports the missing file itself
    from mirage_safety.config import load_params
    from mirage_safety.evaluation.benchmarks.protocols import check_benchmarks

    check_benchmarks(load_params(params_path, profile=getattr(args, "profile", None)).eval)


if __name__ == "__main__":
    sys.exit(run())
