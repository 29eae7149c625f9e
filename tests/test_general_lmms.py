"""General capability through lmms-eval (its own environment, `.venv-lmms`) against a real
loopback `transformers serve` of a tiny VLM, on the world's general split as the lmms-eval
task `generate` writes: the parsed score equals a hand computation from lmms-eval's logged
samples and the project's exact match on the in-process answers; a broken task, an unknown
task and an unreachable server are clear errors, never a silent 0."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import torch

from mirage_safety.config import GeneralEvalConfig, parse_params
from mirage_safety.data.lmms_task import TASK, TASK_DIR
from mirage_safety.evaluation import general
from mirage_safety.evaluation.engines import make_engine
from mirage_safety.labelling.formats import exact_match
from mirage_safety.models.serving import free_port
from tiny_world import read_jsonl, tiny_model, world_data

MAX_NEW = 8
N_DOCS = 6


def _cfg(**kw: Any) -> GeneralEvalConfig:
    return GeneralEvalConfig(
        **{"tasks": {TASK: {"metric": "exact_match"}}, "include_path": [], "max_retries": 1, **kw}
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the world whose first general docs get, for every other one, the model's
    own in-process answer as the reference: a score of exactly one half if lmms-eval sends
    the served model the same prompt and images the in-process engine sees."""
    torch.set_num_threads(1)
    data = tmp_path_factory.mktemp("lmms") / "data"
    shutil.copytree(world_data(tmp_path_factory), data)
    model = tiny_model(tmp_path_factory, 0)
    docs = json.loads((data / "general" / "test.json").read_text())[:N_DOCS]
    params = parse_params({"eval": {"max_new_tokens": MAX_NEW, "batch_size": 4}})
    engine = make_engine("base", model, params.eval)
    from mirage_safety.data.image_packs import image_at

    root = data / "general"
    answers = [
        a.text
        for a in engine.answer(
            [
                (
                    d["question"],
                    [image_at(root, d["image_path1"]), image_at(root, d["image_path2"])],
                )
                for d in docs
            ],
            progress=False,
        )
    ]
    for i, doc in enumerate(docs):
        doc["answer"] = answers[i] if i % 2 == 0 else "not what it says"
    (root / "test.json").write_text(json.dumps(docs))
    return {"data": data, "model": model, "answers": answers, "params": params}


@pytest.mark.slow
def test_scores_from_a_real_served_model_equal_the_hand_computation(setup, tmp_path):
    data, cfg = setup["data"], _cfg(include_path=[str(setup["data"] / TASK_DIR)])
    with general.target_for(
        "base", setup["model"], setup["params"].eval, log_dir=tmp_path / "logs"
    ) as target:
        assert target.base_url.startswith("http://127.0.0.1:")
        got = general.run(
            cfg,
            target,
            tmp_path / "out",
            max_new_tokens=MAX_NEW,
            data_dir=data,
            keep=tmp_path / "kept",
        )
    samples = read_jsonl(next((tmp_path / "out").rglob(f"*_samples_{TASK}.jsonl")))
    # only the per-sample log is kept (the results file and the log carry dates and paths)
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [f"samples_{TASK}.jsonl"]
    assert read_jsonl(tmp_path / "kept" / f"samples_{TASK}.jsonl") == samples
    assert len(samples) == N_DOCS
    responses = [general._response(s) for s in sorted(samples, key=lambda s: s["doc_id"])]
    # the served model answered exactly what the in-process engine answered
    assert responses == setup["answers"]
    by_hand = (
        100.0 * sum(exact_match(general._response(s), s["target"]) for s in samples) / len(samples)
    )
    task = got["tasks"][TASK]
    assert task["score"] == pytest.approx(by_hand) == pytest.approx(50.0)
    assert (task["n"], task["metric"], got["n"], got["harness"]) == (
        N_DOCS,
        "exact_match",
        N_DOCS,
        "lmms-eval",
    )
    assert got["accuracy"] == pytest.approx(50.0)
    assert task["stderr"] == pytest.approx(100.0 * (0.25 / (N_DOCS - 1)) ** 0.5, rel=1e-6)
    assert (tmp_path / "out" / "lmms-eval.log").is_file()


@pytest.mark.slow
def test_an_unreachable_server_is_an_error_naming_the_task(setup, tmp_path):
    cfg = _cfg(include_path=[str(setup["data"] / TASK_DIR)], limit=2)
    dead = general.Target(f"http://127.0.0.1:{free_port()}/v1", "base")
    with pytest.raises(
        general.GeneralEvalError, match=rf"eval.general.tasks.{TASK}: 2 of 2 request\(s\) failed"
    ):
        general.run(cfg, dead, tmp_path / "out", max_new_tokens=MAX_NEW, data_dir=setup["data"])


@pytest.mark.slow
def test_a_broken_or_unknown_task_is_an_error_naming_it(setup, tmp_path):
    broken = tmp_path / "tasks"
    shutil.copytree(setup["data"] / TASK_DIR, broken)
    yaml_file = broken / TASK / f"{TASK}.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("general/test.json", "general/missing.json"))
    dead = general.Target(f"http://127.0.0.1:{free_port()}/v1", "base")  # never reached
    with pytest.raises(
        general.GeneralEvalError,
        match=rf"(?s)no results for {TASK}.*Unable to find .*general/missing.json",
    ):
        general.run(
            _cfg(include_path=[str(broken)]),
            dead,
            tmp_path / "a",
            max_new_tokens=MAX_NEW,
            data_dir=setup["data"],
        )
    with pytest.raises(general.GeneralEvalError, match="no_such_task"):
        general.run(
            _cfg(tasks={"no_such_task": {}}, include_path=[str(broken)]),
            dead,
            tmp_path / "b",
            max_new_tokens=MAX_NEW,
            data_dir=setup["data"],
        )


def test_a_missing_lmms_eval_is_named(setup, tmp_path):
    dead = general.Target("http://127.0.0.1:9/v1", "base")
    with pytest.raises(general.GeneralEvalError, match="make setup"):
        general.run(
            _cfg(command="missing-venv/bin/lmms-eval"),
            dead,
            tmp_path / "out",
            max_new_tokens=MAX_NEW,
            data_dir=setup["data"],
        )


def test_the_world_task_scores_like_the_project(tmp_path):
    """utils.py (run inside lmms-eval) and metrics.exact_match agree, reasoning included."""
    import importlib.util

    from mirage_safety.data.lmms_task import write_world_general_task

    spec = importlib.util.spec_from_file_location(
        "task_utils", write_world_general_task(tmp_path) / "utils.py"
    )
    assert spec and spec.loader
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    from mirage_safety.labelling.formats import final_answer

    cases = [
        ("Claw Hammer.", "claw hammer"),
        (" a  towel !", "a towel"),
        ("", "x"),
        ("<think>it is a spoon</think> spoon", "spoon"),
        ("<think>spoon", "spoon"),
        ("second", ""),
        ("first", "second"),
    ]
    for response, answer in cases:
        ours = exact_match(final_answer(response), answer)
        assert utils.process_results({"answer": answer}, [response]) == {
            "exact_match": float(ours)
        }, (response, answer)
