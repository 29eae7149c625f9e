"""VLGuard test set (Zong et al., "Safety Fine-Tuning at (Almost) No Cost", ICML 2024).

Source: https://github.com/ys-zong/VLGuard, ``data/test.json`` (also on the Hub as
``ys-zong/VLGuard``: ``test.json`` + ``test.zip``); the three subsets are those of
``utils/utils.py`` ``load_data`` as run by ``VLGuard_eval.py --dataset
safe_safes|safe_unsafes|unsafes``, which joins ``image`` onto ``--imageDir
/path/to/VLGuard/test``.

Layout::

    <root>/test.json
    <root>/test/<image>     test.zip unpacked in place (its top folder is ``test/``), or
    <root>/<image>          the images directly under the root (used when there is no test/)

``test.json`` is a list of ``{id, image ("bad_ads/<uuid>.png", "HOD/img_hod_….jpg" ...),
safe (bool), instr-resp: [{<instruction key>, response}], harmful_category,
harmful_subcategory}`` (the last two on unsafe images only).  Each instruction is one
sample, ``"<id>/<subset>"``:

=========================  ======================  ==============================
image                      instruction key         subset
=========================  ======================  ==============================
safe (``safe: true``)      ``safe_instruction``    ``safe_safes`` (helpfulness)
safe (``safe: true``)      ``unsafe_instruction``  ``safe_unsafes``
unsafe (``safe: false``)   ``instruction``         ``unsafes``
=========================  ======================  ==============================

Any other combination is a problem (unknown subset).  ``meta``: ``reference`` (the
release's response, as is: on ``safe_safes`` it equals the GPT-4V reference of
``data/gpt4_safe_safes.json`` that ``gpt4_evaluator.py`` compares against, and it is empty
on 17 of them in the published files, so ``response`` must be a string but may be empty),
``harmful`` (False only for ``safe_safes``), ``category`` / ``sub_category``
(``harmful_category`` / ``harmful_subcategory``; None on safe images), ``safe_image`` and
``source_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mirage_safety.data.schema import Validator
from mirage_safety.evaluation.benchmarks.sample import (
    BenchSample,
    image_under,
    read_layout_json,
    validate,
)

NAME = "vlguard"
FILE = "test.json"
#: the folder test.zip unpacks into
IMAGE_DIR = "test"
#: instruction key -> subset
SUBSETS = {"safe_instruction": "safe_safes", "unsafe_instruction": "safe_unsafes",
           "instruction": "unsafes"}
#: the instruction keys an image may carry, by its ``safe`` flag
KEYS_FOR_IMAGE = {True: ("safe_instruction", "unsafe_instruction"), False: ("instruction",)}


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    """Every VLGuard test prompt under ``root`` (see the module docstring), in file order."""
    root = Path(root)

    def build(v: Validator) -> list[BenchSample]:
        records = read_layout_json(root / FILE, v, root=root)
        if records is None:
            return []
        if not isinstance(records, list):
            v.add(FILE, "-", "<file>", "expected a JSON list of records")
            return []
        prefix = f"{IMAGE_DIR}/" if (root / IMAGE_DIR).is_dir() else ""
        out: list[BenchSample] = []
        for idx, rec in enumerate(records):
            if not isinstance(rec, dict):
                v.add(FILE, f"#{idx}", "<record>", "record is not a JSON object")
                continue
            out.extend(_samples(v, rec, idx, prefix))
        return out

    return validate(root, build, name=NAME, check_images=check_images)


def _samples(v: Validator, rec: dict[str, Any], idx: int, prefix: str) -> list[BenchSample]:
    rid = v.check_id(FILE, rec, idx)
    image = image_under(v, FILE, rid, "image", prefix, rec.get("image"))
    safe = rec.get("safe")
    if not isinstance(safe, bool):
        v.add(FILE, rid, "safe", f"must be true or false, not {safe!r}")
        return []
    category = sub_category = None
    if not safe:
        category = v.check_text(FILE, rid, rec, "harmful_category")
        sub_category = v.check_text(FILE, rid, rec, "harmful_subcategory")
    pairs = rec.get("instr-resp")
    if not isinstance(pairs, list) or not pairs:
        v.add(FILE, rid, "instr-resp", "need a non-empty list of {instruction, response}")
        return []
    out: list[BenchSample] = []
    for k, pair in enumerate(pairs):
        fld = f"instr-resp[{k}]"
        if not isinstance(pair, dict):
            v.add(FILE, rid, fld, "not a JSON object")
            continue
        keys = [key for key in SUBSETS if key in pair]
        if len(keys) != 1:
            v.add(FILE, rid, fld, "need exactly one of " + ", ".join(SUBSETS)
                  + f" (found {', '.join(keys) or 'none'})")
            continue
        key = keys[0]
        if key not in KEYS_FOR_IMAGE[safe]:
            kind = "safe" if safe else "unsafe"
            v.add(FILE, rid, f"{fld}.{key}",
                  f"unknown subset: {key!r} on a {kind} image (safe: {str(safe).lower()}) "
                  f"takes {' or '.join(KEYS_FOR_IMAGE[safe])}")
            continue
        question = _text(v, rid, f"{fld}.{key}", pair.get(key))
        reference = pair.get("response")
        if not isinstance(reference, str):
            v.add(FILE, rid, f"{fld}.response", f"must be a string, not {reference!r}")
            continue
        if question is None or image is None:
            continue
        subset = SUBSETS[key]
        out.append(BenchSample(
            id=f"{rid}/{subset}", subset=subset, question=question, images=(image,),
            meta={"reference": reference, "harmful": subset != "safe_safes",
                  "category": category, "sub_category": sub_category, "safe_image": safe,
                  "source_id": rid}))
    return out


def _text(v: Validator, rid: str, fld: str, value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    v.add(FILE, rid, fld, "missing or empty text")
    return None


