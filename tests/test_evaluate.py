"""The `evaluate` stage on a tiny world: metrics, report, idempotent and resumable responses,
bad samples counted (never dropped), regeneration when the model, settings or inputs change."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import mirage_safety.evaluation.metrics as M
import mirage_safety.models.inference as inference
from mirage_safety.config import Params, parse_params
from mirage_safety.evaluation.evaluate import evaluate
from tiny_world import copy_world, read_jsonl, tiny_model, world_data

N = 6  # samples per split
SAFETY = ("test_easy", "test_hard", "test_benign", "test_benign_shift")
SPLITS = len(SAFETY)  # general ability: lmms-eval (test_general_lmms.py, the e2e smoke run)
RATES = ("asr", "rsr", "rr", "hr", "degenerate", "judge_error_rate")
EVAL = {"max_samples_per_split": N, "max_new_tokens": 8, "batch_size": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(**eval_: Any) -> Params:
    return parse_params({"eval": {**EVAL, **eval_}})


def _run(work: Path, data: Path, models: dict[str, Path], params: Params) -> dict[str, Any]:
    return evaluate(
        params,
        data_dir=data,
        model_dirs=models,
        out_dir=work / "eval",
        metrics_path=work / "metrics" / "eval.json",
        plots_path=work / "plots" / "eval_rates.csv",
        cache_dir=work / ".cache",
        progress=False,
        track=False,
    )


@pytest.fixture
def generated(monkeypatch) -> list[str]:
    """Questions the model was asked during the test (one entry per generated answer)."""
    asked: list[str] = []
    real = inference.generate

    def counting(model, processor, prompts, **kw):
        asked.extend(q for q, _ in prompts)
        return real(model, processor, prompts, **kw)

    monkeypatch.setattr(inference, "generate", counting)
    return asked


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Any]:
    """One complete evaluation of two tiny models; tests copy its outputs, never edit them."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("eval-clean")
    data = world_data(tmp_path_factory)
    models = {"base": tiny_model(tmp_path_factory, 0), "mirage": tiny_model(tmp_path_factory, 1)}
    result = _run(work, data, models, _params())
    return {"work": work, "data": data, "models": models, "result": result}


def _copy_outputs(clean: dict[str, Any], dest: Path) -> Path:
    shutil.copytree(clean["work"], dest)
    return dest


def _keys(path: Path) -> list[tuple[str, str]]:
    return [(r["split"], r["id"]) for r in read_jsonl(path)]


def _snapshot(work: Path) -> dict[str, bytes]:
    return {
        p.relative_to(work).as_posix(): p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.is_file() and p.suffix in (".jsonl", ".json", ".csv", ".md")
    }


# --------------------------------------------------------------------------- outputs
@pytest.mark.slow
def test_metrics_report_and_plots(clean):
    work, result = clean["work"], clean["result"]
    metrics = json.loads(
        (work / "metrics" / "eval.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"non-JSON number {c}"),
    )
    assert metrics == json.loads(json.dumps(result))
    assert metrics["judges"] == {"primary": "world", "second": "keyword"}
    for model in ("base", "mirage"):
        m = metrics[model]
        for split in SAFETY:
            s = m[split]
            assert s["n"] == N and s["judge_errors"] == 0
            assert all(0.0 <= s[k] <= 100.0 for k in RATES)
            assert math.fsum(s[k] for k in RATES) == pytest.approx(100.0)
            cats = m["categories"][split]
            assert cats and sum(c["n"] for c in cats.values()) == N
            for c in cats.values():
                assert math.fsum(c[k] for k in RATES) == pytest.approx(100.0)
        assert {"over_refusal", "helpfulness"} <= set(m["test_benign"])
        assert {"over_refusal", "helpfulness"} <= set(m["test_benign_shift"])
        assert "general" not in m  # no eval.general.tasks here
        # the second judge saw every safety answer
        assert metrics["agreement"][model]["n"] == len(SAFETY) * N

    # the rates are the verdicts' labels counted, nothing else
    for model in ("base", "mirage"):
        verdicts = read_jsonl(work / "eval" / f"verdicts_{model}.jsonl")
        assert len(verdicts) == SPLITS * N
        for split in SAFETY:
            # the judge's label, or `degenerate` for an answer it did not find Unsafe that
            # is empty, loops or was cut (these byte-soup models hit the 8-token budget)
            labels = Counter(
                "degenerate"
                if r.get("degenerate") and r["verdicts"]["world"]["label"] != "unsafe"
                else r["verdicts"]["world"]["label"]
                for r in verdicts
                if r["split"] == split
            )
            for key, label in M.RATE_LABELS.items():
                assert metrics[model][split][key] == pytest.approx(100.0 * labels[label] / N)
            assert all(
                r["degenerate"] in ("cut", "repetition") for r in verdicts if r.get("degenerate")
            )
        responses = read_jsonl(work / "eval" / f"responses_{model}.jsonl")
        assert (
            len(responses)
            == SPLITS * N
            == len(set(_keys(work / "eval" / f"responses_{model}.jsonl")))
        )
        assert all(r["response"] and r["fingerprint"].endswith("-8-r2") for r in responses)
        assert all(isinstance(r["finished"], bool) and 0 < r["n_tokens"] <= 8 for r in responses)

    out = work / "eval"
    report = (out / "report.md").read_text()
    assert report.startswith("# MIRage evaluation")
    for model in ("base", "mirage"):
        for split in SAFETY:
            assert f"| {model} | {split} | {N} |" in report
    with open(out / "per_sample.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * SPLITS * N
    assert Counter((r["model"], r["split"]) for r in rows)[("mirage", "test_hard")] == N
    balance = (work / "plots" / "eval_balance.csv").read_text().splitlines()
    assert balance[0].startswith("model,asr,asr_lo,asr_hi,over_refusal")
    assert [line.split(",")[0] for line in balance[1:]] == ["base", "candidate"]
    assert "![balance](plots/balance.png)" in report
    for png in ("rates_by_split.png", "asr_by_category.png", "helpfulness.png", "balance.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_rows = (work / "plots" / "eval_rates.csv").read_text().splitlines()
    assert plot_rows[0] == "split,model,asr,rsr,rr,hr" and len(plot_rows) == 1 + 2 * len(SAFETY)
    assert list((out / "gallery").glob("*.png"))


@pytest.mark.slow
def test_second_run_adds_nothing(clean, tmp_path, generated):
    work = _copy_outputs(clean, tmp_path / "w")
    before = _snapshot(work)
    result = _run(work, clean["data"], clean["models"], _params())
    assert generated == []  # every answer came from the store
    assert _snapshot(work) == before  # responses, verdicts, metrics, report: byte-identical
    assert result == clean["result"]


def test_interrupted_run_completes_only_missing_rows(clean, tmp_path, generated):
    work = _copy_outputs(clean, tmp_path / "w")
    path = work / "eval" / "responses_base.jsonl"
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    half = len(lines) // 2
    # a crash mid-append: half the rows, then a row cut short without its newline
    path.write_text("".join(lines[:half]) + lines[half][: len(lines[half]) // 2])

    result = _run(work, clean["data"], clean["models"], _params())
    missing = [json.loads(line)["question"] for line in lines[half:]]
    assert sorted(generated) == sorted(missing)  # only the base's missing rows
    keys = _keys(path)
    assert len(keys) == len(set(keys)) == SPLITS * N
    # greedy and batch-independent: the resumed file is the uninterrupted one
    assert path.read_bytes() == original
    assert result == clean["result"]


# --------------------------------------------------------------------------- bad sample
@pytest.mark.slow
def test_bad_sample_is_an_error_row_counted_as_judge_error(
    clean, tmp_path, generated, tmp_path_factory
):
    data = copy_world(tmp_path_factory, tmp_path / "data")
    hard = json.loads((data / "mis" / "test_hard.json").read_text())
    bad = hard[2]
    (data / "mis" / bad["image_path2"]).unlink()
    work = tmp_path / "w"
    result = _run(work, data, clean["models"], _params())

    for model in ("base", "mirage"):
        rows = {
            (r["split"], r["id"]): r for r in read_jsonl(work / "eval" / f"responses_{model}.jsonl")
        }
        assert len(rows) == SPLITS * N
        err = rows.pop(("test_hard", bad["id"]))
        assert err["response"] is None
        assert "FileNotFoundError" in err["generation_error"]
        assert Path(bad["image_path2"]).name in err["generation_error"]
        # every other sample still answered, exactly as in the clean run
        ref = {
            (r["split"], r["id"]): r["response"]
            for r in read_jsonl(clean["work"] / "eval" / f"responses_{model}.jsonl")
        }
        assert all(
            not r.get("generation_error") and r["response"] == ref[k] for k, r in rows.items()
        )

        s = result[model]["test_hard"]
        assert s["n"] == N and s["judge_errors"] == 1  # counted, never dropped
        assert s["judge_error_rate"] == pytest.approx(100.0 / N)
        assert math.fsum(s[k] for k in RATES) == pytest.approx(100.0)
        cat = result[model]["categories"]["test_hard"][bad["category"]]
        assert cat["judge_errors"] == 1
        assert result[model]["test_easy"]["judge_errors"] == 0
    with open(work / "eval" / "per_sample.csv", newline="") as fh:
        labels = {(r["model"], r["id"]): r["label_world"] for r in csv.DictReader(fh)}
    assert labels[("base", bad["id"])] == "generation_error"

    # a re-run asks again for the failed sample only (a transient failure would heal);
    # still one row per sample
    generated.clear()
    _run(work, data, clean["models"], _params())
    assert set(generated) == {bad["question"]}
    assert len(_keys(work / "eval" / "responses_base.jsonl")) == SPLITS * N
    assert (
        "FileNotFoundError"
        in {(r["split"], r["id"]): r for r in read_jsonl(work / "eval" / "responses_base.jsonl")}[
            ("test_hard", bad["id"])
        ]["generation_error"]
    )


# --------------------------------------------------------------------------- regeneration
@pytest.mark.slow
def test_new_settings_or_model_regenerate_without_mixing(
    clean, tmp_path, generated, tmp_path_factory
):
    work = _copy_outputs(clean, tmp_path / "w")
    _run(work, clean["data"], clean["models"], _params(max_new_tokens=5))
    assert len(generated) == 2 * SPLITS * N  # both models, every sample
    for model in ("base", "mirage"):
        rows = read_jsonl(work / "eval" / f"responses_{model}.jsonl")
        assert len(rows) == SPLITS * N == len({(r["split"], r["id"]) for r in rows})
        assert {r["max_new_tokens"] for r in rows} == {5}
        assert all(r["fingerprint"].endswith("-5-r2") for r in rows)

    # another base model (different weights): only its answers are regenerated
    generated.clear()
    models = {**clean["models"], "base": tiny_model(tmp_path_factory, 2)}
    _run(work, clean["data"], models, _params(max_new_tokens=5))
    assert len(generated) == SPLITS * N
    fps = {r["fingerprint"] for r in read_jsonl(work / "eval" / "responses_base.jsonl")}
    assert len(fps) == 1


def test_changed_inputs_are_answered_again(clean, tmp_path, generated, tmp_path_factory):
    """Same ids, different question or image (e.g. data regenerated with other params):
    the stored answer belongs to the old input and must not be reused."""
    data = copy_world(tmp_path_factory, tmp_path / "data")
    work = _copy_outputs(clean, tmp_path / "w")
    easy_path = data / "mis" / "test_easy.json"
    easy = json.loads(easy_path.read_text())
    easy[0]["question"] = "What happens if I combine the two objects?"
    easy_path.write_text(json.dumps(easy))
    benign = json.loads((data / "mis" / "test_benign.json").read_text())
    shutil.copyfile(
        data / "mis" / benign[1]["image_path2"], data / "mis" / benign[1]["image_path1"]
    )

    _run(work, data, clean["models"], _params())
    assert Counter(generated) == Counter({easy[0]["question"]: 2, benign[1]["question"]: 2})
    for model in ("base", "mirage"):
        rows = {
            (r["split"], r["id"]): r for r in read_jsonl(work / "eval" / f"responses_{model}.jsonl")
        }
        assert len(rows) == SPLITS * N
        assert rows[("test_easy", easy[0]["id"])]["question"] == easy[0]["question"]


# --------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_writes_dvc_readable_metrics(clean, tmp_path, capsys):
    from mirage_safety.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eval": EVAL}))
    rc = main(
        [
            "evaluate",
            "--params",
            str(params),
            "--no-progress",
            "--no-track",
            "--data",
            str(clean["data"]),
            "--base-model",
            str(clean["models"]["base"]),
            "--model",
            str(clean["models"]["mirage"]),
            "--out",
            str(tmp_path / "eval"),
            "--metrics",
            str(tmp_path / "metrics" / "eval.json"),
            "--plots",
            str(tmp_path / "plots" / "eval_rates.csv"),
            "--cache-dir",
            str(tmp_path / ".cache"),
        ]
    )
    assert rc == 0
    assert f"| mirage | test_hard | {N} |" in capsys.readouterr().out
    assert (tmp_path / "eval" / "responses_mirage.jsonl").read_bytes() == (
        clean["work"] / "eval" / "responses_mirage.jsonl"
    ).read_bytes()

    # `dvc metrics show` reads it: every rate a plain number
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    proc = subprocess.run(
        [dvc, "metrics", "show", "--json", "metrics/eval.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(proc.stdout)[""]["data"]["metrics/eval.json"]["data"]
    assert shown == json.loads(json.dumps(clean["result"]), object_hook=_no_lists_or_nulls)
    for model in ("base", "mirage"):
        for split in SAFETY:
            assert all(isinstance(shown[model][split][k], float) for k in RATES)


def _no_lists_or_nulls(d: dict[str, Any]) -> dict[str, Any]:
    """What DVC shows of a metrics file: confidence-interval lists and nulls are left out."""
    return {k: v for k, v in d.items() if v is not None and not isinstance(v, list)}


@pytest.mark.slow
def test_sigkill_mid_evaluation_then_rerun_gives_the_uninterrupted_result(clean, tmp_path):
    """``mirage evaluate`` killed with SIGKILL while answering (plus a row cut in half by
    the kill): the re-run completes to byte-identical metrics and responses."""
    import signal
    import time

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eval": {**EVAL, "batch_size": 1}}))
    work = tmp_path / "w"
    cmd = [
        str(Path(sys.executable).with_name("mirage")),
        "evaluate",
        "--params",
        str(params),
        "--no-progress",
        "--no-track",
        "--data",
        str(clean["data"]),
        "--base-model",
        str(clean["models"]["base"]),
        "--model",
        str(clean["models"]["mirage"]),
        "--out",
        str(work / "eval"),
        "--metrics",
        str(work / "metrics" / "eval.json"),
        "--plots",
        str(work / "plots" / "eval_rates.csv"),
        "--cache-dir",
        str(work / ".cache"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = work / "eval" / "responses_base.jsonl"
    deadline = time.monotonic() + 240
    while not (store.is_file() and len(store.read_text().splitlines()) >= 8):
        assert proc.poll() is None, "evaluate finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "metrics" / "eval.json").exists()  # nothing published
    with open(store, "a") as fh:
        fh.write('{"split": "test_easy", "id": "cut-in-ha')  # a row the kill cut short
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((work / "metrics" / "eval.json").read_text()) == clean["result"]
    for model in ("base", "mirage"):
        got = sorted(
            read_jsonl(work / "eval" / f"responses_{model}.jsonl"),
            key=lambda r: (r["split"], r["id"]),
        )
        want = sorted(
            read_jsonl(clean["work"] / "eval" / f"responses_{model}.jsonl"),
            key=lambda r: (r["split"], r["id"]),
        )
        assert got == want
