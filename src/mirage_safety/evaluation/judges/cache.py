"""On-disk verdict cache: a judge call is paid for once per distinct input.

The key is the sha256 of (judge name, judge version, question, response, the sha256 of
each image's bytes), so a changed model answer, a changed image or a new judge model or
prompt version is a miss, while re-running the same evaluation is free.  One JSON file per
key, ``<root>/<judge>/<key[:2]>/<key[2:]>.json``, written atomically (a crash never leaves
a half-written entry).  Only usable verdicts are stored: errors and unparseable answers
are judged again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from mirage_safety.evaluation.judges.base import JudgeInput, Verdict
from mirage_safety.io import read_json, sha256_file, write_json_atomic

log = logging.getLogger(__name__)


def cache_key(judge: str, version: str, question: str, response: str,
              image_hashes: Sequence[str]) -> str:
    # JSON of a list: unambiguous field boundaries (no "a|b" + "c" == "a" + "b|c" collisions)
    payload = json.dumps([judge, version, question, response, list(image_hashes)],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    def __init__(self, root: Path, judge: str, version: str) -> None:
        self.dir = Path(root) / judge
        self.judge = judge
        self.version = version

    def key(self, item: JudgeInput) -> str:
        """Raises OSError when an image cannot be read (the caller turns it into an error)."""
        hashes = [sha256_file(p) for p in item.image_paths]
        return cache_key(self.judge, self.version, item.question, item.response, hashes)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key[2:]}.json"

    def get(self, key: str) -> Verdict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = read_json(path)
            verdict = Verdict.from_dict(entry["verdict"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("judge cache: unreadable entry %s (%s), judging again", path, exc)
            return None
        return None if verdict.label == "judge_error" else verdict

    def put(self, key: str, verdict: Verdict) -> bool:
        """Store a usable verdict; returns False (and stores nothing) for an error verdict."""
        if verdict.label == "judge_error":
            return False
        write_json_atomic(self._path(key), {"key": key, "judge": self.judge,
                                            "version": self.version,
                                            "verdict": verdict.to_dict()})
        return True

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json")) if self.dir.is_dir() else 0
