"""``data.general``: a general instruction mix in the LLaVA / ShareGPT layout (M4-Instruct
style) imported into ``data/general/train.json`` for a real source -- conversion, seeded
down-sampling, bad records (file, record id and field named; nothing written), and the
file ``train`` mixes in at ``train.general_ratio``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mirage_safety.config import ConfigError, GeneralDataConfig, parse_params
from mirage_safety.data.importers import DataSourceError, ImportedDataset, load_general
from mirage_safety.data.schema import GENERAL_CATEGORY, IMAGE_TOKEN, DataValidationError
from realdata_fixtures import build_general, build_mis, edit_json, read_json

ANNOTATIONS = "m4_instruct_annotations.json"


def _load(root: Path, **kw: Any) -> ImportedDataset:
    return load_general(GeneralDataConfig(local_dir=str(root), **kw), progress=False)


def _where(file: str, rid: str, fld: str) -> str:
    return f"{file}: record {rid!r}: field {fld!r}: "


@pytest.fixture
def general(tmp_path: Path) -> Path:
    return build_general(tmp_path / "m4", n=6)


# ------------------------------------------------------------------------------ conversion
def test_llava_records_become_general_train_records(general: Path) -> None:
    ds = _load(general)

    assert ds.source == "general" and ds.files == {"train": ANNOTATIONS}  # not the video file
    assert len(ds.train) == ds.available == 6
    assert [r["id"] for r in ds.train] == [f"m4-{i}" for i in range(6)]
    for i, rec in enumerate(ds.train):
        n_img = 1 + i % 3
        assert rec["images"] == [f"Split1/task{i % 2}/{i}_{k}.png" for k in range(n_img)]
        assert "image" not in rec  # one canonical image field, always a list
        assert (rec["category"], rec["sub_category"], rec["kind"]) == (
            GENERAL_CATEGORY,
            None,
            "general",
        )
        assert rec["metadata"] == {"dataset": f"task{i % 2}"}  # extra fields survive
        humans = [t["value"] for t in rec["conversations"] if t["from"] == "human"]
        assert sum(v.count(IMAGE_TOKEN) for v in humans) == n_img
    # the two-round chat keeps its turns; its last image is placed in the second round
    assert [t["from"] for t in ds.train[4]["conversations"]] == ["human", "gpt"] * 2
    assert ds.train[4]["conversations"][2]["value"] == "And this one? <image>"


def test_ids_images_key_subfolder_and_text_only(tmp_path: Path) -> None:
    root = build_general(tmp_path / "m4", n=3, file="sub/llava.json", image_dir="imgs")
    (root / "imgs").rename(root / "sub" / "imgs")  # paths are relative to the file's folder

    def vary(rs: list[dict[str, Any]]) -> None:
        rs[0]["id"] = 17  # an integer id: prefixed, the original kept
        rs[1]["images"] = rs[1].pop("image")  # the other accepted key
        rs[2].update(
            id=None,
            image=None,
            category="chat",  # text only, no id
            conversations=[{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}],
        )

    edit_json(root / "sub" / "llava.json", vary)
    ds = _load(root, file="sub/llava.json")

    assert ds.files == {"train": "sub/llava.json"}
    first, second, third = ds.train
    assert (first["id"], first["source_id"]) == ("general-17", 17)
    assert first["images"] == ["sub/imgs/task0/0_0.png"]
    assert second["images"] == ["sub/imgs/task1/1_0.png", "sub/imgs/task1/1_1.png"]
    assert (third["id"], third["images"]) == ("general-2", [])
    assert (third["category"], third["source_category"]) == (GENERAL_CATEGORY, "chat")


# ------------------------------------------------------------------------------ sampling
def test_max_samples_is_seeded_and_deterministic(tmp_path: Path) -> None:
    root = build_general(tmp_path / "m4", n=20)
    ids = [r["id"] for r in _load(root, max_samples=5, seed=7).train]

    assert len(ids) == 5 and len(set(ids)) == 5
    assert ids == [r["id"] for r in _load(root, max_samples=5, seed=7).train]  # same picks
    assert ids != [r["id"] for r in _load(root, max_samples=5, seed=8).train]
    assert ids == sorted(ids, key=lambda s: int(s.split("-")[1]))  # in file order
    assert _load(root, max_samples=5, seed=7).available == 20
    assert len(_load(root).train) == 20  # -1: all
    assert len(_load(root, max_samples=50).train) == 20  # more than there are: all


def test_only_the_drawn_records_are_validated(tmp_path: Path) -> None:
    root = build_general(tmp_path / "m4", n=20)
    drawn = {r["id"] for r in _load(root, max_samples=3, seed=1).train}
    undrawn = next(i for i in range(20) if f"m4-{i}" not in drawn)
    edit_json(root / ANNOTATIONS, lambda rs: rs[undrawn].update(conversations=[]))
    assert {r["id"] for r in _load(root, max_samples=3, seed=1).train} == drawn
    with pytest.raises(DataValidationError, match=f"record 'm4-{undrawn}'"):
        _load(root)


# ------------------------------------------------------------------------------ bad records
def _missing_image(root: Path, rs: list[dict[str, Any]]) -> None:
    (root / rs[2]["image"][1]).unlink()


def _placeholder_mismatch(root: Path, rs: list[dict[str, Any]]) -> None:
    rs[2]["conversations"][0]["value"] = "<image>\nOnly one placeholder for three images."


def _no_gpt_turn(root: Path, rs: list[dict[str, Any]]) -> None:
    rs[2]["conversations"] = rs[2]["conversations"][:1]


def _turns_out_of_order(root: Path, rs: list[dict[str, Any]]) -> None:
    rs[2]["conversations"].insert(1, {"from": "human", "value": "Please answer."})


def _video_record(root: Path, rs: list[dict[str, Any]]) -> None:
    rs[2]["video"] = "clip.mp4"


BAD_RECORDS = {
    "missing image file": (
        _missing_image,
        "images[1]",
        "image 'Split1/task0/2_1.png': file not found",
    ),
    "placeholder count": (
        _placeholder_mismatch,
        "images",
        "3 image(s) but 1 <image> placeholder(s)",
    ),
    "no gpt turn": (_no_gpt_turn, "conversations", "need at least a user and an assistant turn"),
    "turn order": (_turns_out_of_order, "conversations[1].from", "'human' turn out of order"),
    "video": (_video_record, "video", "video records are not supported"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_a_bad_record_names_file_record_and_field(general: Path, case: str) -> None:
    corrupt, fld, message = BAD_RECORDS[case]
    edit_json(general / ANNOTATIONS, lambda rs: corrupt(general, rs))
    with pytest.raises(DataValidationError) as info:
        _load(general)
    msg = str(info.value)
    assert _where(ANNOTATIONS, "m4-2", fld) + message in msg, msg
    assert "nothing was written" in msg
    assert {p.record_id for p in info.value.problems} == {"m4-2"}


def test_missing_images_suggest_extracting_the_archives(general: Path) -> None:
    (general / "Split1" / "task1" / "1_0.png").unlink()
    (general / "task1.zip").write_bytes(b"PK")  # M4-Instruct ships its images zipped
    with pytest.raises(DataValidationError, match=r"hint: .*task1\.zip"):
        _load(general)


def test_file_level_errors_are_clear(tmp_path: Path) -> None:
    root = build_general(tmp_path / "m4", n=1, file="a.json")
    with pytest.raises(
        DataSourceError,
        match=r"data\.general: several data files.*set "
        r"data\.general\.file",
    ):
        _load(root)
    with pytest.raises(DataSourceError, match=r"data\.general\.file: 'nope\.json' not found"):
        _load(root, file="nope.json")
    with pytest.raises(
        DataSourceError,
        match=r"data\.general\.file: '\.\./x\.json' is "
        "outside the dataset root",
    ):
        _load(root, file="../x.json")
    (root / "empty.json").write_text("[]")
    with pytest.raises(DataSourceError, match=r"empty\.json: contains no records"):
        _load(root, file="empty.json")
    with pytest.raises(DataSourceError, match=r"data\.general\.local_dir: .* is not a directory"):
        _load(tmp_path / "absent")


# ------------------------------------------------------------------------------ config
def test_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"data: .*embedded world writes its own general"):
        parse_params({"data": {"general": {"local_dir": "/x"}}})  # source: world
    with pytest.raises(ConfigError, match=r"set local_dir .* or hub_id"):
        parse_params({"data": {"source": "mis", "mis": {"local_dir": "/m"}, "general": {}}})
    with pytest.raises(ConfigError, match="max_samples 0 imports nothing"):
        parse_params(
            {
                "data": {
                    "source": "mis",
                    "mis": {"local_dir": "/m"},
                    "general": {"local_dir": "/g", "max_samples": 0},
                }
            }
        )
    with pytest.raises(ConfigError, match=r"data\.general: .*either local_dir or hub_id"):
        parse_params(
            {
                "data": {
                    "source": "mis",
                    "mis": {"local_dir": "/m"},
                    "general": {"local_dir": "/g", "hub_id": "a/b"},
                }
            }
        )
    assert parse_params({}).data.general is None  # absent: no general import


def test_hub_offline_names_the_general_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(DataSourceError) as info:
        load_general(GeneralDataConfig(hub_id="lmms-lab/M4-Instruct-Data"), progress=False)
    msg = str(info.value)
    assert "data.general.hub_id: cannot download Hub dataset 'lmms-lab/M4-Instruct-Data'" in msg
    assert "data.general.local_dir" in msg


# ------------------------------------------------------------------------------ generate
def _params(mis: Path, general: Path, **general_kw: Any) -> Any:
    return parse_params(
        {
            "data": {
                "source": "mis",
                "mis": {"local_dir": str(mis)},
                "general": {"local_dir": str(general), **general_kw},
            }
        }
    ).data


def test_generate_writes_the_general_mix_that_train_reads(tmp_path: Path, general: Path) -> None:
    from mirage_safety.config import TrainConfig
    from mirage_safety.data.generate import generate
    from mirage_safety.training.train import load_mix

    mis = build_mis(tmp_path / "mis", n_train=8, n_test=1, splits=("easy",))
    out = tmp_path / "data"
    manifest = generate(
        _params(mis, general, max_samples=4, seed=3), out, workers=1, progress=False
    )

    records = read_json(out / "general" / "train.json")
    assert len(records) == 4 and all(r["category"] == GENERAL_CATEGORY for r in records)
    for rec in records:  # images copied under data/general, paths relative to it
        assert all(
            p.startswith("images/Split1/") and (out / "general" / p).is_file()
            for p in rec["images"]
        )
    assert read_json(out / "general" / "test.json") == []  # unchanged: no general test set
    info = manifest["files"]["general/train.json"]
    assert info["count"] == 4 and info["categories"] == {GENERAL_CATEGORY: 4}
    assert len(info["sha256"]) == 64 and manifest["general_images_sha256"]
    assert manifest["general_import"] == {
        "origin": str(general.resolve()),
        "hub_id": None,
        "revision": None,
        "file": ANNOTATIONS,
        "records_in_file": 6,
        "max_samples": 4,
        "seed": 3,
        "imported": 4,
    }
    assert manifest["params"]["general"]["max_samples"] == 4

    # train's own loader mixes them in unchanged (curated = the imported safety records)
    (out / "curated").mkdir()
    (out / "curated" / "train.json").write_text((out / "mis" / "train.json").read_text())
    rows, n_safety, n_general = load_mix(TrainConfig(general_ratio=0.11), out)
    assert (n_safety, n_general) == (8, 1)  # round(0.11 * 8 / 0.89)
    picked = [r for r in rows if r.record.get("kind") == "general"]
    assert len(picked) == 1 and picked[0].root == out / "general"


def test_generate_without_data_general_keeps_the_file_empty(tmp_path: Path) -> None:
    from mirage_safety.data.generate import generate

    mis = build_mis(tmp_path / "mis", n_train=2, n_test=1, splits=("easy",))
    cfg = parse_params({"data": {"source": "mis", "mis": {"local_dir": str(mis)}}}).data
    manifest = generate(cfg, tmp_path / "data", workers=1, progress=False)
    assert read_json(tmp_path / "data" / "general" / "train.json") == []
    assert "general_import" not in manifest and "general" not in manifest["params"]
    # no embedded lmms-eval task for real data, only a note (the directory is a DVC output)
    tasks = tmp_path / "data" / "lmms_tasks"
    assert [p.name for p in tasks.iterdir()] == ["README.md"]
    assert "eval.general.tasks" in (tasks / "README.md").read_text()


def test_generate_with_a_bad_general_record_writes_nothing(tmp_path: Path, general: Path) -> None:
    from mirage_safety.data.generate import generate

    mis = build_mis(tmp_path / "mis", n_train=2, n_test=1, splits=("easy",))
    edit_json(general / ANNOTATIONS, lambda rs: _no_gpt_turn(general, rs))
    out = tmp_path / "data"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier run's data")
    with pytest.raises(DataValidationError) as info:
        generate(_params(mis, general), out, workers=1, progress=False)
    assert _where(ANNOTATIONS, "m4-2", "conversations") in str(info.value)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data")] == []
