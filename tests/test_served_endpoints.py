"""Teacher, curation judge and evaluation judge against a REAL OpenAI-compatible server:
``transformers serve`` on loopback serving a tiny random-weight VLM that the test builds
(a real LLaVA checkpoint that speaks byte soup).  Every answer must come back as a
counted malformed outcome: no crash, nothing silently dropped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mirage_safety.config import CurateConfig, EndpointConfig, EvalConfig, LabelConfig
from mirage_safety.evaluation.judges.base import JudgeInput
from mirage_safety.evaluation.judges.openai_judge import OpenAIJudge
from mirage_safety.labelling.curate import run_curate
from mirage_safety.labelling.label import run_label
from served import serve
from tiny_world import tiny_model, world_data

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
POLICIES, PROMPTS = str(REPO / "policies"), str(REPO / "prompts")


@pytest.fixture(scope="module")
def garbage_server(tmp_path_factory):
    model = tiny_model(tmp_path_factory)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve(model, log) as url:
        yield url, str(model)


def _endpoint(url: str, model: str, **kw) -> EndpointConfig:
    return EndpointConfig(
        base_url=url, model=model, timeout_s=60, max_retries=1, backoff_s=0.1, concurrency=2, **kw
    )


@pytest.mark.slow
def test_teacher_judge_and_eval_judge_count_garbage_as_malformed(
    garbage_server, tmp_path_factory, tmp_path
):
    url, model = garbage_server
    data = tmp_path / "data"
    shutil.copytree(world_data(tmp_path_factory) / "mis", data / "mis")
    recs = json.loads((data / "mis" / "train.json").read_text())[:6]
    (data / "mis" / "train.json").write_text(json.dumps(recs))

    # teacher: policy labels asked of a model that cannot write one
    cfg = LabelConfig(
        teacher="openai",
        style="policy",
        policies=POLICIES,
        prompts=PROMPTS,
        max_failure_fraction=1.0,
        openai=_endpoint(url, model, max_tokens=24),
    )
    manifest = run_label(
        cfg,
        data_dir=data,
        out_dir=data / "labelled",
        metrics_path=tmp_path / "label.json",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert manifest["labelled"] == 0 and manifest["failed"] == 6
    assert manifest["failures_by_kind"] == {"malformed": 6}
    assert manifest["completion_tokens"] > 0  # the server answered every request
    failures = [
        json.loads(x) for x in (data / "labelled" / "failures.jsonl").read_text().splitlines()
    ]
    assert all(
        f["error"].startswith(("answer cut at max_tokens", "unparseable", "empty"))
        for f in failures
    )

    # curation judge: the world's own labels scored by the same model -> no JSON verdicts
    (data / "labelled" / "train.json").write_text(json.dumps(recs))
    ccfg = CurateConfig(
        judge="openai",
        rubric=str(REPO / "prompts" / "curate_rubric.yaml"),
        max_failure_fraction=1.0,
        openai=_endpoint(url, model, max_tokens=24),
    )
    m = run_curate(
        ccfg,
        policies_dir=POLICIES,
        prompts_dir=PROMPTS,
        data_dir=data,
        out_dir=data / "curated",
        metrics_path=tmp_path / "curate.json",
        plots_path=tmp_path / "c.csv",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert m["judge_errors"] == 6 and m["kept"] == 0
    assert m["dropped_by_reason"] == {"judge_error": 6}

    # evaluation judge: every verdict a counted judge_error
    root = data / "mis"
    tests = json.loads((root / "test_hard.json").read_text())[:3]
    judge = OpenAIJudge(EvalConfig(openai=_endpoint(url, model, max_tokens=24)).openai)
    verdicts = judge.judge_many(
        [
            JudgeInput(
                id=r["id"],
                split="test_hard",
                question=r["question"],
                response="Step 1: take it.",
                image_paths=(str(root / r["image_path1"]), str(root / r["image_path2"])),
                meta=r,
            )
            for r in tests
        ],
        progress=False,
    )
    assert [v.label for v in verdicts] == ["judge_error"] * 3
    assert all(v.error for v in verdicts)
