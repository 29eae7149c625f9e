"""Every bad-input class is refused before anything is returned, and the message names the
file, the record id and the field (MIS and MSR-Align layouts), capped with a total count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirage_safety.config import HubDataConfig
from mirage_safety.data.importers import DataSourceError, load_mis, load_msr_align
from mirage_safety.data.schema import DataValidationError
from realdata_fixtures import build_mis, build_msr, edit_json, write_json, write_png


def _mis_error(root: Path, max_errors: int = 20) -> str:
    with pytest.raises(DataValidationError) as info:
        load_mis(HubDataConfig(local_dir=str(root)), progress=False, max_errors=max_errors)
    return str(info.value)


def _msr_error(root: Path, max_errors: int = 20) -> str:
    with pytest.raises(DataValidationError) as info:
        load_msr_align(HubDataConfig(local_dir=str(root)), progress=False, max_errors=max_errors)
    return str(info.value)


def _where(file: str, rid: str, fld: str) -> str:
    return f"{file}: record {rid!r}: field {fld!r}: "


@pytest.fixture
def mis(tmp_path: Path) -> Path:
    return build_mis(tmp_path / "mis", n_train=3, n_test=3)


@pytest.fixture
def msr(tmp_path: Path) -> Path:
    return build_msr(tmp_path / "msr", n=4)


# ------------------------------------------------------------------------ missing image
def test_missing_image_mis_test(mis: Path) -> None:
    (mis / "hard_image" / "2" / "object1.png").unlink()
    msg = _mis_error(mis)
    assert _where("mis_hard.json", "test_hard-2", "image_path1") in msg
    assert "'hard_image/2/object1.png': file not found" in msg
    assert msg.startswith("1 invalid record field(s)")


def test_missing_image_mis_train_suggests_extracting_the_archive(mis: Path) -> None:
    (mis / "images" / "3" / "object2.png").unlink()
    (mis / "images.zip").write_bytes(b"PK")  # the Hub release ships train images zipped
    msg = _mis_error(mis)
    assert (
        _where("mis_train.json", "train-3", "images[1]") + "image 'images/3/object2.png': "
        "file not found" in msg
    )
    assert "hint:" in msg and "images.zip" in msg


def test_missing_image_msr(msr: Path) -> None:
    (msr / "images" / "1_b.png").unlink()
    edit_json(msr / "msr_align.json", lambda rs: rs[2].pop("image"))
    msg = _msr_error(msr)
    assert (
        _where("msr_align.json", "msr-1", "images[1]") + "image 'images/1_b.png': "
        "file not found" in msg
    )
    assert _where("msr_align.json", "msr-2", "images") + "missing image" in msg


# ------------------------------------------------------------------------ unreadable image
def test_unreadable_image_mis(mis: Path) -> None:
    (mis / "easy_image" / "1" / "object2.png").write_bytes(b"not a png at all")
    msg = _mis_error(mis)
    assert _where("mis_easy.json", "test_easy-1", "image_path2") in msg
    assert "unreadable image" in msg


def test_unreadable_image_msr(msr: Path) -> None:
    (msr / "images" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    msg = _msr_error(msr)
    assert _where("msr_align.json", "msr-0", "image[0]") + "image 'images/0.png': unreadable" in msg


# ------------------------------------------------------------------------ image count
def test_image_count_mismatch_mis_train(mis: Path) -> None:
    def one_placeholder(rs: list[dict]) -> None:
        turn = rs[1]["conversations"][0]
        turn["value"] = turn["value"].replace("<image>\n", "", 1)

    edit_json(mis / "mis_train.json", one_placeholder)
    msg = _mis_error(mis)
    assert (
        _where("mis_train.json", "train-2", "images") + "2 image(s) but 1 <image> placeholder(s)"
        in msg
    )


def test_image_count_mismatch_msr(msr: Path) -> None:
    # record 1 has two images but its instruction already carries one placeholder
    edit_json(
        msr / "msr_align.json",
        lambda rs: rs[1].update(instruction="<image>\n" + rs[1]["instruction"]),
    )
    msg = _msr_error(msr)
    assert (
        _where("msr_align.json", "msr-1", "instruction") + "1 <image> placeholder(s) but 2 image(s)"
        in msg
    )


# ------------------------------------------------------------------------ unknown category
def test_unknown_category_mis(mis: Path) -> None:
    edit_json(mis / "mis_real.json", lambda rs: rs[0].update(category="Gambling"))
    edit_json(mis / "mis_real.json", lambda rs: rs[1].update(sub_category="Jaywalking"))
    msg = _mis_error(mis)
    assert _where("mis_real.json", "test_real-1", "category") + "unknown category 'Gambling'" in msg
    assert (
        _where("mis_real.json", "test_real-2", "sub_category") + "unknown sub_category 'Jaywalking'"
        in msg
    )


def test_unknown_category_msr(msr: Path) -> None:
    edit_json(msr / "msr_align.json", lambda rs: rs[3].update(category="Misinformation"))
    msg = _msr_error(msr)
    assert (
        _where("msr_align.json", "msr-3", "category")
        + "unknown MSR-Align category 'Misinformation'"
        in msg
    )
    assert "data.msr_align.category_map" in msg


# ------------------------------------------------------------------------ empty text
def test_empty_text_mis(mis: Path) -> None:
    edit_json(mis / "mis_easy.json", lambda rs: rs[2].update(question="   "))
    edit_json(mis / "mis_train.json", lambda rs: rs[0]["conversations"][1].update(value=""))
    msg = _mis_error(mis)
    assert _where("mis_easy.json", "test_easy-3", "question") + "missing or empty text" in msg
    assert (
        _where("mis_train.json", "train-1", "conversations[1].value") + "missing or empty text"
        in msg
    )


def test_empty_text_msr(msr: Path) -> None:
    edit_json(
        msr / "msr_align.json",
        lambda rs: (rs[0].update(instruction=""), rs[1].pop("response"), rs[2].update(policy=" ")),
    )
    msg = _msr_error(msr)
    assert _where("msr_align.json", "msr-0", "instruction") + "missing or empty text" in msg
    assert _where("msr_align.json", "msr-1", "response") + "missing response" in msg
    assert _where("msr_align.json", "msr-2", "policy") + "missing or empty policy" in msg


# ------------------------------------------------------------------------ duplicate id
def test_duplicate_id_inside_one_file_is_an_error(mis: Path) -> None:
    edit_json(mis / "mis_hard.json", lambda rs: rs[2].update(id=1))
    msg = _mis_error(mis)
    assert (
        _where("mis_hard.json", "test_hard-1", "id") + "duplicate id (first seen in mis_hard.json)"
        in msg
    )


def test_duplicate_string_id_across_files_is_an_error(mis: Path) -> None:
    edit_json(mis / "mis_easy.json", lambda rs: rs[0].update(id="q-7"))
    edit_json(mis / "mis_real.json", lambda rs: rs[1].update(id="q-7"))
    msg = _mis_error(mis)
    assert (
        _where("mis_real.json", "q-7", "id") + "duplicate id (first seen in mis_easy.json)" in msg
    )


def test_duplicate_id_msr(msr: Path) -> None:
    edit_json(msr / "msr_align.json", lambda rs: rs[3].update(id="msr-0"))
    msg = _msr_error(msr)
    assert _where("msr_align.json", "msr-0", "id") + "duplicate id" in msg


def test_missing_test_id_is_an_error(mis: Path) -> None:
    edit_json(mis / "mis_easy.json", lambda rs: rs[1].pop("id"))
    msg = _mis_error(mis)
    assert _where("mis_easy.json", "#1", "id") + "missing or empty id" in msg


# ------------------------------------------------------------------------ escaping paths
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_escaping_the_root_mis(mis: Path, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside.png"
    write_png(outside)
    if kind == "dotdot":
        bad = "../outside.png"
    elif kind == "absolute":
        bad = str(outside)
    else:
        bad = "easy_image/link.png"
        os.symlink(outside, mis / bad)
    edit_json(mis / "mis_easy.json", lambda rs: rs[0].update(image_path2=bad))
    msg = _mis_error(mis)
    assert (
        _where("mis_easy.json", "test_easy-1", "image_path2") + f"path {bad!r} escapes "
        "the dataset root" in msg
    )
    if kind == "symlink":
        assert "(symlink)" in msg


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_escaping_the_root_msr(msr: Path, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside.png"
    write_png(outside)
    bad = {
        "dotdot": "images/../../outside.png",
        "absolute": str(outside),
        "symlink": "images/link.png",
    }[kind]
    if kind == "symlink":
        os.symlink(outside, msr / bad)
    edit_json(msr / "msr_align.json", lambda rs: rs[1]["images"].__setitem__(0, bad))
    msg = _msr_error(msr)
    assert _where("msr_align.json", "msr-1", "images[0]") + f"path {bad!r} escapes" in msg


def test_symlink_inside_the_root_is_fine(mis: Path) -> None:
    os.symlink(mis / "easy_image" / "1" / "object1.png", mis / "easy_image" / "alias.png")
    edit_json(mis / "mis_easy.json", lambda rs: rs[0].update(image_path1="easy_image/alias.png"))
    ds = load_mis(HubDataConfig(local_dir=str(mis)), progress=False)
    assert ds.tests["test_easy"][0]["image_path1"] == "easy_image/alias.png"


# ------------------------------------------------------------------------ malformed files
def test_record_that_is_not_an_object(mis: Path, msr: Path) -> None:
    edit_json(mis / "mis_hard.json", lambda rs: rs.append("oops"))
    msg = _mis_error(mis)
    assert _where("mis_hard.json", "#3", "<record>") + "record is not a JSON object" in msg
    edit_json(msr / "msr_align.json", lambda rs: rs.insert(0, 42))
    msg = _msr_error(msr)
    assert _where("msr_align.json", "#0", "<record>") + "record is not a JSON object" in msg


def test_invalid_json_names_file_and_line(mis: Path) -> None:
    (mis / "mis_real.json").write_text('[\n {"id": 1,\n oops}\n]')
    with pytest.raises(DataSourceError, match=r"mis_real\.json: not valid JSON \(line 3"):
        load_mis(HubDataConfig(local_dir=str(mis)), progress=False)
    write_json(mis / "mis_real.json", {"id": 1})
    with pytest.raises(DataSourceError, match=r"mis_real\.json: expected a JSON list"):
        load_mis(HubDataConfig(local_dir=str(mis)), progress=False)


# ------------------------------------------------------------------------ cap + total count
def test_error_list_is_capped_with_a_total_count(tmp_path: Path) -> None:
    root = build_mis(tmp_path / "mis", n_train=1, n_test=30, splits=("easy",))
    edit_json(root / "mis_easy.json", lambda rs: [r.update(question="") for r in rs])
    msg = _mis_error(root, max_errors=5)
    lines = msg.splitlines()
    assert lines[0] == "30 invalid record field(s); nothing was written:"
    assert sum(line.startswith("  - mis_easy.json: record") for line in lines) == 5
    assert lines[-1] == "  ... and 25 more"
    assert _where("mis_easy.json", "test_easy-5", "question") in msg
    assert "test_easy-6'" not in msg


def test_msr_cap_and_every_record_checked(tmp_path: Path) -> None:
    root = build_msr(tmp_path / "msr", n=30)
    edit_json(root / "msr_align.json", lambda rs: [r.update(category="Nope") for r in rs])
    with pytest.raises(DataValidationError) as info:
        load_msr_align(HubDataConfig(local_dir=str(root)), progress=False, max_errors=5)
    assert len(info.value.problems) == 30
    assert str(info.value).splitlines()[-1] == "  ... and 25 more"
