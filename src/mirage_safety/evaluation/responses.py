"""Incremental, idempotent response files (``eval/responses_<model>.jsonl``).

Each row is one (split, id) answer of one model.  Rows are appended batch by batch and
fsync'ed, so an interrupted evaluation resumes where it stopped; re-running never writes a
second row for the same (split, id).  Every row carries the *fingerprint* of what produced
it (model content hash + decoding settings): rows from another model or other settings are
dropped on open, so a resumed run never mixes two models' answers.  Rows also carry the
hash of their input (``input_sha``: question + image bytes); the evaluator discards a row
whose input has changed since (data regenerated under the same ids), see
:meth:`ResponseStore.discard`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mirage_safety.io import sha256_file, write_text_atomic

log = logging.getLogger(__name__)

#: files larger than this are fingerprinted by name and size, not content (real checkpoints)
_HASH_LIMIT = 64 << 20


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """Content hash of a model directory (cheap for multi-GB checkpoints)."""
    import hashlib

    root = Path(model_dir)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and "checkpoint-" not in str(q)):
        rel = p.relative_to(root).as_posix()
        size = p.stat().st_size
        digest = sha256_file(p) if size <= _HASH_LIMIT else f"size:{size}"
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:16]


class ResponseStore:
    """Append-only JSONL of responses keyed by ``(split, id)``."""

    def __init__(self, path: str | os.PathLike[str], fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        kept: list[str] = []
        dropped = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                dropped += 1
                continue
            key = (str(row.get("split")), str(row.get("id")))
            if row.get("fingerprint") != self.fingerprint or key in self._rows:
                dropped += 1
                continue
            self._rows[key] = row
            kept.append(line)
        if dropped:
            log.info(
                "%s: dropped %d stale or partial row(s), kept %d", self.path, dropped, len(kept)
            )
            write_text_atomic(self.path, "".join(f"{k}\n" for k in kept))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        new = []
        for row in rows:
            key = (str(row["split"]), str(row["id"]))
            if key in self._rows:
                continue
            row = {**row, "fingerprint": self.fingerprint}
            self._rows[key] = row
            new.append(json.dumps(row, ensure_ascii=False, sort_keys=True))
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(f"{line}\n" for line in new))
                fh.flush()
                os.fsync(fh.fileno())
        return len(new)

    def discard(self, keys: Iterable[tuple[str, str]]) -> int:
        """Forget rows (answers to inputs that have changed since); rewrites the file."""
        gone = [k for k in set(keys) if self._rows.pop(k, None) is not None]
        if gone:
            write_text_atomic(
                self.path,
                "".join(
                    json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                    for r in self._rows.values()
                ),
            )
        return len(gone)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def get(self, split: str, rid: str) -> dict[str, Any] | None:
        return self._rows.get((split, rid))
