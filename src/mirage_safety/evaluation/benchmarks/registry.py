"""The external benchmarks, by name: one module each in :mod:`.catalog`, listed here.

To add a benchmark: write ``catalog/<name>.py`` (what it defines: :mod:`.catalog`), import
it below and add it to :data:`MODULES`, and give it a test (a miniature copy of its published layout
in ``tests/bench_fixtures/``, its judge's prompts and parsers, its metric on hand-computed
outcomes).  ``tests/test_bench_protocols.py`` checks that every module in the catalog is
listed here and defines what the contract asks.

Everything else reads the benchmarks from here: :data:`PROTOCOLS` (scoring, the report,
the gate), :data:`LOADERS` (``mirage evaluate``), :func:`protocol_of` and
:func:`check_benchmarks` (the configured ``eval.benchmarks``).
"""

from __future__ import annotations

from collections.abc import Callable

from mirage_safety.config import BenchmarkConfig, ConfigError, EvalConfig
from mirage_safety.evaluation.benchmarks.catalog import (
    figstep,
    mis,
    mm_safetybench,
    mossbench,
    mssbench,
    siuo,
    vlguard,
    vlsbench,
    world_oversensitive,
    world_single,
)
from mirage_safety.evaluation.benchmarks.protocols import Protocol
from mirage_safety.evaluation.benchmarks.sample import BenchSample

#: every benchmark module (:data:`PROTOCOLS` keeps this order)
MODULES = (
    mis,
    vlguard,
    mm_safetybench,
    figstep,
    siuo,
    mssbench,
    vlsbench,
    mossbench,
    world_single,
    world_oversensitive,
)

PROTOCOLS: dict[str, Protocol] = {m.PROTOCOL.name: m.PROTOCOL for m in MODULES}
#: benchmark -> ``load(root, *, check_images=True)``, its published layout into samples
LOADERS: dict[str, Callable[..., list[BenchSample]]] = {m.PROTOCOL.name: m.load for m in MODULES}
#: benchmark -> (metric, inverted): its over-refusal figure (:attr:`Protocol.over_refusal`)
OVER_REFUSAL_METRICS: dict[str, tuple[str, bool]] = {
    p.name: p.over_refusal for p in PROTOCOLS.values() if p.over_refusal is not None
}


def protocol_of(name: str, cfg: BenchmarkConfig) -> Protocol:
    adapter = cfg.adapter or name
    if adapter not in PROTOCOLS:
        raise ValueError(
            f"eval.benchmarks.{name}: unknown benchmark {adapter!r} "
            f"(known: {', '.join(sorted(PROTOCOLS))}; set `adapter` to one of "
            "them to read another copy)"
        )
    return PROTOCOLS[adapter]


def check_benchmarks(cfg: EvalConfig) -> None:
    """Every configured benchmark is known and scored by judges its protocol accepts, or a
    ConfigError naming ``eval.benchmarks.<name>.<field>``.  The ``mirage`` command runs it
    when it parses the params, before any stage works (config.py knows no protocols:
    they live in this layer)."""
    for name, bench in cfg.benchmarks.items():
        try:
            proto = protocol_of(name, bench)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for where, kind in (
            ("judge", bench.judge),
            *((f"subset_judges.{k}", v) for k, v in bench.subset_judges.items()),
        ):
            if kind is not None and kind not in proto.judges:
                raise ConfigError(
                    f"eval.benchmarks.{name}.{where}: {kind!r} cannot score "
                    f"{proto.name} (its protocol accepts: "
                    f"{', '.join(proto.judges)})"
                )
