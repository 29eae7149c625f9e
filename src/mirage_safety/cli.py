"""``mirage``: one subcommand per pipeline stage, plus registry and report tools.

Each stage module exposes ``add_cli(subparsers)``, which adds its subcommand with the
command's own options and returns it; a command that reads ``params.yaml`` says which
section with ``set_defaults(params_section=...)``.  This module adds ``--params`` and
``--profile`` to those, parses and checks the params once (the typed parse in
``config.py`` plus the rules that live above it: which benchmarks exist and which judges
each accepts) and calls the handler with them: ``func(args, params)``.  Heavy imports
(torch, transformers, mlflow) happen inside the handlers, so ``mirage --help`` stays fast
and the CPU numerics of the params are set before torch loads.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from mirage_safety import __version__, numerics
from mirage_safety.config import DEFAULT_PARAMS, ConfigError, Params, load_params
from mirage_safety.data.schema import DataValidationError
from mirage_safety.evaluation.benchmarks.registry import check_benchmarks
from mirage_safety.labelling.curate import CurationError
from mirage_safety.labelling.label import LabellingError
from mirage_safety.labelling.policies import PolicyError
from mirage_safety.models.folder import ModelDirError
from mirage_safety.training.base import HubResolveError

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
        command = importlib.import_module(name).add_cli(sub)
        section = command.get_default("params_section")
        if section is not None:
            _add_params_arguments(command, section)
    return parser


def _add_params_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    used = f"; the `{section}` section is used" if section else ""
    parser.add_argument(
        "--params", default=str(DEFAULT_PARAMS), help=f"params file (default: %(default)s){used}"
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="params profile (default: $MIRAGE_PROFILE, else the params' `profile` key)",
    )


def run() -> int:
    """The ``mirage`` command (and ``python -m mirage_safety.cli``): :func:`main`, setting
    this process's CPU numerics from the params (the libraries read them once, when torch
    loads, and every subprocess inherits them).  In-process callers of :func:`main` keep
    their own environment."""
    return main(sys.argv[1:], set_numerics=True)


def main(argv: list[str] | None = None, *, set_numerics: bool = False) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        params = _load_params(args, set_numerics=set_numerics)
        result = args.func(args) if params is None else args.func(args, params)
        return int(result or 0)
    except (
        ConfigError,
        DataValidationError,
        HubResolveError,
        ModelDirError,
        PolicyError,
        LabellingError,
        CurationError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load_params(args: argparse.Namespace, *, set_numerics: bool) -> Params | None:
    """The command's params, parsed and checked once (``None`` for a command without)."""
    if getattr(args, "params_section", None) is None:
        # a command without params (serve, report...) still computes like the workspace it
        # runs in, e.g. a served model answers as the evaluate stage's in-process one does
        if set_numerics and DEFAULT_PARAMS.is_file():
            with contextlib.suppress(ConfigError):
                numerics.apply(load_params(DEFAULT_PARAMS).numerics)
        return None
    params = load_params(args.params, profile=args.profile)
    check_benchmarks(params.eval)
    if set_numerics:
        numerics.apply(params.numerics)
    return params


if __name__ == "__main__":
    sys.exit(run())
