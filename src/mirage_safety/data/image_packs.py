"""Image packs: many small images in one uncompressed zip, addressed by an ordinary path.

A record's image path may pass through a pack: ``images/general_train/pack-00003.zip/
general_train-00777_1.png`` is the member ``general_train-00777_1.png`` of the zip file
``images/general_train/pack-00003.zip`` under the dataset root.  Every reader resolves paths
through :func:`mirage_safety.data.chat.resolve_image`, so a pack and a folder of files
are interchangeable in any record, and a pack can be unpacked with any zip tool.

Why: the embedded world's general VQA data holds ~50k images of ~2 KB.  As separate files,
creating them cost the kernel more than rendering them cost Python (0.1-0.5 ms per file on
the development VM), and DVC then hashed and cached each one again.  A pack of 256 samples is
one file.  The MIS-schema data (``data/mis``) stays one file per image, as the public MIS
layout has it.

Packs are deterministic: members in a fixed order, stored (PNG is already compressed), with a
fixed timestamp and permissions, so the same images give the same bytes.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PACK_SUFFIX = ".zip"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no build-time timestamp


def pack_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed zip of ``(name, data)`` members, byte-identical for equal input."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # unix, whatever the writing OS
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def split_pack_path(rel: PurePosixPath) -> tuple[PurePosixPath, str] | None:
    """``(pack path, member name)`` when a directory component of ``rel`` is a pack."""
    parts = rel.parts
    for i, part in enumerate(parts[:-1]):
        if part.endswith(PACK_SUFFIX):
            return PurePosixPath(*parts[: i + 1]), "/".join(parts[i + 1 :])
    return None


# One open ZipFile per pack and per process: opening re-reads the central directory, and a
# handle inherited across fork() would share its file offset with the parent.
_OPEN: dict[tuple[int, str], zipfile.ZipFile] = {}


def _zip(pack: Path) -> zipfile.ZipFile:
    key = (os.getpid(), os.fspath(pack))
    zf = _OPEN.get(key)
    if zf is None:
        zf = _OPEN[key] = zipfile.ZipFile(pack)
    return zf


@dataclass(frozen=True)
class PackedImage:
    """An image stored as ``member`` of the zip file ``pack``.

    Answers the few ``Path`` questions readers ask of an image (``is_file``, ``read_bytes``,
    ``name``, ``suffix``), so code that hashes or copies images takes either.
    """

    pack: Path
    member: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.member).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.member).suffix

    def is_file(self) -> bool:
        return self.exists()

    def exists(self) -> bool:
        if not self.pack.is_file():
            return False
        try:
            _zip(self.pack).getinfo(self.member)
        except KeyError:
            return False
        return True

    def read_bytes(self) -> bytes:
        return _zip(self.pack).read(self.member)

    def __str__(self) -> str:
        return f"{self.pack}/{self.member}"


def image_at(root: str | os.PathLike[str], rel: str) -> Path | PackedImage:
    """Where the record path ``rel`` points under ``root``: a file or a pack member.

    Not checked (see ``resolve_image`` for the checked version that names the record).
    """
    pure = PurePosixPath(str(rel).replace("\\", "/"))
    packed = split_pack_path(pure)
    if packed is None:
        return Path(root) / pure
    return PackedImage(Path(root) / packed[0], packed[1])
