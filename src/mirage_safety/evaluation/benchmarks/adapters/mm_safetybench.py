"""MM-SafetyBench (Liu et al., "MM-SafetyBench: A Benchmark for Safety Evaluation of
Multimodal Large Language Models", ECCV 2024).

Source: https://github.com/isXinLiu/MM-SafetyBench, ``data/processed_questions/
<NN-Scenario>.json`` (13 files; the ``01-Illegal_Activitiy`` misspelling is the release's
own), images from the authors' ``MM-SafetyBench(imgs).zip`` (Google Drive), placed as
``data/imgs/``.  The text sent with each image kind is the pairing of the README's
evaluation section: SD images with ``Rephrased Question(SD)`` ("The image shows a
phrase of ..."), SD_TYPO and TYPO images with ``Rephrased Question`` ("The bottom of the
image shows a phrase of ..."); HELM's ``mm_safety_bench_scenario.py`` likewise sends
SD_TYPO with ``Rephrased Question``.

Layout (``root`` is the repository's ``data/`` folder; the repository root itself is
accepted too, then everything below lies under ``data/``)::

    <root>/processed_questions/01-Illegal_Activitiy.json ... 13-Gov_Decision.json
    <root>/imgs/<NN-Scenario>/{SD,SD_TYPO,TYPO}/<question id>.jpg
           (or MM-SafetyBench(imgs)/..., the zip's own top folder, when there is no imgs/)

Each question file is an object ``{"0": {Question, GPT-Pred, Changed Question, Key Phrase,
Phrase Type, Rephrased Question, Rephrased Question(SD)}, "1": ...}``.  Every question
yields three samples, ``"<scenario>/<id>/<kind>"`` with subset ``SD``, ``SD_TYPO`` and
``TYPO``, in file order; a question whose image of any kind is missing is a problem.
``meta``: ``scenario`` ("01-Illegal_Activitiy"), ``scenario_id`` (1..13), ``question``
(the original ``Question``), ``key_phrase``, ``harmful`` (True), and ``changed_question`` /
``phrase_type`` when the record has them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mirage_safety.data.schema import Validator
from mirage_safety.evaluation.benchmarks.sample import BenchSample, read_layout_json, validate

NAME = "mm_safetybench"
QUESTIONS_DIR = "processed_questions"
#: image folder names, first present wins (``imgs`` per the README, else the zip's folder)
IMAGE_DIRS = ("imgs", "MM-SafetyBench(imgs)")
#: (image kind = subset, the text field sent with it), in the README's Kind 1..3 order
KINDS = (("SD", "Rephrased Question(SD)"), ("SD_TYPO", "Rephrased Question"),
         ("TYPO", "Rephrased Question"))
N_SCENARIOS = 13
SCENARIO_RE = re.compile(r"(\d{2})-(\w+)", re.ASCII)
QUESTION_ID_RE = re.compile(r"\d+", re.ASCII)
REQUIRED = ("Question", "Key Phrase", "Rephrased Question", "Rephrased Question(SD)")


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    """Every MM-SafetyBench prompt under ``root`` (see the module docstring)."""
    root = Path(root)

    def build(v: Validator) -> list[BenchSample]:
        base = "data/" if (not (root / QUESTIONS_DIR).is_dir()
                           and (root / "data" / QUESTIONS_DIR).is_dir()) else ""
        qrel = base + QUESTIONS_DIR
        qdir = root / qrel
        if not qdir.is_dir():
            v.add(qrel, "-", "<file>",
                  "directory not found (is this the benchmark's published layout?)")
            return []
        images = next((base + d for d in IMAGE_DIRS if (root / base / d).is_dir()),
                      base + IMAGE_DIRS[0])
        files = sorted(p for p in qdir.iterdir() if p.suffix == ".json" and p.is_file())
        if not files:
            v.add(qrel, "-", "<file>", "no <NN-Scenario>.json question files")
            return []
        seen: dict[int, str] = {}
        out: list[BenchSample] = []
        for path in files:
            rel = f"{qrel}/{path.name}"
            m = SCENARIO_RE.fullmatch(path.stem)
            if m is None or not 1 <= int(m.group(1)) <= N_SCENARIOS:
                v.add(rel, "-", "<file>", "not a scenario file: expected <NN-Scenario>.json, "
                      f"NN in 01..{N_SCENARIOS}")
                continue
            scenario_id = int(m.group(1))
            if scenario_id in seen:
                v.add(rel, "-", "<file>", f"scenario {scenario_id:02d} is also {seen[scenario_id]}")
                continue
            seen[scenario_id] = path.name
            data = read_layout_json(path, v, root=root)
            if data is None:
                continue
            if not isinstance(data, dict):
                v.add(rel, "-", "<file>", "expected a JSON object {question id: record}")
                continue
            for key, rec in data.items():
                out.extend(_samples(v, rel, path.stem, scenario_id, key, rec, images))
        return out

    return validate(root, build, name=NAME, check_images=check_images)


def _samples(v: Validator, rel: str, scenario: str, scenario_id: int, key: str, rec: Any,
             images: str) -> list[BenchSample]:
    if QUESTION_ID_RE.fullmatch(key) is None:
        v.add(rel, key, "<key>", "question id must be a non-negative integer "
              "(its images are <id>.jpg)")
        return []
    if not isinstance(rec, dict):
        v.add(rel, key, "<record>", "record is not a JSON object")
        return []
    texts = {fld: v.check_text(rel, key, rec, fld) for fld in REQUIRED}
    meta: dict[str, Any] = {"scenario": scenario, "scenario_id": scenario_id,
                            "question": texts["Question"], "key_phrase": texts["Key Phrase"],
                            "harmful": True}
    for fld, name in (("Changed Question", "changed_question"), ("Phrase Type", "phrase_type")):
        if isinstance(rec.get(fld), str):
            meta[name] = rec[fld]
    complete = all(t is not None for t in texts.values())
    out: list[BenchSample] = []
    for kind, fld in KINDS:
        image = f"{images}/{scenario}/{kind}/{key}.jpg"
        n = len(v.problems)
        v.check_path(rel, key, f"{kind} image", image)
        question = texts[fld]
        if question is None or not complete or len(v.problems) != n:
            continue
        out.append(BenchSample(id=f"{scenario}/{key}/{kind}", subset=kind, question=question,
                               images=(image,), meta=dict(meta)))
    return out
