"""The embedded MIS world: determinism, held-out pairings, layout (label styles: the label
stage, tests/test_labelling.py)."""

import json
import re
from pathlib import Path

import pytest

from mirage_safety.config import parse_params
from mirage_safety.data import world as W
from mirage_safety.data.generate import generate
from mirage_safety.data.schema import CATEGORIES, SUB_TO_CATEGORY
from mirage_safety.io import tree_hash

SMALL = {
    "n_train": 120,
    "n_test_per_split": 28,
    "n_general_train": 60,
    "n_general_test": 20,
    "n_instruct": 30,
}


def _cfg(**world):
    return parse_params({"data": {"world": {**SMALL, **world}}}).data


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "data"
    generate(_cfg(), out, workers=2, progress=False)
    return out


def _load(root: Path, rel: str) -> list[dict]:
    return json.loads((root / rel).read_text())


def test_same_params_same_bytes_regardless_of_workers(world_dir, tmp_path):
    again = tmp_path / "data"
    generate(_cfg(), again, workers=1, progress=False)
    assert tree_hash(again) == tree_hash(world_dir)
    other_seed = tmp_path / "other"
    generate(
        parse_params({"data": {"seed": 99, "world": SMALL}}).data,
        other_seed,
        workers=1,
        progress=False,
    )
    assert tree_hash(other_seed) != tree_hash(world_dir)


def test_vocabulary_and_taxonomy_coverage():
    assert len(W.OBJECTS) >= 48
    looks = {(o.shape, o.colour, o.texture) for o in W.OBJECTS}
    assert len(looks) == len(W.OBJECTS)  # every object has its own look
    covered = {r.sub_category for r in W.RULES}
    assert covered == set(SUB_TO_CATEGORY)
    assert {r.category for r in W.RULES} == set(CATEGORIES)


def test_layout_manifest_and_counts(world_dir):
    manifest = json.loads((world_dir / "manifest.json").read_text())
    for rel in (
        "mis/train.json",
        "mis/test_easy.json",
        "mis/test_hard.json",
        "mis/test_benign.json",
        "mis/test_benign_shift.json",
        "general/train.json",
        "general/instruct.json",
        "general/test.json",
    ):
        assert (world_dir / rel).is_file()
        info = manifest["files"][rel]
        assert info["count"] == len(_load(world_dir, rel))
        assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    assert manifest["files"]["mis/test_hard.json"]["harmful"] == SMALL["n_test_per_split"]
    assert manifest["files"]["mis/test_benign.json"]["harmful"] == 0
    assert manifest["files"]["mis/test_benign_shift.json"]["harmful"] == 0
    # image digests computed while rendering match a re-read of the files
    for sub in ("mis", "general"):
        assert manifest[f"{sub}_images_sha256"] == tree_hash(world_dir / sub / "images")
    # every test category is represented
    assert set(manifest["files"]["mis/test_hard.json"]["categories"]) == set(CATEGORIES)
    # the general split as an lmms-eval task, reading general/test.json relative to data/
    task = world_dir / "lmms_tasks" / "mirage_world_general"
    assert sorted(p.name for p in task.iterdir()) == ["mirage_world_general.yaml", "utils.py"]
    assert "test: general/test.json" in (task / "mirage_world_general.yaml").read_text()


def test_test_pairings_never_appear_in_training(world_dir):
    train_pairs = {
        tuple(r["objects"])
        for rel in ("mis/train.json", "general/train.json", "general/instruct.json")
        for r in _load(world_dir, rel)
    }
    for split in ("test_easy", "test_hard"):
        test_pairs = {tuple(r["objects"]) for r in _load(world_dir, f"mis/{split}.json")}
        assert test_pairs and not (test_pairs & train_pairs), split


def test_easy_and_hard_definitions(world_dir):
    for r in _load(world_dir, "mis/test_easy.json"):
        assert W.OBJECT_BY_NAME[r["objects"][0]].risky  # an image shows something risky
    for r in _load(world_dir, "mis/test_hard.json"):
        assert not any(W.OBJECT_BY_NAME[o].risky for o in r["objects"])  # both neutral
        assert r["is_harmful"]
    for split in ("test_easy", "test_hard", "test_benign", "test_benign_shift"):
        for r in _load(world_dir, f"mis/{split}.json"):
            # neutral text: the question never names an object
            assert not any(name in r["question"] for name in W.OBJECT_NAMES)


def test_cot_label_order_and_no_tags(world_dir):
    for r in _load(world_dir, "mis/train.json"):
        answer = r["conversations"][-1]["value"]
        a, b = r["objects"]
        assert answer.startswith(
            f"The first image shows {W.article(a)}. The second image shows {W.article(b)}."
        )
        assert "<" not in answer and "#" not in answer
        if r["is_harmful"]:
            rule = W.RULE_BY_KEY[r["rule"]]
            assert answer.index(W.DECLINE) < answer.index(rule.safe_reply)
            assert "Step 1" not in answer
        else:
            assert "Step 1:" in answer
        assert r["conversations"][0]["value"].count("<image>") == len(r["images"]) == 2


def test_failure_leaves_previous_output_untouched(tmp_path, monkeypatch):
    out = tmp_path / "data"
    generate(_cfg(), out, workers=1, progress=False)
    before = tree_hash(out)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mirage_safety.data.generate._manifest", boom)
    with pytest.raises(RuntimeError):
        generate(_cfg(n_train=50), out, workers=1, progress=False)
    assert tree_hash(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temp dirs left behind


@pytest.mark.parametrize("workers", [1, 2])
def test_world_record_with_an_unrendered_image_fails_while_rendering(
    tmp_path, monkeypatch, workers
):
    """World records are validated while the workers render, against the paths they write:
    a record pointing elsewhere is reported by id and field, and nothing is published."""
    from mirage_safety.data import generate as G
    from mirage_safety.data.schema import DataValidationError

    out = tmp_path / "data"
    generate(_cfg(), out, workers=1, progress=False)
    before = tree_hash(out)
    original = G.test_record

    def broken(plan):
        rec = original(plan)
        if plan.split == "test_hard" and plan.index == 3:
            rec["image_path2"] = "images/test_hard/never-rendered.png"
        return rec

    monkeypatch.setattr(G, "test_record", broken)
    with pytest.raises(DataValidationError) as err:
        generate(_cfg(), out, workers=workers, progress=False)
    message = str(err.value)
    assert "mis/test_hard.json" in message and "image_path2" in message
    assert "never-rendered.png" in message and "test_hard-00003" in message
    assert message.startswith("1 invalid record field")
    assert tree_hash(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_general_answers_are_consistent(world_dir):
    """Naming answers are the bare name; comparison answers name both objects, then the
    verdict, which must follow from the objects and the question."""
    from mirage_safety.data.world import article

    tasks = set()
    for r in _load(world_dir, "general/test.json"):
        a, b = r["objects"]
        task = r["sub_category"]
        tasks.add(task)
        if task in ("name_first", "name_second"):
            assert r["answer"] == (a if task == "name_first" else b)
            continue
        chain, verdict = r["answer"].rsplit(": ", 1)
        if task == "same":
            assert chain == f"{article(a)} and {article(b)}"
            assert verdict == ("yes" if a == b else "no")
            continue
        x = re.search(r"shows? (?:a|an) (.+)\?$", r["question"]).group(1)
        flags = ["yes" if o == x else "no" for o in (a, b)]
        assert chain == f"{article(x)}? {article(a)} {flags[0]}, {article(b)} {flags[1]}"
        if task == "which":
            assert x in (a, b)
            assert verdict == ("first" if x == a else "second")
        else:
            assert verdict == str(flags.count("yes"))
    assert tasks == {"name_first", "name_second", "same", "which", "count"}


def test_general_images_are_packed_and_every_record_resolves(world_dir):
    """General data: one zip per 256 samples of a split, not one file per image; the MIS
    data keeps the public layout of one file per image."""
    from mirage_safety.data.chat import load_image, resolve_image

    general = world_dir / "general"
    packs = sorted(
        p.relative_to(general).as_posix() for p in (general / "images").rglob("*") if p.is_file()
    )
    assert packs == [
        "images/general_test/pack-00000.zip",
        "images/general_train/pack-00000.zip",
        "images/instruct/pack-00000.zip",
    ]
    for name in ("train.json", "instruct.json", "test.json"):
        records = _load(general, name)
        for rec in records:
            rels = rec.get("images") or [rec["image_path1"], rec["image_path2"]]
            for rel in rels:
                assert ".zip/" in rel
                assert load_image(resolve_image(general, rel, rid=rec["id"])).size == (64, 64)
    mis_images = [p for p in (world_dir / "mis" / "images").rglob("*") if p.is_file()]
    assert mis_images and all(p.suffix == ".png" for p in mis_images)


def test_shifted_benign_split_keeps_the_harmful_first_object_with_a_safe_second(world_dir):
    """test_benign_shift: the kind of benign counterpart safety training never shows (the
    harmful pattern's first object, neutral or hazard-framed, with a safe everyday object),
    every sample benign for the judge's ground truth, risky and neutral first objects both."""
    shifted = _load(world_dir, "mis/test_benign_shift.json")
    assert len(shifted) == SMALL["n_test_per_split"]
    risky = set()
    for r in shifted:
        a, b = r["objects"]
        rule = W.RULE_BY_KEY[r["rule"]]
        assert a in (*rule.hard_a, *rule.risky_a) and b in W.SAFE_OBJECTS
        assert r["is_harmful"] is False and r["benign_kind"] == "safe_second"
        assert not W.is_harmful(a, b, W.REQUEST_TEMPLATES[0])
        risky.add(W.OBJECT_BY_NAME[a].risky)
    assert risky == {True, False}
    train = _load(world_dir, "mis/train.json")
    assert not any(r["objects"][1] in W.SAFE_OBJECTS for r in train)  # never in training
