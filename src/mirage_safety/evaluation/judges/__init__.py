"""Judges of the MIS protocol: ``world`` (embedded world's ground truth), ``keyword``
(refusal phrases, text only) and ``openai`` (a multimodal model behind an
OpenAI-compatible endpoint).  See :mod:`.base` for the verdict labels."""

from __future__ import annotations

from pathlib import Path

from mirage_safety.config import EvalConfig
from mirage_safety.evaluation.judges.base import Judge, JudgeInput, Verdict
from mirage_safety.evaluation.judges.keyword import KeywordJudge
from mirage_safety.evaluation.judges.openai_judge import OpenAIJudge
from mirage_safety.evaluation.judges.world_judge import WorldJudge

__all__ = ["JUDGES", "Judge", "JudgeInput", "Verdict", "make_judge"]

JUDGES = ("world", "keyword", "openai")


def make_judge(name: str, cfg: EvalConfig, *, cache_dir: Path | None = None) -> Judge:
    """The judge called ``name``.  Only ``openai`` uses ``cache_dir`` (the endpoint client's
    content-hash cache, shared with the teacher and the curation judge); the other two are
    cheap and deterministic."""
    if name == "world":
        return WorldJudge(cfg)
    if name == "keyword":
        return KeywordJudge()
    if name == "openai":
        return OpenAIJudge(cfg.openai, cache_dir=cache_dir)
    raise ValueError(f"unknown judge {name!r}; expected one of {', '.join(JUDGES)}")
