"""External-benchmark adapters MSSBench, VLSBench, MOSSBench and MIS on fixtures in their
published layouts (tests/bench_fixtures): good copies load, bad records and escaping paths
are problems naming the file, the record and the field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench_fixtures import mis as mis_fx
from bench_fixtures import mossbench as moss_fx
from bench_fixtures import mssbench as mss_fx
from bench_fixtures import vlsbench as vls_fx
from mirage_safety.data.schema import DataValidationError
from mirage_safety.evaluation.benchmarks.catalog import mis, mossbench, mssbench, vlsbench
from mirage_safety.evaluation.benchmarks.sample import BenchSample
from realdata_fixtures import read_json, write_json, write_png

# adapter, fixture builder, (file, record id, field) of the bad fixture's problem
CASES: dict[str, tuple[ModuleType, ModuleType, tuple[str, str, str]]] = {
    "mssbench": (mssbench, mss_fx, ("combined.json", "chat[3]", "unsafe_image_path")),
    "vlsbench": (vlsbench, vls_fx, ("data.json", "4", "category")),
    "mossbench": (
        mossbench,
        moss_fx,
        ("data/images_information/information.json", "5", "question"),
    ),
    "mis": (mis, mis_fx, ("mis_test/mis_hard.json", "#2", "image_path2")),
}


def _set_first_image(name: str, root: Path, value: Any) -> tuple[str, str, str]:
    """Put ``value`` into the first record's first image field; (file, record, field)."""
    if name == "mssbench":
        data = read_json(root / "combined.json")
        data["chat"][0]["safe_image_path"] = value
        write_json(root / "combined.json", data)
        return "combined.json", "chat[0]", "safe_image_path"
    if name == "vlsbench":
        data = read_json(root / "data.json")
        data[0]["image_path"] = value
        write_json(root / "data.json", data)
        return "data.json", "0", "image_path"
    if name == "mossbench":
        file = "data/images_information/information.json"
        data = read_json(root / file)
        data["1"]["image"] = value
        write_json(root / file, data)
        return file, "1", "image"
    file = "mis_test/mis_easy.json"
    data = read_json(root / file)
    data[0]["image_path1"] = value
    write_json(root / file, data)
    return file, "1", "image_path1"


def _problem(exc: DataValidationError, file: str, rid: str, fld: str) -> str:
    hits = [p for p in exc.problems if (p.file, p.record_id, p.field) == (file, rid, fld)]
    assert hits, f"no problem for {file} / {rid} / {fld} in:\n{exc}"
    text = str(exc)
    assert file in text and repr(rid) in text and repr(fld) in text
    return hits[0].message


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------------------------ all adapters
def test_good_fixture_loads_in_file_order(case: str, tmp_path: Path) -> None:
    adapter, fx, _ = CASES[case]
    assert case == adapter.NAME
    expected = fx.build(tmp_path)
    samples = adapter.load(tmp_path)
    assert [s.id for s in samples] == expected
    assert all(isinstance(s, BenchSample) for s in samples)
    for s in samples:
        assert s.question is not None and s.images
        for img in s.images:
            assert not Path(img).is_absolute() and ".." not in Path(img).parts
            assert (tmp_path / img).is_file()
        assert isinstance(s.meta["harmful"], bool)
    assert adapter.load(tmp_path) == samples  # deterministic


def test_bad_record_names_file_record_and_field(case: str, tmp_path: Path) -> None:
    adapter, fx, (file, rid, fld) = CASES[case]
    fx.build(tmp_path, bad=True)
    with pytest.raises(DataValidationError) as info:
        adapter.load(tmp_path)
    _problem(info.value, file, rid, fld)
    assert len(info.value.problems) == 1
    assert repr(case) in str(info.value)  # the hint names the benchmark


@pytest.mark.parametrize("value", ["../outside.png", "/etc/passwd", "C:/x.png"])
def test_path_escaping_the_root_is_rejected(case: str, tmp_path: Path, value: str) -> None:
    adapter, fx, _ = CASES[case]
    root = tmp_path / "bench"
    fx.build(root)
    write_png(tmp_path / "outside.png", size=16)  # exists: only the escape is wrong
    where = _set_first_image(case, root, value)
    with pytest.raises(DataValidationError) as info:
        adapter.load(root)
    assert "escapes the dataset root" in _problem(info.value, *where)


def test_symlink_out_of_the_root_is_rejected(case: str, tmp_path: Path) -> None:
    adapter, fx, _ = CASES[case]
    root = tmp_path / "bench"
    fx.build(root)
    outside = tmp_path / "outside.png"
    write_png(outside, size=16)
    # the folder the adapter joins the first image field onto
    folder = {"mssbench": "chat", "vlsbench": "", "mossbench": "data", "mis": "mis_test"}[case]
    (root / folder / "link.png").symlink_to(outside)
    where = _set_first_image(case, root, "link.png")
    with pytest.raises(DataValidationError) as info:
        adapter.load(root)
    assert "symlink" in _problem(info.value, *where)


def test_missing_image_is_a_problem_unless_images_are_not_checked(
    case: str, tmp_path: Path
) -> None:
    adapter, fx, _ = CASES[case]
    expected = fx.build(tmp_path)
    where = _set_first_image(case, tmp_path, "nowhere.png")
    with pytest.raises(DataValidationError) as info:
        adapter.load(tmp_path)
    assert "file not found" in _problem(info.value, *where)
    assert [s.id for s in adapter.load(tmp_path, check_images=False)] == expected


def test_empty_root_is_a_problem(case: str, tmp_path: Path) -> None:
    adapter, _, _ = CASES[case]
    with pytest.raises(DataValidationError, match="not found"):
        adapter.load(tmp_path)


# ------------------------------------------------------------------------------ MSSBench
def test_mssbench_samples(tmp_path: Path) -> None:
    mss_fx.build(tmp_path)
    samples = {s.id: s for s in mssbench.load(tmp_path)}
    assert len(samples) == 2 * sum(len(q) for _, _, q in mss_fx.ITEMS)
    safe, unsafe = samples["0/1/safe"], samples["0/1/unsafe"]
    query = mss_fx.ITEMS[0][2][1]
    assert safe.question == unsafe.question == mssbench.PROMPT_CHAT_IF + query
    assert safe.question.endswith("The user query is: " + query)
    assert (safe.subset, unsafe.subset) == ("safe", "unsafe")
    assert safe.images == ("chat/1_safe.png",) and unsafe.images == ("chat/1_unsafe.png",)
    assert unsafe.meta == {
        "intent": "ride a bike",
        "type": "physical harm",
        "query": query,
        "pair": 0,
        "context": "unsafe",
        "harmful": True,
    }
    assert safe.meta["harmful"] is False and safe.meta["context"] == "safe"
    assert samples["2/0/unsafe"].meta["pair"] == 2


def test_mssbench_reads_combine_json_as_inference_py_names_it(tmp_path: Path) -> None:
    expected = mss_fx.build(tmp_path)
    (tmp_path / "combined.json").rename(tmp_path / "combine.json")
    assert [s.id for s in mssbench.load(tmp_path)] == expected


@pytest.mark.parametrize(
    ("edit", "fld", "msg"),
    [
        (lambda it: it.update(queries="How?"), "queries", "non-empty list"),
        (lambda it: it.update(queries=[]), "queries", "non-empty list"),
        (lambda it: it.update(queries=["ok", 3]), "queries[1]", "missing or empty text"),
        (lambda it: it.pop("Type"), "Type", "missing or empty text"),
        (lambda it: it.update(intent=""), "intent", "missing or empty text"),
    ],
)
def test_mssbench_bad_item_fields(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], fld: str, msg: str
) -> None:
    mss_fx.build(tmp_path)
    data = read_json(tmp_path / "combined.json")
    edit(data["chat"][1])
    write_json(tmp_path / "combined.json", data)
    with pytest.raises(DataValidationError) as info:
        mssbench.load(tmp_path)
    assert msg in _problem(info.value, "combined.json", "chat[1]", fld)


def test_mssbench_needs_a_chat_list(tmp_path: Path) -> None:
    write_json(tmp_path / "combined.json", [{"safe_image_path": "1.png"}])
    with pytest.raises(DataValidationError) as info:
        mssbench.load(tmp_path)
    _problem(info.value, "combined.json", "-", "chat")


# ------------------------------------------------------------------------------ VLSBench
def test_vlsbench_samples(tmp_path: Path) -> None:
    vls_fx.build(tmp_path)
    samples = vlsbench.load(tmp_path)
    assert {s.subset for s in samples} == {"all"}
    first = samples[0]
    assert first.question == vls_fx.RECORDS[0][0]
    assert first.images == ("imgs/0.png",)
    assert first.meta == {
        "category": "Illegal Activity",
        "sub_category": "Cybercrime",
        "source": "generation",
        "image_description": "picture 0",
        "safety_reason": "risk of record 0",
        "harmful": True,
    }
    # the release's image-only record: empty instruction, shared image
    assert samples[3].question == "" and samples[3].images == samples[2].images


def test_vlsbench_github_layout_under_data(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    expected = vls_fx.build(src)
    root = tmp_path / "repo"
    shutil.copytree(src, root / "data")
    samples = vlsbench.load(root)
    assert [s.id for s in samples] == expected
    assert samples[0].images == ("data/imgs/0.png",)


@pytest.mark.parametrize(
    ("edit", "rid", "fld"),
    [
        (lambda r: r.update(instruction=None), "1", "instruction"),
        (lambda r: r.pop("instruction_id"), "#1", "instruction_id"),
        (lambda r: r.update(instruction_id=True), "#1", "instruction_id"),
        (lambda r: r.update(sub_category=""), "1", "sub_category"),
        (lambda r: r.update(safety_reason=["x"]), "1", "safety_reason"),
        (lambda r: r.update(instruction_id=0), "0", "id"),  # duplicate sample id
    ],
)
def test_vlsbench_bad_fields(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], rid: str, fld: str
) -> None:
    vls_fx.build(tmp_path)
    data = read_json(tmp_path / "data.json")
    edit(data[1])
    write_json(tmp_path / "data.json", data)
    with pytest.raises(DataValidationError) as info:
        vlsbench.load(tmp_path)
    file = "vlsbench" if fld == "id" else "data.json"
    _problem(info.value, file, rid, fld)


def test_vlsbench_optional_fields_may_be_absent(tmp_path: Path) -> None:
    vls_fx.build(tmp_path)
    data = read_json(tmp_path / "data.json")
    for rec in data:
        for fld in vlsbench.OPTIONAL_TEXT:
            rec.pop(fld)
    write_json(tmp_path / "data.json", data)
    assert vlsbench.load(tmp_path)[0].meta["safety_reason"] is None


# ------------------------------------------------------------------------------ MOSSBench
def test_mossbench_samples(tmp_path: Path) -> None:
    moss_fx.build(tmp_path)
    samples = {s.id: s for s in mossbench.load(tmp_path)}
    benign, harmful = samples["benign/1"], samples["harmful/1"]
    assert (benign.subset, harmful.subset) == ("benign", "harmful")
    assert benign.question == moss_fx.BENIGN["1"][0]
    assert harmful.question == moss_fx.CONTRAST["1"][0]
    assert benign.images == ("data/images/1.png",)
    assert harmful.images == ("data_contrast/images/1.png",)
    assert benign.meta["harmful"] is False and harmful.meta["harmful"] is True
    assert (
        benign.meta["over_type"] == "type 1" and samples["benign/2"].meta["over_type"] == "type 2"
    )
    assert benign.meta["description"] == moss_fx.BENIGN["1"][3]
    assert samples["benign/2"].meta["description"] == ""  # empty in the release too
    assert benign.meta["harm"] == [7] and harmful.meta["harm"] is None
    assert sum(s.subset == "harmful" for s in samples.values()) == len(moss_fx.CONTRAST)


def test_mossbench_without_contrast_set_loads_benign_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    moss_fx.build(tmp_path)
    shutil.rmtree(tmp_path / "data_contrast")
    samples = mossbench.load(tmp_path)
    assert [s.id for s in samples] == [f"benign/{p}" for p in moss_fx.BENIGN]
    assert "only the benign subset" in caplog.text


@pytest.mark.parametrize(
    ("edit", "fld"),
    [
        (lambda r: r.update(pid="7"), "pid"),
        (lambda r: r.pop("pid"), "pid"),
        (lambda r: r["metadata"].update(over="type 4"), "metadata.over"),
        (lambda r: r.pop("metadata"), "metadata"),
        (lambda r: r["metadata"].update(harm="7"), "metadata.harm"),
        (lambda r: r.update(description=None), None),  # absent / null description: fine
        (lambda r: r.update(description=3), "description"),
    ],
)
def test_mossbench_bad_fields(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], fld: str | None
) -> None:
    moss_fx.build(tmp_path)
    file = "data/images_information/information.json"
    data = read_json(tmp_path / file)
    edit(data["2"])
    write_json(tmp_path / file, data)
    if fld is None:
        assert mossbench.load(tmp_path)[1].meta["description"] is None
        return
    with pytest.raises(DataValidationError) as info:
        mossbench.load(tmp_path)
    _problem(info.value, file, "2", fld)


def test_mossbench_contrast_problems_name_the_contrast_file(tmp_path: Path) -> None:
    moss_fx.build(tmp_path)
    file = "data_contrast/images_information/information.json"
    data = read_json(tmp_path / file)
    data["3"]["question"] = ""
    write_json(tmp_path / file, data)
    with pytest.raises(DataValidationError) as info:
        mossbench.load(tmp_path)
    _problem(info.value, file, "3", "question")


# ------------------------------------------------------------------------------ MIS
def test_mis_samples(tmp_path: Path) -> None:
    mis_fx.build(tmp_path)
    samples = {s.id: s for s in mis.load(tmp_path)}
    assert {s.subset for s in samples.values()} == {"easy", "hard", "real"}
    easy = samples["easy/2"]
    assert easy.images == ("mis_test/easy_image/2/object1.png", "mis_test/easy_image/2/object2.png")
    assert easy.question == "How can I use these two things together (easy 2)?"
    assert easy.meta == {
        "category": "Self-Harm",
        "sub_category": "Physical Self-Injury",
        "harmful": True,
    }
    # no id in hard/real: the index in the file
    assert samples["hard/0"].images[0] == "mis_test/hard_image/1/object1.png"


def test_mis_files_at_the_root_and_missing_splits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    mis_fx.build(src)
    root = tmp_path / "root"
    shutil.copytree(src / mis_fx.TEST_DIR, root)
    (root / "mis_real.json").rename(root / "mis_test_real.json")  # the Hub's name
    (root / "mis_hard.json").unlink()
    samples = mis.load(root)
    assert [s.id for s in samples] == ["easy/1", "easy/2", "easy/3", "real/0", "real/1"]
    assert samples[0].images[0] == "easy_image/1/object1.png"


def test_mis_bad_id(tmp_path: Path) -> None:
    mis_fx.build(tmp_path)
    file = "mis_test/mis_easy.json"
    data = read_json(tmp_path / file)
    data[1]["id"] = [2]
    data[2]["id"] = 1  # duplicate of the first
    write_json(tmp_path / file, data)
    with pytest.raises(DataValidationError) as info:
        mis.load(tmp_path)
    _problem(info.value, file, "#1", "id")
    _problem(info.value, "mis", "easy/1", "id")
