"""Served inference (``eval.engine: openai``) against a real ``transformers serve`` on
loopback: the same answers as the in-process engine, a server killed mid-run leaves
counted error rows that a re-run completes, and ``mirage serve`` for a registry URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirage_safety.config import parse_params
from mirage_safety.evaluation import engines
from mirage_safety.evaluation.evaluate import evaluate
from mirage_safety.models.serving import free_port, start
from served import serve
from tiny_world import read_jsonl, tiny_model, world_data

pytestmark = pytest.mark.slow
EVAL = {"max_samples_per_split": 4, "max_new_tokens": 8, "batch_size": 2}


def _run(work: Path, data: Path, model: Path, **eval_) -> dict:
    params = parse_params({"eval": {**EVAL, **eval_}})
    return evaluate(
        params,
        data_dir=data,
        model_dirs={"mirage": model},
        out_dir=work / "eval",
        metrics_path=work / "eval.json",
        plots_path=work / "rates.csv",
        cache_dir=None,
        progress=False,
        track=False,
    )


def _served(url: str, model: Path, **kw) -> dict:
    return {
        "engine": "openai",
        "server": {
            "base_url": url,
            "models": {"mirage": str(model)},
            "revisions": {"mirage": "test"},
            "max_retries": 0,
            "timeout_s": 60,
            **kw,
        },
    }


def _answers(work: Path) -> dict:
    return {(r["split"], r["id"]): r for r in read_jsonl(work / "eval" / "responses_mirage.jsonl")}


@pytest.mark.slow
def test_served_answers_equal_in_process_ones_and_a_killed_server_heals(
    tmp_path_factory, tmp_path, monkeypatch
):
    data, model = world_data(tmp_path_factory), tiny_model(tmp_path_factory)
    hf = _run(tmp_path / "hf", data, model)
    local = _answers(tmp_path / "hf")

    with serve(model, tmp_path / "serve.log") as url:
        served = _run(tmp_path / "served", data, model, **_served(url, model))
    remote = _answers(tmp_path / "served")
    assert set(remote) == set(local)
    # the same greedy answers, token budget and end; only the fingerprint differs
    for key, row in local.items():
        assert (remote[key]["response"], remote[key]["finished"]) == (
            row["response"],
            row["finished"],
        )
    assert {r["fingerprint"] for r in remote.values()} == {"served:" + str(model) + "@test-8-r2"}
    assert served["mirage"] == hf["mirage"]

    # the server dies after the first chunk: every later request is a counted error row
    work = tmp_path / "killed"
    port = free_port()
    proc = start(model, host="127.0.0.1", port=port, device="cpu", log=tmp_path / "s2.log")
    url = f"http://127.0.0.1:{port}/v1"
    real, calls = engines.ServedEngine.answer, []

    def dies_after_one_chunk(self, prompts, *, progress):
        if calls and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        calls.append(len(prompts))
        return real(self, prompts, progress=progress)

    monkeypatch.setattr(engines.ServedEngine, "answer", dies_after_one_chunk)
    try:
        result = _run(work, data, model, **_served(url, model))
    finally:
        if proc.poll() is None:
            proc.terminate()
    monkeypatch.setattr(engines.ServedEngine, "answer", real)
    rows = _answers(work)
    failed = [r for r in rows.values() if r.get("generation_error")]
    assert len(rows) == len(local) and 0 < len(failed) < len(rows)
    assert all(r["generation_error"].startswith("served ") for r in failed)
    for split, section in result["mirage"].items():  # counted, never dropped
        if isinstance(section, dict) and "judge_errors" in section:
            assert section["judge_errors"] == sum(r["split"] == split for r in failed)
    # a re-run against a live server answers exactly the failed ones
    with serve(model, tmp_path / "serve3.log", port=port) as url:
        healed = _run(work, data, model, **_served(url, model))
    rows = _answers(work)
    assert not [r for r in rows.values() if r.get("generation_error")]
    assert {k: r["response"] for k, r in rows.items()} == {
        k: r["response"] for k, r in local.items()
    }
    assert healed["mirage"] == hf["mirage"]


@pytest.mark.slow
def test_mirage_serve_a_registered_model(tmp_path, tmp_path_factory, monkeypatch):
    """``mirage serve models:/mirage@champion``: downloads the version, serves it, prints
    the URL; the openai client gets an answer for a two-image query."""
    import openai

    from mirage_safety.registry.pyfunc_model import encode_image
    from mirage_safety.registry.register import register
    from registry_fixtures import (
        clean_env,
        eval_json,
        fresh_store,
        make_params,
        reset_mlflow,
        tiny_model_dir,
    )

    # another test of this worker may have left a tracking / registry URI behind (in the
    # environment or in mlflow's globals): the version would then be registered in a store
    # the `mirage serve` subprocess never sees ("Registered Model ... not found", seen once)
    clean_env(monkeypatch)
    reset_mlflow()

    store = fresh_store(tmp_path_factory, tmp_path / "mlflow.db")
    model_dir = tiny_model_dir(tmp_path_factory)
    (tmp_path / "eval.json").write_text(json.dumps(eval_json()))
    os.chdir(tmp_path)
    register(
        make_params(store), eval_path=tmp_path / "eval.json", model_dir=model_dir, out_path=None
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mirage")),
            "serve",
            "models:/mirage@champion",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line, deadline, seen = "", time.monotonic() + 240, []
        while "serving" not in line:
            line = proc.stdout.readline()
            seen.append(line)
            assert line or proc.poll() is None, "mirage serve exited:\n" + "".join(seen)[-3000:]
            assert time.monotonic() < deadline, "".join(seen)[-3000:]
        url = line.split(" at ")[1].strip()
        served_id = proc.stdout.readline().split("mirage: ")[1].split("}")[0].strip()
        img = next((model_dir.parent).rglob("*.png"), None)
        content = [{"type": "text", "text": "What do the two images show?"}]
        if img is not None:
            uri = encode_image(img)
            content = [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{uri}"}}
            ] * 2 + content
        answer = openai.OpenAI(base_url=url, api_key="x").chat.completions.create(
            model=served_id,
            max_tokens=4,
            temperature=0,
            messages=[{"role": "user", "content": content}],
        )
        assert answer.choices[0].message.content is not None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
