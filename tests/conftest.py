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
