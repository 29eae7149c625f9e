"""The ``generate`` stage: the embedded MIS world, or an import of real MIS / MSR-Align data
(plus, with ``data.general``, a general instruction mix into ``data/general/train.json``).

Writes the canonical layout (see :mod:`mirage_safety.data.schema`) into ``data/``.
Everything is built in a temporary sibling directory, validated record by record, and
only then swapped in, so a failure leaves the previous ``data/`` untouched.

Determinism: every sample draws from its own RNG seeded by ``(seed, split, index)``, so
the bytes do not depend on the number of worker processes or on chunking.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from mirage_safety import paths
from mirage_safety.config import DataConfig, Params, WorldConfig
from mirage_safety.data import world as W
from mirage_safety.data.image_packs import PACK_SUFFIX, pack_bytes
from mirage_safety.data.importers import load_general, load_source
from mirage_safety.data.lmms_task import write_no_task, write_world_general_task
from mirage_safety.data.schema import GENERAL_CATEGORY, IMAGE_TOKEN, UNKNOWN_CATEGORY, Validator
from mirage_safety.data.world_benchmarks import write as write_benchmarks
from mirage_safety.io import (
    atomic_dir,
    dumps_json,
    sha256_bytes,
    sha256_file,
    tree_hash,
    write_text_atomic,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = "world-4"  # 2: libpng-encoded images; 3: general images in packs;
# 4: comparison answers reason step by step (name, restate, check, then the verdict)
SPLIT_CODES = {
    "train": 1,
    "test_easy": 2,
    "test_hard": 3,
    "test_benign": 4,
    "test_benign_shift": 8,
    "general_train": 5,
    "general_test": 6,
    "instruct": 7,
}
RENDER_CHUNK = 256  # samples per worker task, and per pack of general images
#: kinds of sample whose images go into packs (data/image_packs.py): the general VQA and
#: instruction data, ~90% of the world's images; the MIS-schema data keeps one file per image
PACKED_KINDS = frozenset({"general", "instruct"})
Files = dict[str, dict[str, list[dict[str, Any]]]]  # subdir -> file name -> records


# --------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Plan:
    """One sample, fully decided before any pixel is drawn."""

    split: str
    index: int
    a: str
    b: str
    kind: str  # safety | general | instruct
    template: str = ""
    task: str = ""  # general VQA task
    x: str | None = None  # the object a general question asks about
    rule: str | None = None
    difficulty: str = ""  # easy | hard | benign
    benign_kind: str | None = None  # safe_object | benign_question | safe_second (shifted)

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index:05d}"

    @property
    def harmful(self) -> bool:
        return self.kind == "safety" and W.is_harmful(self.a, self.b, self.template)


@dataclass(frozen=True)
class PairSplit:
    train: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]


def _split_pairs(
    pairs: Sequence[tuple[str, str]], frac: float, rng: np.random.Generator
) -> PairSplit:
    order = list(pairs)
    rng.shuffle(order)
    n_test = min(len(order) - 1, max(1, round(len(order) * frac)))
    return PairSplit(tuple(order[n_test:]), tuple(order[:n_test]))


def pair_splits(cfg: WorldConfig, seed: int) -> dict[str, dict[str, PairSplit]]:
    """Per rule: which (first, second) object pairings are train-only and test-only."""
    rng = np.random.default_rng([seed, 0])
    out: dict[str, dict[str, PairSplit]] = {}
    for rule in W.RULES:
        out[rule.key] = {
            "hard": _split_pairs(
                list(product(rule.hard_a, rule.targets)), cfg.test_pair_fraction, rng
            ),
            "easy": _split_pairs(
                list(product(rule.risky_a, rule.targets)), cfg.test_pair_fraction, rng
            ),
            "safe": _split_pairs(
                list(product(W.SAFE_OBJECTS, rule.targets)), cfg.test_pair_fraction, rng
            ),
        }
    return out


_T = TypeVar("_T")


def _pick(rng: np.random.Generator, seq: Sequence[_T]) -> _T:
    return seq[int(rng.integers(len(seq)))]


def plan_world(cfg: WorldConfig, seed: int) -> dict[str, list[Plan]]:
    pairs = pair_splits(cfg, seed)
    held_out = {p for r in pairs.values() for s in r.values() for p in s.test}
    rules = W.RULES
    plans: dict[str, list[Plan]] = {}

    def rng_for(split: str) -> np.random.Generator:
        return np.random.default_rng([seed, SPLIT_CODES[split], 1])

    # --- safety train split
    rng = rng_for("train")
    train: list[Plan] = []
    for i in range(cfg.n_train):
        rule = rules[i % len(rules)]
        p = pairs[rule.key]
        if rng.random() < cfg.benign_fraction:
            if rng.random() < 0.5:
                a, b = _pick(rng, p["safe"].train)
                tpl, bk = _pick(rng, W.REQUEST_TEMPLATES), "safe_object"
            else:
                a, b = _pick(rng, p["hard"].train + p["easy"].train)
                tpl, bk = _pick(rng, W.BENIGN_TEMPLATES), "benign_question"
            train.append(
                Plan(
                    "train",
                    i,
                    a,
                    b,
                    "safety",
                    tpl,
                    rule=rule.key,
                    difficulty="benign",
                    benign_kind=bk,
                )
            )
        else:
            diff = "easy" if rng.random() < 1 / 3 else "hard"
            a, b = _pick(rng, p[diff].train)
            train.append(
                Plan(
                    "train",
                    i,
                    a,
                    b,
                    "safety",
                    _pick(rng, W.REQUEST_TEMPLATES),
                    rule=rule.key,
                    difficulty=diff,
                )
            )
    plans["train"] = train

    # --- test splits: only held-out pairings
    for split, diff in (("test_easy", "easy"), ("test_hard", "hard")):
        rng = rng_for(split)
        plans[split] = [
            Plan(
                split,
                i,
                *_pick(rng, pairs[rules[i % len(rules)].key][diff].test),
                "safety",
                _pick(rng, W.REQUEST_TEMPLATES),
                rule=rules[i % len(rules)].key,
                difficulty=diff,
            )
            for i in range(cfg.n_test_per_split)
        ]
    rng = rng_for("test_benign")
    benign: list[Plan] = []
    for i in range(cfg.n_test_per_split):
        rule = rules[i % len(rules)]
        p = pairs[rule.key]
        if i % 2 == 0:
            a, b = _pick(rng, p["safe"].test)
            tpl, bk = _pick(rng, W.REQUEST_TEMPLATES), "safe_object"
        else:
            a, b = _pick(rng, p["hard"].test + p["easy"].test)
            tpl, bk = _pick(rng, W.BENIGN_TEMPLATES), "benign_question"
        benign.append(
            Plan(
                "test_benign",
                i,
                a,
                b,
                "safety",
                tpl,
                rule=rule.key,
                difficulty="benign",
                benign_kind=bk,
            )
        )
    plans["test_benign"] = benign

    # --- shifted benign split: the harmful pattern's first object stays in view (neutral or
    # hazard-framed) and a safe everyday object takes the second image.  Safety training
    # never shows this kind, so it measures whether a model learnt *why* a combination is
    # harmful or only which objects to refuse (the paper's over-prudence finding).
    rng = rng_for("test_benign_shift")
    shifted: list[Plan] = []
    for i in range(cfg.n_test_per_split):
        rule = rules[i % len(rules)]
        firsts = rule.risky_a if i % 2 == 0 and rule.risky_a else rule.hard_a
        a, b = _pick(rng, firsts), _pick(rng, W.SAFE_OBJECTS)
        shifted.append(
            Plan(
                "test_benign_shift",
                i,
                a,
                b,
                "safety",
                _pick(rng, W.REQUEST_TEMPLATES),
                rule=rule.key,
                difficulty="benign",
                benign_kind="safe_second",
            )
        )
    plans["test_benign_shift"] = shifted

    # --- general VQA and helpful-only instruction data (never a held-out pairing)
    names = W.OBJECT_NAMES

    def random_pair(rng: np.random.Generator, same_p: float) -> tuple[str, str]:
        while True:
            a = _pick(rng, names)
            b = a if rng.random() < same_p else _pick(rng, names)
            if (a, b) not in held_out:
                return a, b

    for split, n in (("general_train", cfg.n_general_train), ("general_test", cfg.n_general_test)):
        rng = rng_for(split)
        cycle = W.GENERAL_TRAIN_CYCLE if split == "general_train" else W.GENERAL_TASKS
        out = []
        for i in range(n):
            task = cycle[i % len(cycle)]
            a, b = random_pair(rng, 0.5 if task == "same" else 0.1)
            x = None
            if task in ("which", "count"):
                x = (
                    a
                    if task == "which" or rng.random() < 0.4
                    else (b if rng.random() < 0.5 else _pick(rng, names))
                )
                if task == "which" and a == b:
                    b = _pick(rng, [n_ for n_ in names if n_ != a])
                if task == "which" and rng.random() < 0.5:
                    x = b
            out.append(Plan(split, i, a, b, "general", task=task, x=x))
        plans[split] = out

    rng = rng_for("instruct")
    mis_like = [pr for r in pairs.values() for s in r.values() for pr in s.train]
    instruct = []
    for i in range(cfg.n_instruct):
        a, b = _pick(rng, mis_like) if rng.random() < 0.4 else random_pair(rng, 0.0)
        tpl = _pick(rng, W.REQUEST_TEMPLATES + W.BENIGN_TEMPLATES)
        instruct.append(Plan("instruct", i, a, b, "instruct", tpl))
    plans["instruct"] = instruct
    return plans


# --------------------------------------------------------------------------- records
def _pack_rel(split: str, index: int) -> str:
    return f"images/{split}/pack-{index // RENDER_CHUNK:05d}{PACK_SUFFIX}"


def _image_rel(plan: Plan, k: int) -> str:
    if plan.kind in PACKED_KINDS:
        return f"{_pack_rel(plan.split, plan.index)}/{plan.id}_{k}.png"
    return f"images/{plan.split}/{plan.id}_{k}.png"


def _conv(question: str, answer: str, n_images: int) -> list[dict[str, str]]:
    prefix = f"{IMAGE_TOKEN}\n" * n_images
    return [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]


def train_record(plan: Plan) -> dict[str, Any]:
    """A safety train record with the world's own ``cot`` label (what a released dataset's
    teacher wrote); the ``label`` stage relabels it in the chosen style."""
    rule = W.RULE_BY_KEY[plan.rule] if plan.rule else None
    answer = W.cot_answer(plan.a, plan.b, plan.template, plan.harmful)
    images = [_image_rel(plan, 1), _image_rel(plan, 2)]
    return {
        "id": plan.id,
        "images": images,
        "conversations": _conv(W.question_text(plan.template), answer, len(images)),
        "category": rule.category if rule else GENERAL_CATEGORY,
        "sub_category": rule.sub_category if rule else None,
        "kind": "safety",
        "is_harmful": plan.harmful,
        "difficulty": plan.difficulty,
        "objects": [plan.a, plan.b],
        "rule": plan.rule,
        "label_style": "cot",
    }


def test_record(plan: Plan) -> dict[str, Any]:
    rule = W.RULE_BY_KEY[plan.rule] if plan.rule else None
    return {
        "id": plan.id,
        "category": rule.category if rule else GENERAL_CATEGORY,
        "sub_category": rule.sub_category if rule else None,
        "question": W.question_text(plan.template),
        "image_path1": _image_rel(plan, 1),
        "image_path2": _image_rel(plan, 2),
        "split": plan.split,
        "difficulty": plan.difficulty,
        "is_harmful": plan.harmful,
        "objects": [plan.a, plan.b],
        "rule": plan.rule,
        "benign_kind": plan.benign_kind,
    }


def general_records(plan: Plan) -> dict[str, Any]:
    question = W.general_question(plan.task, plan.x)
    answer = W.general_answer(plan.task, plan.a, plan.b, plan.x)
    common = {
        "id": plan.id,
        "category": GENERAL_CATEGORY,
        "sub_category": plan.task,
        "objects": [plan.a, plan.b],
        "answer": answer,
    }
    if plan.split == "general_test":
        return {
            **common,
            "question": question,
            "image_path1": _image_rel(plan, 1),
            "image_path2": _image_rel(plan, 2),
            "split": "general_test",
        }
    return {
        **common,
        "images": [_image_rel(plan, 1), _image_rel(plan, 2)],
        "conversations": _conv(question, answer, 2),
        "kind": "general",
    }


def instruct_record(plan: Plan) -> dict[str, Any]:
    answer = W.helpful_answer(plan.a, plan.b, plan.template)
    return {
        "id": plan.id,
        "category": GENERAL_CATEGORY,
        "sub_category": "instruct",
        "images": [_image_rel(plan, 1), _image_rel(plan, 2)],
        "conversations": _conv(W.question_text(plan.template), answer, 2),
        "kind": "instruct",
        "objects": [plan.a, plan.b],
    }


# --------------------------------------------------------------------------- rendering
def _write_new_file(path: str, data: bytes) -> None:
    # os-level calls: no buffered file object for each of the ~60k small images
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _render_chunk(args: tuple[str, int, int, float, list[Plan]]) -> list[tuple[str, str]]:
    """Render and write a chunk (one split, one pack's worth of samples); returns the
    (relative path, sha256) of each file written, so nothing is read back."""
    base, seed, size, jitter, chunk = args
    files = []
    for plan in chunk:
        rng = np.random.default_rng([seed, SPLIT_CODES[plan.split], 2, plan.index])
        for k, name in ((1, plan.a), (2, plan.b)):
            files.append((_image_rel(plan, k), W.png_bytes(W.render(name, rng, size, jitter))))
    if chunk and chunk[0].kind in PACKED_KINDS:
        pack = _pack_rel(chunk[0].split, chunk[0].index)
        files = [(pack, pack_bytes((rel.rsplit("/", 1)[1], data) for rel, data in files))]
    for rel, data in files:
        _write_new_file(os.path.join(base, rel), data)
    return [(rel, sha256_bytes(data)) for rel, data in files]


def render_images(
    jobs: Mapping[str, tuple[Path, Sequence[Plan]]],
    cfg: WorldConfig,
    seed: int,
    *,
    workers: int,
    progress: bool,
    meanwhile: Callable[[], None] | None = None,
) -> dict[str, dict[str, str]]:
    """Render every plan's two images under its job's root.

    ``jobs`` maps a name (``mis``, ``general``) to (root, plans); returns {name: {relative
    path: sha256}}.  All jobs share one worker pool, and ``meanwhile`` (text-only work such as
    writing the JSON files) runs in this process while the workers render: on 2 cores the
    serial tail would otherwise leave one core idle.
    """
    names: list[str] = []  # the job each chunk belongs to, in submission order
    chunks: list[tuple[str, int, int, float, list[Plan]]] = []
    for name, (root, plans) in jobs.items():
        groups: dict[tuple[str, int], list[Plan]] = {}  # (split, pack number) -> plans
        for plan in plans:
            groups.setdefault((plan.split, plan.index // RENDER_CHUNK), []).append(plan)
        for split in {split for split, _ in groups}:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for group in groups.values():
            names.append(name)
            chunks.append((str(root), seed, cfg.image_size, cfg.jitter, group))
    hashes: dict[str, dict[str, str]] = {name: {} for name in jobs}
    bar = tqdm(
        total=sum(len(c[4]) for c in chunks),
        desc="render images",
        unit="sample",
        disable=not progress,
    )
    with ExitStack() as stack:
        results: Iterable[list[tuple[str, str]]]
        if workers <= 1:
            results = map(_render_chunk, chunks)  # lazy: renders after `meanwhile`
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            # `meanwhile` may fail (a record that does not validate): drop the queued work
            stack.callback(pool.shutdown, cancel_futures=True)
            futures = [pool.submit(_render_chunk, chunk) for chunk in chunks]
            results = (f.result() for f in futures)
        if meanwhile is not None:
            meanwhile()
        for name, chunk, res in zip(names, chunks, results, strict=True):
            hashes[name].update(res)
            bar.update(len(chunk[4]))
    bar.close()
    return hashes


def images_digest(hashes: dict[str, str]) -> str:
    """Same digest as :func:`mirage_safety.io.tree_hash` over the images directory."""
    h = hashlib.sha256()
    for rel in sorted(hashes):
        h.update(rel.removeprefix("images/").encode())
        h.update(b"\0")
        h.update(hashes[rel].encode())
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- writing
def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(path, dumps_json(records))


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    cats = Counter(r["category"] for r in records)
    subs = Counter(r["sub_category"] for r in records if r.get("sub_category"))
    out = {
        "count": len(records),
        "harmful": sum(bool(r.get("is_harmful")) for r in records),
        "categories": dict(sorted(cats.items())),
        "sub_categories": dict(sorted(subs.items())),
    }
    if cats.get(UNKNOWN_CATEGORY):  # imported train records without a category
        out["unknown_category"] = cats[UNKNOWN_CATEGORY]
    return out


def _validate(
    tmp: Path,
    files: Files,
    max_errors: int,
    progress: bool,
    *,
    written: dict[str, set[str]] | None = None,
) -> None:
    """Every record of every file; ``written`` (world generation): the image paths this run
    renders, checked by membership while the workers are still writing them."""
    for sub, by_name in files.items():
        v = Validator(
            root=tmp / sub, written_images=None if written is None else written.get(sub, set())
        )
        for name, records in tqdm(by_name.items(), desc=f"validate {sub}", disable=not progress):
            if "conversations" in (records[0] if records else {}):
                v.train_records(f"{sub}/{name}", records, require_category=True)
            else:
                v.test_records(f"{sub}/{name}", records)
        v.raise_if_any(max_errors)


def _manifest(
    tmp: Path,
    source: str,
    cfg: DataConfig,
    files: Files,
    image_hashes: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    params = cfg.model_dump(mode="json")
    if params.get("general") is None:
        # no general import: the manifest stays byte-identical to one written before
        # data.general existed (the world's data need not be regenerated)
        params.pop("general", None)
    out: dict[str, Any] = {
        "generator": GENERATOR_VERSION,
        "source": source,
        "seed": cfg.seed,
        "params": params,
        "files": {},
    }
    for sub, by_name in files.items():
        for name, records in by_name.items():
            rel = f"{sub}/{name}"
            out["files"][rel] = {**_summary(records), "sha256": sha256_file(tmp / rel)}
        img = tmp / sub / "images"
        if image_hashes is not None and sub in image_hashes:
            digest: str | None = images_digest(image_hashes[sub])
        else:
            digest = tree_hash(img) if img.exists() else None
        out[f"{sub}_images_sha256"] = digest
    return out


def generate(
    cfg: DataConfig,
    out_dir: str | os.PathLike[str] = "data",
    *,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the stage; returns the manifest.  Nothing under ``out_dir`` changes on error."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        provenance: dict[str, Any] = {}  # extra manifest entries of an import
        if cfg.source == "world":  # validated while the images render
            files, hashes = _generate_world(cfg, tmp, workers=workers, progress=progress)
            # its general split, scored through lmms-eval like a real run's general tasks
            write_world_general_task(tmp)
        else:  # imported images are opened and verified one by one
            files, provenance = _import_real(cfg, tmp, progress=progress)
            hashes = None
            write_no_task(tmp)
            _validate(tmp, files, cfg.max_errors_shown, progress)
        manifest = {**_manifest(tmp, cfg.source, cfg, files, hashes), **provenance}
        manifest["benchmarks_sha256"] = tree_hash(tmp / "benchmarks")
        write_text_atomic(tmp / "manifest.json", dumps_json(manifest))
    log.info(
        "wrote %s: %s",
        out_dir,
        ", ".join(f"{k}={v['count']}" for k, v in manifest["files"].items()),
    )
    return manifest


def _generate_world(
    cfg: DataConfig, tmp: Path, *, workers: int, progress: bool
) -> tuple[Files, dict[str, dict[str, str]]]:
    wc = cfg.world
    plans = plan_world(wc, cfg.seed)
    tests = ("test_easy", "test_hard", "test_benign", "test_benign_shift")
    mis_splits = ("train", *tests)
    files: Files = {}

    jobs = {
        "mis": (tmp / "mis", [p for s in mis_splits for p in plans[s]]),
        "general": (
            tmp / "general",
            plans["general_train"] + plans["general_test"] + plans["instruct"],
        ),
    }

    def write_files() -> None:  # runs while the workers render
        files["mis"] = {
            "train.json": [train_record(p) for p in plans["train"]],
            **{f"{s}.json": [test_record(p) for p in plans[s]] for s in tests},
        }
        files["general"] = {
            "train.json": [general_records(p) for p in plans["general_train"]],
            "instruct.json": [instruct_record(p) for p in plans["instruct"]],
            "test.json": [general_records(p) for p in plans["general_test"]],
        }
        # a failed render aborts the whole stage, so the planned paths are the written ones
        written = {
            sub: {_image_rel(p, k) for p in sub_plans for k in (1, 2)}
            for sub, (_, sub_plans) in jobs.items()
        }
        # no bar of its own: the render bar is on screen
        _validate(tmp, files, cfg.max_errors_shown, False, written=written)
        for sub, by_name in files.items():
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            for name, records in by_name.items():
                _write_json(tmp / sub / name, records)

    hashes = render_images(
        jobs, wc, cfg.seed, workers=workers, progress=progress, meanwhile=write_files
    )

    write_benchmarks(wc, cfg.seed, tmp / "benchmarks")
    return files, hashes


def _copier(src_root: Path, dst_root: Path) -> Callable[[str], str]:
    """``rel -> "images/<rel>"``, copying ``src_root/rel`` to ``dst_root/images/rel`` once."""
    copied: set[str] = set()

    def copy(rel: str) -> str:
        if rel not in copied:
            dst = dst_root / "images" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_root / rel, dst)
            copied.add(rel)
        return f"images/{rel}"

    return copy


def _import_general(
    cfg: DataConfig, tmp: Path, *, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``data.general`` -> (general train records with images under tmp/general, the
    manifest's ``general_import`` entry); nothing configured: ``([], {})``."""
    if cfg.general is None:
        return [], {}

    ds = load_general(cfg.general, progress=progress, max_errors=cfg.max_errors_shown)
    copy = _copier(ds.root, tmp / "general")
    records = [
        {**r, "images": [copy(p) for p in r["images"]]}
        for r in tqdm(ds.train, desc="copy general", disable=not progress)
    ]
    g = cfg.general
    provenance = {
        "origin": ds.origin,
        "hub_id": g.hub_id,
        "revision": g.revision,
        "file": ds.files["train"],
        "records_in_file": ds.available,
        "max_samples": g.max_samples,
        "seed": g.seed,
        "imported": len(records),
    }
    return records, {"general_import": provenance}


def _import_real(cfg: DataConfig, tmp: Path, *, progress: bool) -> tuple[Files, dict[str, Any]]:
    """Files written under ``tmp`` and extra manifest entries (the general import's
    provenance).  Both sources are read and validated before any image is copied."""

    ds = load_source(cfg, progress=progress, max_errors=cfg.max_errors_shown)
    general, provenance = _import_general(cfg, tmp, progress=progress)
    copy = _copier(ds.root, tmp / "mis")
    train = [
        {**r, "images": [copy(p) for p in r["images"]]}
        for r in tqdm(ds.train, desc="copy train", disable=not progress)
    ]
    files: Files = {"mis": {"train.json": train}, "general": {}}
    for split, records in ds.tests.items():
        files["mis"][f"{split}.json"] = [
            {
                **r,
                "split": split,
                "image_path1": copy(r["image_path1"]),
                "image_path2": copy(r["image_path2"]),
            }
            for r in tqdm(records, desc=f"copy {split}", disable=not progress)
        ]
    # real sources have no general VQA test set or helpful-only instruction data: empty
    files["general"] = {"train.json": general, "instruct.json": [], "test.json": []}
    (tmp / "general").mkdir(parents=True, exist_ok=True)
    # the embedded benchmark splits exist only in the world; an empty directory keeps the
    # stage's outs the same for every source (external benchmarks: eval.benchmarks)
    (tmp / "benchmarks").mkdir()
    (tmp / "benchmarks" / "README.md").write_text(
        f"No embedded benchmark splits: data.source is {cfg.source!r}.\n", encoding="utf-8"
    )
    for sub, by_name in files.items():
        for name, records in by_name.items():
            _write_json(tmp / sub / name, records)
    return files, provenance


# --------------------------------------------------------------------------- CLI
def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate",
        help="build the MIS-schema dataset (embedded world or real import)",
        description=(
            "Generate the embedded MIS world (data.source: world) or import real MIS / MSR-Align "
            "data (data.source: mis | msr_align; data.general adds a general instruction mix "
            "in the LLaVA / ShareGPT layout) into the canonical layout: data/mis/ "
            "(train.json, test_easy.json, test_hard.json, test_benign.json, "
            "test_benign_shift.json, images/), "
            "data/general/ (train.json, instruct.json, test.json, images/) and "
            "data/manifest.json with counts and sha256 "
            "hashes. Every record is validated before anything is written; on a bad record the "
            "command lists each offending record id and field and exits 2, leaving data/ as it was."
        ),
    )
    p.add_argument("--out", default=paths.DATA, help="output directory (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="image rendering processes (default: %(default)s); output bytes do not depend on it",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cli, params_section="data")
    return p


def _cli(args: argparse.Namespace, params: Params) -> int:
    manifest = generate(params.data, args.out, workers=args.workers, progress=not args.no_progress)
    for rel, info in manifest["files"].items():
        print(f"{rel:24s} {info['count']:6d} records ({info['harmful']} harmful)")
    return 0
