"""Fixtures shared by the test modules (helper modules next to this file hold the data
builders; no test module imports another)."""

from __future__ import annotations

import pytest

# module-scoped fixtures defined in helper modules, available to every test module
pytest_plugins = ["sft_world"]


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch / OpenMP thread: tests run two at a time on the 2-core machines they are
    timed on, and ``run_sft`` honours ``OMP_NUM_THREADS``."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- fast loop
#: a test not marked ``slow`` or ``e2e`` should take less than this (seconds, setup and
#: call): ``make test-fast`` runs only those, and is meant to stay under two minutes
FAST_LIMIT_S = 3.0
_too_slow: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown" or "slow" in report.keywords or "e2e" in report.keywords:
        return
    _too_slow[report.nodeid] = _too_slow.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    over = {k: v for k, v in _too_slow.items() if v > FAST_LIMIT_S}
    if over:
        terminalreporter.section("unmarked slow tests")
        terminalreporter.write_line(
            f"{len(over)} test(s) not marked slow took over {FAST_LIMIT_S:.0f} s; mark them "
            "@pytest.mark.slow so `make test-fast` stays fast:"
        )
        for nodeid, seconds in sorted(over.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"  {seconds:6.1f} s  {nodeid}")
