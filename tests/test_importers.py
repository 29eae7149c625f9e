"""Importers of the real MIS and MSR-Align layouts: happy paths, options and Hub errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mirage_safety.config import ConfigError, DataConfig, HubDataConfig, parse_params
from mirage_safety.data.importers import (
    DataSourceError,
    ImportedDataset,
    load_mis,
    load_msr_align,
    load_source,
)
from mirage_safety.data.schema import CATEGORIES, IMAGE_TOKEN, Validator
from realdata_fixtures import MSR_CATEGORIES, build_mis, build_msr, edit_json, write_json


def _mis(root: Path, **kw) -> ImportedDataset:
    return load_mis(HubDataConfig(local_dir=str(root), **kw), progress=False)


def _msr(root: Path, **kw) -> ImportedDataset:
    return load_msr_align(HubDataConfig(local_dir=str(root), **kw), progress=False)


def _assert_paths_inside(ds: ImportedDataset) -> None:
    paths = [p for r in ds.train for p in r["images"]]
    paths += [
        r[f] for recs in ds.tests.values() for r in recs for f in ("image_path1", "image_path2")
    ]
    assert paths
    for p in paths:
        assert not p.startswith(("/", "./")) and ".." not in p.split("/")
        assert (ds.root / p).is_file(), p


# ------------------------------------------------------------------------------- MIS
def test_mis_happy_path(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", n_train=5, n_test=3)
    ds = _mis(root)

    assert ds.source == "mis" and ds.root == root.resolve()
    assert len(ds.train) == 5
    assert set(ds.tests) == {"test_easy", "test_hard", "test_real"}
    assert all(len(recs) == 3 for recs in ds.tests.values())
    assert ds.files == {
        "train": "mis_train.json",
        "test_easy": "mis_easy.json",
        "test_hard": "mis_hard.json",
        "test_real": "mis_real.json",
    }

    # integer ids restart in every public file: prefixed with the split, original kept
    assert [r["id"] for r in ds.tests["test_easy"]] == ["test_easy-1", "test_easy-2", "test_easy-3"]
    assert ds.tests["test_hard"][0]["id"] == "test_hard-1"
    assert ds.tests["test_hard"][0]["source_id"] == 1
    assert ds.train[0]["id"] == "train-1"
    all_ids = [r["id"] for r in ds.train] + [r["id"] for v in ds.tests.values() for r in v]
    assert len(all_ids) == len(set(all_ids))

    rec = ds.train[0]
    assert rec["images"] == ["images/1/object1.png", "images/1/object2.png"]
    assert [t["from"] for t in rec["conversations"]] == ["human", "gpt"]
    assert rec["conversations"][0]["value"].count(IMAGE_TOKEN) == 2
    assert rec["category"] in CATEGORIES and rec["sub_category"] in CATEGORIES[rec["category"]]

    test = ds.tests["test_real"][1]
    assert set(test) >= {"id", "category", "sub_category", "question", "image_path1", "image_path2"}
    assert test["image_path1"] == "real_image/2/object1.png"
    _assert_paths_inside(ds)

    # what is returned passes the same Validator generate runs on the written files
    v = Validator(ds.root)
    v.train_records("train.json", ds.train)
    for split, recs in ds.tests.items():
        v.test_records(f"{split}.json", recs)
    assert v.problems == []


def test_mis_messages_and_image_key_are_normalised(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", n_train=2, chat_style="messages", images_key="image")
    ds = _mis(root)
    rec = ds.train[0]
    assert "messages" not in rec and "image" not in rec
    assert [t["from"] for t in rec["conversations"]] == ["human", "gpt"]  # system dropped
    assert rec["conversations"][0]["value"].startswith("<image><image>How could")
    assert rec["images"] == ["images/1/object1.png", "images/1/object2.png"]


def test_mis_test_files_in_subfolder_get_prefixed_paths(tmp_path: Path) -> None:
    # the layout of the MIS GitHub README: test json + image folders under mis_test/
    root = build_mis(tmp_path / "mis", n_test=2, test_dir="mis_test")
    ds = _mis(root)
    assert ds.files["test_easy"] == "mis_test/mis_easy.json"
    assert ds.tests["test_easy"][0]["image_path1"] == "mis_test/easy_image/1/object1.png"
    _assert_paths_inside(ds)


def test_mis_hub_test_file_names_are_accepted(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", splits=("easy",))
    (root / "mis_easy.json").rename(root / "mis_test_easy.json")
    ds = _mis(root)
    assert list(ds.tests) == ["test_easy"]


def test_mis_missing_test_files_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_mis(tmp_path / "mis", splits=("hard",))
    with caplog.at_level(logging.WARNING, logger="mirage_safety.data.importers"):
        ds = _mis(root)
    assert list(ds.tests) == ["test_hard"]
    assert "test_easy" in caplog.text and "test_real" in caplog.text


def test_mis_without_any_test_file_fails(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", splits=())
    with pytest.raises(DataSourceError, match=r"no MIS test file.*mis_easy\.json"):
        _mis(root)


def test_mis_without_train_file_fails(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis")
    (root / "mis_train.json").unlink()
    with pytest.raises(DataSourceError, match=r"no train file.*data\.mis\.train_file"):
        _mis(root)
    with pytest.raises(DataSourceError, match=r"data\.mis\.train_file: 'nope\.json' not found"):
        _mis(root, train_file="nope.json")


def test_mis_custom_train_file_in_subfolder(tmp_path: Path) -> None:
    # image paths in a data file are relative to that file's folder
    root = build_mis(tmp_path / "mis", n_train=2)
    (root / "sft").mkdir()
    (root / "images").rename(root / "sft" / "images")
    (root / "mis_train.json").rename(root / "sft" / "train.json")
    ds = _mis(root, train_file="sft/train.json")
    assert ds.files["train"] == "sft/train.json"
    assert ds.train[0]["images"] == ["sft/images/1/object1.png", "sft/images/1/object2.png"]
    _assert_paths_inside(ds)


def test_mis_category_spellings_are_canonicalised(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", splits=("easy",))

    def respell(rs: list[dict]) -> None:
        rs[0].update(category="illegal_activity", sub_category="property crimes")
        rs[1].update(category=None, sub_category="Weapon-Related Violence")
        rs[2].update(category="Misc Risk", sub_category=None)

    edit_json(root / "mis_easy.json", respell)
    ds = _mis(root, category_map={"misc risk": "Cybercrimes"})
    first, second, third = ds.tests["test_easy"]
    assert (first["category"], first["sub_category"]) == ("Illegal Activity", "Property Crimes")
    assert first["source_category"] == "illegal_activity"
    assert second["category"] == "Violent"
    assert (third["category"], third["sub_category"]) == ("Illegal Activity", "Cybercrimes")


def test_sharegpt_train_file_without_categories_imports_as_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """LLaMA-Factory's sharegpt format exactly: ``messages`` + ``images``, no id, no
    category: accepted for training, counted, every other check kept."""
    from mirage_safety.data.generate import generate

    root = build_mis(tmp_path / "mis", n_train=5, splits=("easy",), chat_style="messages")

    def sharegpt(rs: list[dict]) -> None:
        for r in rs:
            for key in ("id", "category", "sub_category"):
                r.pop(key)
        rs[0]["category"] = "Violent"  # a file may mix both

    edit_json(root / "mis_train.json", sharegpt)
    with caplog.at_level(logging.WARNING, logger="mirage_safety.data.importers"):
        ds = _mis(root)
    assert [r["category"] for r in ds.train] == ["Violent"] + ["unknown"] * 4
    assert "4 of 5 train record(s) in mis_train.json have no category" in caplog.text
    out = tmp_path / "data"
    manifest = generate(
        parse_params({"data": {"source": "mis", "mis": {"local_dir": str(root)}}}).data,
        out,
        workers=1,
        progress=False,
    )
    train = manifest["files"]["mis/train.json"]
    assert train["unknown_category"] == 4 and train["categories"]["unknown"] == 4
    # test records still need their category, and train records every other check
    edit_json(
        root / "mis_easy.json", lambda rs: [rs[0].pop(k) for k in ("category", "sub_category")]
    )
    edit_json(root / "mis_train.json", lambda rs: rs[1]["images"].pop())
    with pytest.raises(Exception) as exc:
        _mis(root)
    assert "field 'category': missing category" in str(exc.value)
    assert "1 image(s) but 2 <image> placeholder(s)" in str(exc.value)


def test_mis_skip_categories(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", n_train=6, splits=("easy",))
    ds = _mis(root, skip_categories=["erotic"])
    assert all(r["category"] != "Erotic" for r in ds.train)
    assert len(ds.train) == 5


# ------------------------------------------------------------------------------- MSR-Align
def test_msr_align_happy_path(tmp_path: Path) -> None:
    root = build_msr(tmp_path / "msr", n=6)
    ds = _msr(root)

    assert ds.source == "msr_align" and ds.tests == {} and ds.files == {"train": "msr_align.json"}
    assert len(ds.train) == 6
    assert [r["id"] for r in ds.train] == [f"msr-{i}" for i in range(6)]
    by_src = dict(MSR_CATEGORIES)
    for i, rec in enumerate(ds.train):
        n_img = 1 if i % 2 == 0 else 2
        assert len(rec["images"]) == n_img
        user, gpt = rec["conversations"]
        assert user["from"] == "human" and gpt["from"] == "gpt"
        assert user["value"].startswith(f"{IMAGE_TOKEN}\n" * n_img + "Describe what")
        assert user["value"].count(IMAGE_TOKEN) == n_img
        assert gpt["value"].startswith(f"The image shows scene {i}.")
        assert rec["category"] == by_src[rec["source_category"]]
        assert rec["policy"].startswith("Policy for ")
        assert rec["score"] == 9  # extra fields survive
        assert not {"image", "instruction", "response"} & set(rec)
    _assert_paths_inside(ds)
    v = Validator(ds.root)
    v.train_records("train.json", ds.train)
    assert v.problems == []


def test_msr_align_accepts_aliases_and_chat_records(tmp_path: Path) -> None:
    root = tmp_path / "msr"
    build_msr(root, n=2, file="release.jsonl.tmp")
    recs = json.loads((root / "release.jsonl.tmp").read_text())
    (root / "release.jsonl.tmp").unlink()
    alias = {
        "uid": 7,
        "image_path": recs[0]["image"],
        "question": "What is shown?",
        "answer": "A safe answer.",
        "reasoning": "Step one: look at the image.",
        "policy_category": "Self-Harm",
        "sub_category": "Psychological Harm",
        "policy_id": 3,
    }
    chat = {
        "id": "c1",
        "images": recs[1]["images"],
        "category": "hate speech",
        "policy": "Hate policy",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Why?"}],
            },
            {"role": "assistant", "content": "Because of rule 1."},
        ],
    }
    (root / "release.jsonl").write_text(json.dumps(alias) + "\n\n" + json.dumps(chat) + "\n")
    ds = _msr(root)  # the only data file is auto-detected

    a, c = ds.train
    assert a["id"] == "train-7" and a["source_id"] == 7
    assert a["conversations"][0]["value"] == "<image>\nWhat is shown?"
    assert a["conversations"][1]["value"] == "Step one: look at the image.\n\nA safe answer."
    assert (a["category"], a["sub_category"], a["policy"]) == ("Self-Harm", "Psychological Harm", 3)
    assert c["conversations"][0] == {"from": "human", "value": "<image>\n<image>\nWhy?"}
    assert (c["category"], c["source_category"]) == ("Hate", "hate speech")
    _assert_paths_inside(ds)


def test_msr_align_category_map_and_skip(tmp_path: Path) -> None:
    root = build_msr(tmp_path / "msr", n=4)
    edit_json(
        root / "msr_align.json",
        lambda rs: (rs[0].update(category="Misinformation"), rs[1].update(category="IP Violation")),
    )
    ds = _msr(root, category_map={"Misinformation": "General"}, skip_categories=["ip violation"])
    assert [r["id"] for r in ds.train] == ["msr-0", "msr-2", "msr-3"]
    assert ds.train[0]["category"] == "General"


def test_msr_align_rejects_a_bad_category_map_target(tmp_path: Path) -> None:
    root = build_msr(tmp_path / "msr", n=1)
    with pytest.raises(DataSourceError, match=r"category_map\['x'\]: 'Nonsense' is not a MIS"):
        _msr(root, category_map={"x": "Nonsense"})


def test_msr_align_file_detection(tmp_path: Path) -> None:
    root = build_msr(tmp_path / "msr", n=1, file="a.json")
    write_json(root / "b.json", [])
    with pytest.raises(DataSourceError, match=r"several data files.*a\.json, b\.json"):
        _msr(root)
    assert len(_msr(root, train_file="a.json").train) == 1
    with pytest.raises(DataSourceError, match="contains no records"):
        _msr(root, train_file="b.json")


# ------------------------------------------------------------------------------- dispatch
def test_load_source_dispatches_on_data_source(tmp_path: Path) -> None:
    mis_root = build_mis(tmp_path / "mis", n_train=1, n_test=1, splits=("easy",))
    msr_root = build_msr(tmp_path / "msr", n=1)
    cfg = parse_params(
        {
            "data": {
                "source": "mis",
                "mis": {"local_dir": str(mis_root)},
                "msr_align": {"local_dir": str(msr_root)},
            }
        }
    ).data
    assert load_source(cfg, progress=False).source == "mis"
    cfg = cfg.model_copy(update={"source": "msr_align"})
    assert load_source(cfg, progress=False, max_errors=3).source == "msr_align"
    with pytest.raises(DataSourceError, match="no importer"):
        load_source(DataConfig(), progress=False)


def test_config_requires_a_location_for_real_sources() -> None:
    with pytest.raises(
        ConfigError, match=r"data\.msr_align\.local_dir nor data\.msr_align\.hub_id"
    ):
        parse_params({"data": {"source": "msr_align"}})
    with pytest.raises(ConfigError, match="test_hub_id / test_revision need hub_id"):
        parse_params({"data": {"mis": {"local_dir": "x", "test_hub_id": "Tuwhy/MIS_Test"}}})


def test_missing_local_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"data\.mis\.local_dir: .* is not a directory"):
        _mis(tmp_path / "absent")


# ------------------------------------------------------------------------------- Hub
@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path


@pytest.mark.parametrize(
    ("source", "hub_id"), [("mis", "Tuwhy/MIS_Train"), ("msr_align", "Leigest/MSR-Align")]
)
def test_hub_offline_fails_with_a_clear_message(offline: Path, source: str, hub_id: str) -> None:
    cfg = parse_params(
        {"data": {"source": source, source: {"hub_id": hub_id, "revision": "main"}}}
    ).data
    with pytest.raises(DataSourceError) as info:
        load_source(cfg, progress=False)
    msg = str(info.value)
    assert hub_id in msg
    assert "HF_HUB_OFFLINE=1" in msg
    assert f"data.{source}.local_dir" in msg
    assert "Traceback" not in msg and "\n" not in msg  # one line, printed as is by the CLI
    assert isinstance(info.value, ConfigError)  # mirage's CLI prints it, exit code 2
    assert not (offline / "hf_home" / "mirage-datasets").exists()  # nothing half-written


def test_hub_offline_reuses_a_complete_earlier_download(offline: Path) -> None:
    # an earlier online run materialised both MIS repos into download_dir
    dl = offline / "dl"
    build_mis(dl, n_train=2, n_test=2, test_dir="mis_test")
    cfg = HubDataConfig(
        hub_id="Tuwhy/MIS_Train", test_hub_id="Tuwhy/MIS_Test", download_dir=str(dl)
    )
    ds = load_mis(cfg, progress=False)
    assert ds.root == dl.resolve()
    assert ds.origin.startswith("hf://datasets/Tuwhy/MIS_Train@main")
    assert len(ds.train) == 2 and len(ds.tests) == 3


def test_hub_offline_through_the_cli_prints_one_error_line(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mirage_safety.cli import main

    params = offline / "params.yaml"
    params.write_text(
        "data:\n  source: mis\n  mis:\n    hub_id: Tuwhy/MIS_Train\n"
        "    test_hub_id: Tuwhy/MIS_Test\n"
    )
    out = offline / "data"
    rc = main(["generate", "--params", str(params), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: data.mis.hub_id: cannot download Hub dataset 'Tuwhy/MIS_Train'" in err
    assert "data.mis.local_dir" in err and "Traceback" not in err
    assert not out.exists()
