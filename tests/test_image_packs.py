"""Image packs: general images live in uncompressed zips addressed by ordinary paths."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from mirage_safety.data.chat import RecordError, load_image, resolve_image
from mirage_safety.data.image_packs import PackedImage, pack_bytes
from mirage_safety.data.schema import Validator


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def root(tmp_path):
    pack = tmp_path / "images" / "split" / "pack-00000.zip"
    pack.parent.mkdir(parents=True)
    pack.write_bytes(pack_bytes([("a_1.png", _png((200, 0, 0))), ("a_2.png", _png((0, 0, 200)))]))
    return tmp_path


def test_pack_bytes_are_deterministic_and_a_plain_stored_zip():
    members = [("x.png", _png((1, 2, 3))), ("y.png", _png((4, 5, 6)))]
    data = pack_bytes(members)
    assert data == pack_bytes(members)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["x.png", "y.png"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.read("y.png") == members[1][1]
        assert zf.testzip() is None


def test_a_path_through_a_pack_resolves_to_the_member_pixels(root):
    image = resolve_image(root, "images/split/pack-00000.zip/a_2.png", rid="r1")
    assert isinstance(image, PackedImage)
    pixels = np.asarray(load_image(image))
    assert pixels.shape == (8, 8, 3) and tuple(pixels[0, 0]) == (0, 0, 200)


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("images/split/pack-00000.zip/missing.png", "no member 'missing.png'"),
        ("images/split/pack-00009.zip/a_1.png", "not found"),
    ],
)
def test_a_missing_member_or_pack_names_record_field_and_pack(root, rel, why):
    with pytest.raises(RecordError, match=rf"record 'r7': field 'images\[1\]'.*{why}"):
        resolve_image(root, rel, rid="r7", field="images[1]")


def test_validator_reads_packed_images_and_reports_bad_members(root):
    (root / "images" / "split" / "pack-00001.zip").write_bytes(
        pack_bytes([("junk.png", b"not a png")])
    )
    v = Validator(root=root)
    v.check_path("f.json", "ok", "image_path1", "images/split/pack-00000.zip/a_1.png")
    assert not v.problems
    v.check_path("f.json", "gone", "image_path1", "images/split/pack-00000.zip/b.png")
    v.check_path("f.json", "junk", "image_path2", "images/split/pack-00001.zip/junk.png")
    text = "\n".join(map(str, v.problems))
    assert "gone" in text and "no member 'b.png'" in text
    assert "junk" in text and "unreadable image" in text
