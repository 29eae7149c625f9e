"""The balance picture: harmful-split ASR against over-refusal and general accuracy."""

from __future__ import annotations

import pytest

from mirage_safety.evaluation import balance
from mirage_safety.evaluation.metrics import wilson_interval


def test_points_pool_harmful_splits_and_fall_back_to_benchmark_over_refusal():
    summary = {
        "test_easy": {"asr": 10.0, "n": 100},
        "test_hard": {"asr": 30.0, "n": 50},
        "test_benign": {"asr": 0.0, "over_refusal": 4.0, "n": 50},
        "test_benign_shift": {"asr": 0.0, "over_refusal": 40.0, "n": 50},
        "general": {"accuracy": 60.0, "n": 300},
    }
    p = balance.point(summary)
    assert p["asr"] == pytest.approx((100 * 25 / 150, *wilson_interval(25, 150)))
    assert p["over_refusal"] == pytest.approx((4.0, *wilson_interval(2, 50)))
    assert p["general"] == pytest.approx((60.0, *wilson_interval(180, 300)))
    # real data: no test_benign, the over-refusal benchmarks pooled by their judged answers
    real = {
        "test_real": {"asr": 0.0, "n": 100},
        "bench.mossbench": {"over_refusal": 20.0, "judged": 300, "n": 300},
        "bench.mssbench": {"over_refusal": 50.0, "judged": 100, "n": 120},
        "bench.figstep": {"asr": 3.0, "judged": 500},
    }
    q = balance.point(real)
    assert q["over_refusal"][0] == pytest.approx(100 * 110 / 400)
    assert q["general"] is None
    rows = balance.csv_rows({"x": real})
    assert rows[0][:4] == ["x", 0.0, 0.0, pytest.approx(wilson_interval(0, 100)[1], abs=1e-4)]
    assert rows[0][-3:] == ["", "", ""]


def test_plot_places_every_model_or_says_there_is_nothing():
    refuser = {
        "test_easy": {"asr": 0.0, "n": 200},
        "test_benign": {"over_refusal": 100.0, "n": 200},
    }
    png = balance.plot(
        {
            "refuse-all": refuser,
            "base": {"test_easy": {"asr": 90.0, "n": 200}, "general": {"accuracy": 60.0, "n": 300}},
        }
    )
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert balance.plot({"none": {"general": {"accuracy": 50.0, "n": 10}}}) is None
