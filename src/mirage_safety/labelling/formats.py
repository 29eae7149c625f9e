"""Label formats: ``prose`` (one answer, MIS) and ``think`` (reasoning in ``<think>...</think>``
then the final answer, as reasoning models and MSR-Align-trained models emit it).

Who reads what (documented in docs/labelling.md, tested in ``tests/test_formats.py``):

* the evaluation judges (``world``, ``keyword``, ``openai``) see the **whole** response,
  reasoning included: a user of a reasoning model usually sees the trace, so a harmful
  step inside ``<think>`` makes the response Unsafe, and perception is read anywhere;
* general exact-match accuracy compares the **final answer** only (the part after
  ``</think>``; a response without a think block is all answer);
* an unclosed ``<think>`` (cut at ``max_new_tokens``) has no final answer: it scores as
  wrong on general questions, and the curation judge scores its relevance 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    reasoning: str | None  # inside <think>...</think>; None without a think block
    answer: str  # the final answer ("" when the think block never closes)
    closed: bool  # False: "<think>" opened and never closed


def split_think(text: str) -> Parsed:
    """Reasoning and final answer of a response or label."""
    text = text or ""
    m = _THINK.match(text)
    if m:
        return Parsed(m.group(1).strip(), m.group(2).strip(), True)
    if text.lstrip().startswith(THINK_OPEN):
        return Parsed(text.lstrip()[len(THINK_OPEN) :].strip(), "", False)
    return Parsed(None, text.strip(), True)


def final_answer(text: str) -> str:
    return split_think(text).answer


def compose(reasoning: Sequence[str], answer: Sequence[str], fmt: str) -> str:
    """Sentences of the reasoning and of the answer as one label in ``fmt``."""
    if fmt == "think":
        return f"{THINK_OPEN}\n{' '.join(reasoning)}\n{THINK_CLOSE}\n\n{' '.join(answer)}"
    if fmt != "prose":
        raise ValueError(f"unknown label format {fmt!r} (prose | think)")
    return " ".join([*reasoning, *answer])


def normalise_answer(text: str) -> str:
    """Lower-case, collapse spaces, drop trailing punctuation: exact match of short answers."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .!")


def exact_match(response: str, answer: str) -> bool:
    """Exact match after :func:`normalise_answer` (strip,
    lower-case, collapse whitespace, drop trailing ``.``/``!``).  An empty reference
    answer never matches (a record without an answer cannot be scored as correct)."""
    ref = normalise_answer(answer or "")
    return bool(ref) and normalise_answer(response or "") == ref
