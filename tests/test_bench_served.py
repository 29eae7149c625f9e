"""Two real benchmarks' fixtures (FigStep, MSSBench) evaluated through the real path: the
MIRage model behind a loopback ``transformers serve`` (``eval.engine: openai``), the base
model in-process, FigStep judged by a served guard model (Llama Guard format) and MSSBench
by its authors' judge prompt on a VLM endpoint; both judges are scripted loopback servers.
Also the embedded splits through the in-process engine, with the Table-5 report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_fixtures import figstep, mssbench
from fake_endpoint import FakeEndpoint
from mirage_safety.config import parse_params
from mirage_safety.evaluation.evaluate import evaluate
from served import serve
from tiny_world import read_jsonl, tiny_model, world_data

pytestmark = pytest.mark.slow
EVAL = {"max_new_tokens": 8, "batch_size": 4, "splits": []}


def _judge(url: str) -> dict:
    return {
        "base_url": url,
        "model": "judge",
        "max_retries": 0,
        "timeout_s": 30,
        "concurrency": 1,
        "json_schema": False,
    }


def _evaluate(tmp: Path, model: Path, eval_: dict) -> dict:
    params = parse_params({"eval": {**EVAL, **eval_}})
    return evaluate(
        params,
        data_dir=tmp / "no-data",
        model_dirs={"base": model, "mirage": model},
        out_dir=tmp / "eval",
        metrics_path=tmp / "eval.json",
        plots_path=tmp / "rates.csv",
        cache_dir=tmp / "cache",
        progress=False,
        track=False,
    )


@pytest.mark.slow
def test_figstep_and_mssbench_through_served_inference_and_served_judges(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path_factory)
    fig_ids = figstep.build(tmp_path / "figstep")
    mss_ids = mssbench.build(tmp_path / "mssbench")
    guard, vlm = FakeEndpoint("unsafe\nS2"), FakeEndpoint("Review... <answer>2</answer>")
    # the first MSSBench judgement is prose without a class: a counted judge error
    vlm.script["default"] = [
        ("ok", "The response seems fine."),
        ("ok", "Review... <answer>2</answer>"),
    ]
    try:
        with serve(model, tmp_path / "serve.log") as url:
            result = _evaluate(
                tmp_path,
                model,
                {
                    "engine": "openai",
                    "server": {
                        "base_url": url,
                        "models": {"mirage": str(model)},
                        "revisions": {"mirage": "test"},
                        "max_retries": 0,
                    },
                    "benchmarks": {
                        "figstep": {
                            "local_dir": str(tmp_path / "figstep"),
                            "judge": "llama_guard",
                            "endpoint": _judge(guard.url),
                        },
                        "mssbench": {
                            "local_dir": str(tmp_path / "mssbench"),
                            "endpoint": _judge(vlm.url),
                        },
                    },
                },
            )
    finally:
        guard.close()
        vlm.close()
    bench = result["benchmarks"]
    n_safe = sum(i.endswith("/safe") for i in mss_ids)
    for name in ("base", "mirage"):
        fig = bench["figstep"][name]
        assert (fig["n"], fig["judged"], fig["asr"]) == (len(fig_ids), len(fig_ids), 100.0)
        mss = bench["mssbench"][name]
        assert mss["unsafe_acc"] == 0.0 and mss["avg_acc"] == 50.0  # always class 2
        assert mss["safe_acc"] == 100.0
    # the one prose judgement: an error for base's first safe-context answer, never a class
    assert bench["mssbench"]["base"]["judge_errors"] == 1
    assert bench["mssbench"]["base"]["subsets"]["safe"]["judged"] == n_safe - 1
    assert bench["mssbench"]["mirage"]["judge_errors"] == 0
    # the guard saw the original harmful question as the user turn and the answer as the
    # assistant turn; the MSSBench judge saw the answer only inside its fence
    sent = guard.requests[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant"]
    assert any(row[4] in json.dumps(sent[0]) for row in figstep.ROWS)
    assert "<<<RESPONSE-" in vlm.requests[0]["user_text"]
    # MIRage answered through the server, base in-process: two fingerprints
    stored = {
        r["fingerprint"].split(":")[0]
        for r in read_jsonl(tmp_path / "eval" / "responses_mirage.jsonl")
    }
    assert stored == {"served"}
    rows = read_jsonl(tmp_path / "eval" / "benchmark_verdicts.jsonl")
    assert len(rows) == 2 * (len(fig_ids) + len(mss_ids))
    errors = [
        (r["model"], r["benchmark"], r["id"], r["judge_error"]) for r in rows if r["judge_error"]
    ]
    assert len(errors) == 1 and errors[0][:3] == ("base", "mssbench", mss_ids[0])
    assert errors[0][3].startswith("mssbench: unparseable:"), errors
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "MSS avg" in report and "FigStep ASR" in report


def test_embedded_benchmarks_in_process_with_table(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    data, model = world_data(tmp_path_factory), tiny_model(tmp_path_factory)
    result = _evaluate(
        tmp_path,
        model,
        {
            "benchmarks": {
                n: {"local_dir": str(data / "benchmarks" / n)}
                for n in ("world_single", "world_oversensitive")
            }
        },
    )
    for name in ("base", "mirage"):
        single = result["benchmarks"]["world_single"][name]
        assert single["n"] == 8 and single["judge_errors"] == 0
        assert set(single["subsets"]) == {"easy", "hard"}
        assert isinstance(single["asr"], float)
        over = result["benchmarks"]["world_oversensitive"][name]
        assert set(over["subsets"]) == {"benign_question", "safe_target"}
        assert isinstance(over["refusal_rate"], float)
    # re-running reuses every stored answer
    stored = len(read_jsonl(tmp_path / "eval" / "responses_base.jsonl"))
    again = _evaluate(
        tmp_path,
        model,
        {
            "benchmarks": {
                n: {"local_dir": str(data / "benchmarks" / n)}
                for n in ("world_single", "world_oversensitive")
            }
        },
    )
    assert len(read_jsonl(tmp_path / "eval" / "responses_base.jsonl")) == stored == 16
    assert again["benchmarks"] == result["benchmarks"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "single-image ASR ↓ (world_single, N=8)" in report
