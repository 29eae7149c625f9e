"""The ``curate`` stage: rubric scores from the world judge and from an OpenAI-compatible
judge, the threshold, balanced down-sampling, the filter's measured precision / recall
against the world teacher's planted defects, the report and the failure paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fake_endpoint import FakeEndpoint
from mirage_safety.config import (
    ConfigError,
    CurateConfig,
    EndpointConfig,
    LabelConfig,
    NoiseConfig,
)
from mirage_safety.io import tree_hash
from mirage_safety.labelling.curate import CurationError, run_curate
from mirage_safety.labelling.label import run_label
from mirage_safety.labelling.rubric import load_rubric
from tiny_world import POLICIES, PROMPTS, label_world

REPO = Path(__file__).resolve().parents[1]
RUBRIC = str(REPO / "prompts" / "curate_rubric.yaml")
NOISY = NoiseConfig(wrong_object=0.1, wrong_rule=0.1, comply=0.1, truncated=0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return label_world(tmp_path_factory)


def _labelled(world: Path, tmp: Path, **label) -> Path:
    """A data dir with mis/ (the world's) and labelled/ (this label config's)."""
    data = tmp / "data"
    data.mkdir(parents=True)
    (data / "mis").symlink_to(world / "mis")
    run_label(
        LabelConfig(policies=POLICIES, prompts=PROMPTS, **label),
        data_dir=data,
        out_dir=data / "labelled",
        metrics_path=tmp / "label.json",
        cache_dir=None,
        progress=False,
    )
    return data


def _curate(data: Path, tmp: Path, cfg: CurateConfig, cache: Path | None = None) -> dict:
    return run_curate(
        cfg,
        policies_dir=POLICIES,
        prompts_dir=PROMPTS,
        data_dir=data,
        out_dir=data / "curated",
        metrics_path=tmp / "curate.json",
        plots_path=tmp / "curate_scores.csv",
        cache_dir=cache,
        progress=False,
    )


@pytest.mark.parametrize(
    ("style", "fmt"),
    [
        ("cot", "prose"),
        ("policy", "prose"),
        ("policy", "think"),
        ("refusal", "prose"),
        ("text_only", "prose"),
    ],
)
def test_world_judge_keeps_clean_labels_and_drops_planted_defects(world, tmp_path, style, fmt):
    clean = _labelled(world, tmp_path / "clean", style=style, format=fmt)
    m = _curate(clean, tmp_path / "clean", CurateConfig(rubric=RUBRIC))
    assert m["kept"] == m["records"] == 140 and m["filter"]["clean_kept"] == 100.0
    scores = [
        json.loads(x)["scores"]
        for x in (clean / "curated" / "scores.jsonl").read_text().splitlines()
    ]
    # a bare refusal has no reasoning and names nothing: rules (and its grounding) are null
    nullable = {"rules", "grounding"} if style == "refusal" else set()
    assert all(v == 10 or (v is None and c in nullable) for s in scores for c, v in s.items())

    noisy = _labelled(world, tmp_path / "noisy", style=style, format=fmt, noise=NOISY)
    m = _curate(noisy, tmp_path / "noisy", CurateConfig(rubric=RUBRIC))
    q = m["filter"]
    assert q["planted"] > 0 and q["defect_recall"] == 100.0 and q["clean_kept"] == 100.0
    assert q["precision"] == 100.0 and m["kept"] == q["clean"]
    kept = json.loads((noisy / "curated" / "train.json").read_text())
    assert all(r["teacher"]["defect"] is None for r in kept)


def test_reasons_threshold_report_and_plots(world, tmp_path):
    data = _labelled(world, tmp_path, style="policy", noise=NOISY)
    m = _curate(data, tmp_path, CurateConfig(rubric=RUBRIC, examples=3))
    rows = [json.loads(x) for x in (data / "curated" / "scores.jsonl").read_text().splitlines()]
    by_defect = {}
    for r in rows:
        by_defect.setdefault(r["planted_defect"], set()).update(r["reasons"])
    assert "grounding" in by_defect["wrong_object"] and "rules" in by_defect["wrong_rule"]
    assert "safety" in by_defect["comply"] and "relevance" in by_defect["truncated"]
    assert by_defect[None] == set()
    assert sum(m["dropped_by_reason"].values()) >= m["dropped"]
    report = (data / "curated" / "report.md").read_text()
    assert "Filter against the planted defects" in report and "| wrong_rule |" in report
    assert report.count("dropped for ") == 3 and "![score histograms](score_hist.png)" in report
    assert (data / "curated" / "score_hist.png").read_bytes()[:4] == b"\x89PNG"
    csv = (tmp_path / "curate_scores.csv").read_text().splitlines()
    assert csv[0] == "score,safety,grounding,rules,relevance" and len(csv) == 12
    assert json.loads((tmp_path / "curate.json").read_text()) == m
    # threshold 0 keeps everything the judge could score
    assert _curate(data, tmp_path, CurateConfig(rubric=RUBRIC, threshold=0))["kept"] == 140


def test_per_category_cap_is_balanced_and_seeded(world, tmp_path):
    data = _labelled(world, tmp_path)
    m = _curate(data, tmp_path, CurateConfig(rubric=RUBRIC, per_category_max=10))
    assert all(v["kept"] <= 10 for v in m["per_category"].values())
    assert m["dropped_by_reason"] == {"downsampled": m["dropped"]}
    assert m["filter"]["clean_kept"] == 100.0  # down-sampled records do not count as drops
    first = (data / "curated" / "train.json").read_bytes()
    _curate(data, tmp_path, CurateConfig(rubric=RUBRIC, per_category_max=10))
    assert (data / "curated" / "train.json").read_bytes() == first


def test_judge_none_keeps_everything(world, tmp_path):
    data = _labelled(world, tmp_path, noise=NOISY)
    m = _curate(data, tmp_path, CurateConfig(judge="none", rubric=RUBRIC))
    assert m["kept"] == 140 and m["filter"]["defect_recall"] == 0.0


SCORES = '{"safety": 10, "grounding": 9, "rules": null, "relevance": 8, "rationale": "fine"}'


def _openai_cfg(url: str, **kw) -> CurateConfig:
    return CurateConfig(
        judge="openai",
        rubric=RUBRIC,
        openai=EndpointConfig(
            base_url=url,
            model="judge-x",
            timeout_s=2.0,
            max_retries=1,
            backoff_s=0.01,
            concurrency=4,
        ),
        **kw,
    )


def _tag_cases(data: Path, cases: list[str]) -> None:
    path = data / "labelled" / "train.json"
    recs = json.loads(path.read_text())
    for rec, case in zip(recs, cases, strict=False):
        turn = rec["conversations"][0]
        turn["value"] = turn["value"].replace(
            "<image>\n<image>\n", f"<image>\n<image>\n[case:{case}] "
        )
    path.write_text(json.dumps(recs))


def test_openai_judge_scores_fences_the_label_and_counts_malformed_verdicts(world, tmp_path):
    data = _labelled(world, tmp_path, style="policy")
    (data / "labelled" / "train.json").write_text(
        json.dumps(json.loads((data / "labelled" / "train.json").read_text())[:6])
    )
    _tag_cases(data, ["a", "b", "c", "d", "e", "f"])
    server = FakeEndpoint(default=SCORES)
    try:
        server.script["b"] = [("ok", "these labels look great to me")]
        server.script["c"] = [
            ("ok", '{"safety": 11, "grounding": 9, "rules": 1, "relevance": 8, "rationale": ""}')
        ]
        server.script["d"] = [
            (
                "ok",
                '{"safety": 3, "grounding": 9, "rules": 9, "relevance": 9, "rationale": "unsafe"}',
            )
        ]
        m = _curate(
            data,
            tmp_path,
            _openai_cfg(server.url, max_failure_fraction=0.5),
            cache=tmp_path / "cache",
        )
        assert m["judge"] == "openai" and m["judge_errors"] == 2
        assert m["dropped_by_reason"] == {"judge_error": 2, "safety": 1} and m["kept"] == 3
        rows = {
            json.loads(x)["id"]: json.loads(x)
            for x in (data / "curated" / "scores.jsonl").read_text().splitlines()
        }
        errs = sorted(r["error"] for r in rows.values() if r.get("error"))
        assert (
            errs[0].startswith("unparseable: not JSON") and "safety must be an integer" in errs[1]
        )
        req = server.requests[0]
        system = req["body"]["messages"][0]["content"]
        assert "grounding -- Correctness of the visual grounding" in system
        nonce = system.split("<<<LABEL-")[1].split(">>>")[0]
        assert f"<<<LABEL-{nonce}>>>" in req["user_text"] and "Rule " in req["user_text"]
        assert (
            len([p for p in req["body"]["messages"][1]["content"] if p["type"] == "image_url"]) == 2
        )
        # too many unusable verdicts: the stage fails and writes nothing
        before = tree_hash(data / "curated")
        server.script["a"] = [("ok", "no")]
        server.script["e"] = [("ok", "no")]
        with pytest.raises(CurationError, match="could not score 4 of 6"):
            _curate(data, tmp_path, _openai_cfg(server.url), cache=tmp_path / "cache2")
        assert tree_hash(data / "curated") == before
    finally:
        server.close()


def test_rubric_validation_names_file_and_criterion(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(
        "scale: 10\ncriteria:\n  - id: safety\n    name: S\n    text: ''\n"
        "  - id: safety\n    name: again\n    text: t\n"
    )
    with pytest.raises(ConfigError, match=r"criterion 'safety': text"):
        load_rubric(bad)
    bad.write_text(
        "scale: 10\ncriteria:\n  - {id: safety, name: S, text: t}\n"
        "  - {id: safety, name: T, text: u}\n"
    )
    with pytest.raises(ConfigError, match="duplicate criterion id"):
        load_rubric(bad)
    bad.write_text("scale: 10\ncriteria:\n  - {id: other, name: S, text: t}\n")
    from mirage_safety.labelling.judges import WorldRubricJudge
    from mirage_safety.labelling.policies import load_policies

    with pytest.raises(ConfigError, match="the world judge scores exactly"):
        WorldRubricJudge(load_rubric(bad), load_policies(POLICIES))
    shutil.rmtree(tmp_path, ignore_errors=True)
