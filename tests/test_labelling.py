"""The ``label`` stage with the world teacher: label styles and formats, the seeded noise
model (planted defects recorded per record), the stage's outputs and its failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mirage_safety.cli import main as cli_main
from mirage_safety.config import ConfigError, LabelConfig, NoiseConfig, parse_params
from mirage_safety.data import world as W
from mirage_safety.io import tree_hash
from mirage_safety.labelling.formats import split_think
from mirage_safety.labelling.label import LabellingError, run_label
from mirage_safety.labelling.policies import PolicyError, load_policies
from mirage_safety.labelling.teachers import WorldTeacher
from tiny_world import POLICIES, label_world

REPO = Path(__file__).resolve().parents[1]
NOISY = NoiseConfig(wrong_object=0.1, wrong_rule=0.1, comply=0.1, truncated=0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return label_world(tmp_path_factory)


def _cfg(**kw) -> LabelConfig:
    return LabelConfig(policies=POLICIES, prompts=str(REPO / "prompts"), **kw)


def _run(data: Path, tmp: Path, cfg: LabelConfig) -> tuple[dict, list[dict]]:
    out = tmp / "labelled"
    manifest = run_label(
        cfg,
        data_dir=data,
        out_dir=out,
        metrics_path=tmp / "label.json",
        cache_dir=None,
        progress=False,
    )
    return manifest, json.loads((out / "train.json").read_text())


def _source(data: Path) -> list[dict]:
    return json.loads((data / "mis" / "train.json").read_text())


def test_clean_cot_labels_are_the_worlds_own(data, tmp_path):
    manifest, recs = _run(data, tmp_path, _cfg())
    src = _source(data)
    assert [r["conversations"] for r in recs] == [r["conversations"] for r in src]
    assert manifest["defects"] == {"wrong_object": 0, "wrong_rule": 0, "comply": 0, "truncated": 0}
    assert manifest["policies_sha256"] == load_policies(POLICIES).sha256
    assert all(
        r["teacher"] == {"name": "world", "defect": None, "defect_detail": None, "rules": []}
        for r in recs
    )
    metrics = json.loads((tmp_path / "label.json").read_text())
    assert metrics["labelled"] == len(src) and metrics["failed"] == 0


def test_policy_labels_cite_the_rule_of_the_sub_category(data, tmp_path):
    _, recs = _run(data, tmp_path, _cfg(style="policy"))
    ps = load_policies(POLICIES)
    for r in recs:
        text = r["conversations"][-1]["value"]
        cited = ps.cited(text)
        if r["is_harmful"]:
            want = [x.id for x in ps.rules_for(r["category"], r["sub_category"])]
        else:
            want = [x.id for x in ps.comply_rules(r["category"])]
        assert cited == want == r["teacher"]["rules"]
        # grounding, then the rule, then the risk / note, then the reply
        assert text.index("The first image shows") < text.index(f"Rule {cited[0]} applies.")
        assert r["label_style"] == "policy" and r["label_format"] == "prose"


def test_think_format_puts_the_reasoning_in_a_block(data, tmp_path):
    _, recs = _run(data, tmp_path, _cfg(style="cot", format="think"))
    for r, src in zip(recs, _source(data), strict=True):
        parsed = split_think(r["conversations"][-1]["value"])
        assert parsed.closed and parsed.reasoning and parsed.answer
        assert parsed.reasoning.startswith("The first image shows")
        if r["is_harmful"]:
            assert parsed.answer.startswith(W.DECLINE) and "Step 1" not in parsed.answer
        # the same sentences as the prose label, split in two
        assert f"{parsed.reasoning} {parsed.answer}" == src["conversations"][-1]["value"]


def test_refusal_and_text_only_styles(data, tmp_path):
    _, refusal = _run(data, tmp_path / "r", _cfg(style="refusal"))
    for r in refusal:
        answer = r["conversations"][-1]["value"]
        assert answer == W.REFUSAL if r["is_harmful"] else answer.startswith("Sure. Step 1:")
    _, text_only = _run(data, tmp_path / "t", _cfg(style="text_only"))
    for r in text_only:
        q = r["conversations"][0]["value"]
        assert r["images"] == [] and "<image>" not in q and all(o in q for o in r["objects"])
        assert r["conversations"][-1]["value"].startswith("The request mentions")


def test_noise_plants_recorded_defects_deterministically(data, tmp_path):
    cfg = _cfg(style="policy", noise=NOISY)
    manifest, recs = _run(data, tmp_path / "a", cfg)
    planted = {r["id"]: r["teacher"]["defect"] for r in recs}
    assert sum(d is not None for d in planted.values()) == sum(manifest["defects"].values())
    assert all(manifest["defects"][k] > 0 for k in manifest["defects"])
    src = {r["id"]: r for r in _source(data)}
    ps = load_policies(POLICIES)
    for r in recs:
        text, s = r["conversations"][-1]["value"], src[r["id"]]
        d, detail = r["teacher"]["defect"], r["teacher"]["defect_detail"]
        if d == "wrong_object":
            assert detail["named"] in text and detail["truth"] == s["objects"][detail["image"] - 1]
        elif d == "wrong_rule":
            assert ps.cited(text) == [detail["cited"]] and detail["cited"] not in detail["applies"]
        elif d == "comply":
            assert r["is_harmful"] and "Step 1:" in text
        elif d == "truncated":
            assert len(text) == detail["kept_chars"] < detail["full_chars"]
    # the defects depend on the seed and the record id, not on the file order
    teacher = WorldTeacher(cfg, ps)
    again = {s["id"]: teacher.label(s).meta["defect"] for s in reversed(list(src.values()))}
    assert again == planted
    _, other = _run(data, tmp_path / "b", _cfg(style="policy", noise=NOISY, seed=7))
    assert {r["id"]: r["teacher"]["defect"] for r in other} != planted


def test_the_comply_defect_only_hits_harmful_records(data, tmp_path):
    _, recs = _run(data, tmp_path, _cfg(noise=NoiseConfig(comply=1.0)))
    assert all((r["teacher"]["defect"] == "comply") == r["is_harmful"] for r in recs)


def test_a_category_without_a_policy_fails_before_writing(data, tmp_path):
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "violent.yaml").write_text((REPO / "policies" / "violent.yaml").read_text())
    out = tmp_path / "labelled"
    out.mkdir()
    (out / "keep.txt").write_text("previous output")
    with pytest.raises(PolicyError, match="no policy for category 'Illegal Activity'"):
        run_label(
            LabelConfig(policies=str(pol)),
            data_dir=data,
            out_dir=out,
            metrics_path=tmp_path / "m.json",
            cache_dir=None,
            progress=False,
        )
    assert (out / "keep.txt").read_text() == "previous output"


def test_too_many_failures_write_nothing_and_the_cli_exits_2(data, tmp_path):
    broken = tmp_path / "data"
    (broken / "mis").mkdir(parents=True)
    recs = _source(data)
    for r in recs[: len(recs) // 2]:
        r["objects"] = ["no such thing", "nor this"]  # not world records any more
    (broken / "mis" / "train.json").write_text(json.dumps(recs))
    shutil.copytree(data / "mis" / "images", broken / "mis" / "images")
    out = tmp_path / "labelled"
    _run(data, tmp_path, _cfg())  # a previous good output
    before = tree_hash(out)
    with pytest.raises(LabellingError, match=r"got no label .*'input': 70.*nothing was written"):
        run_label(
            _cfg(),
            data_dir=broken,
            out_dir=out,
            metrics_path=tmp_path / "m.json",
            cache_dir=None,
            progress=False,
        )
    assert tree_hash(out) == before
    # below the threshold the failures are written and counted, never silently dropped
    manifest = run_label(
        _cfg(max_failure_fraction=0.6),
        data_dir=broken,
        out_dir=out,
        metrics_path=tmp_path / "m.json",
        cache_dir=None,
        progress=False,
    )
    assert manifest["failed"] == 70 and manifest["failures_by_kind"] == {"input": 70}
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert len(rows) == 70 and "ground truth" in rows[0]["error"]
    params = tmp_path / "params.yaml"
    params.write_text(f"label:\n  policies: {POLICIES}\n")
    assert (
        cli_main(
            [
                "label",
                "--params",
                str(params),
                "--data",
                str(broken),
                "--out",
                str(out),
                "--metrics",
                str(tmp_path / "m.json"),
                "--no-track",
                "--no-progress",
            ]
        )
        == 2
    )


def test_label_config_refuses_incoherent_settings():
    with pytest.raises(ValueError, match=r"text_only needs label\.teacher world"):
        LabelConfig(teacher="openai", style="text_only")
    with pytest.raises(ValueError, match=r"think needs a reasoning style"):
        LabelConfig(style="refusal", format="think")
    with pytest.raises(ValueError, match=r"sum to 1\.200"):
        NoiseConfig(wrong_object=0.6, comply=0.6)
    with pytest.raises(ConfigError, match=r"label\.noise\.comply"):
        parse_params({"label": {"noise": {"comply": 2}}})
