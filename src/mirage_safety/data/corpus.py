"""The tokenizer's corpus for the embedded tiny VLM: every text the world and the records
can hold, so every label style's words are single tokens whichever style the training data
currently uses (read by the ``base`` stage and the tiny Hub-family builders)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mirage_safety.data import world as W


def world_label_corpus() -> Iterator[str]:
    """Every text the embedded world can produce, in every label style.

    Feeding this to the tokenizer makes refusal / CoT / text-only words single tokens
    whichever label style ``data/mis/train.json`` currently holds.
    """

    templates = (*W.REQUEST_TEMPLATES, *W.BENIGN_TEMPLATES)
    yield W.REFUSAL
    for t in templates:
        yield W.question_text(t)
    for rule in W.RULES:
        firsts = (*rule.hard_a, *rule.risky_a, *W.SAFE_OBJECTS)
        for a in firsts:
            for b in rule.targets:
                for t in templates:
                    yield W.question_text(t, a, b)
                    for text_only in (False, True):
                        for harmful in (False, True):
                            if harmful and t in W.BENIGN_TEMPLATES:
                                continue
                            yield W.cot_answer(a, b, t, harmful, text_only=text_only)
    for name in W.OBJECT_NAMES:
        yield name
        for task in ("which", "count"):
            yield W.general_question(task, name)


def file_corpus(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """All conversation turns (train records) and question/answer fields (test records)."""
    for rec in records:
        for turn in rec.get("conversations") or []:
            yield str(turn.get("value", "")).replace("<image>", " ").strip()
        for key in ("question", "answer"):
            if isinstance(rec.get(key), str):
                yield rec[key]
