"""Preprocessing done once (``train.preprocess: once``): a cached dataset of model inputs.

Per batch, :class:`~mirage_safety.training.collator.ChatCollator` renders the chat
template, tokenises, decodes every image and runs the image processor; over three epochs
that is done three times for each sample.  With ``once``, each sample goes through the
same collator exactly once, before the first step, and its tensors (token ids, labels,
pixel values and whatever else the family's processor returns: ``image_grid_thw``,
``token_type_ids`` ...) are stored as an Arrow dataset (``datasets``).  A batch is then
only padding and concatenation (:class:`PaddingCollator`).

Exact: one sample through the processor gives the same tensors as the same sample inside
a batch (images are processed one by one; text is padded on the right), and padding here
uses the processor's values (pad token id, 0 masks, ``-100`` labels), so a batch equals the
per-batch collator's to the bit (tested for LLaVA, Qwen2-VL, InternVL and Gemma 3), and a
training run reaches the same weights.

The dataset is saved under ``<cache_dir>/<key>/`` where ``key`` hashes everything that
decides the tensors: the records, their image bytes, the processor (its saved files), the
collator settings and this module's version; a later run with the same inputs (a resumed
or repeated training) loads it instead of preprocessing again.  It is written to a
temporary directory and renamed into place, so a crash leaves no half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mirage_safety.data.chat import resolve_image
from mirage_safety.training.collator import IGNORE_INDEX, ChatCollator, reset_tokenizer_state

log = logging.getLogger(__name__)

VERSION = "pre-1"
KEEP = 2  # datasets kept in the cache directory (the newest)
SHAPE = "__shape"  # suffix of the column holding a per-image tensor's shape
#: padding of the per-token keys the processors return (anything else pads with 0)
_PAD = {"labels": IGNORE_INDEX, "attention_mask": 0}


def processor_hash(processor: Any) -> str:
    """Hash of the processor's saved files (tokenizer, chat template, image processor)."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        reset_tokenizer_state(processor)  # the last call's padding is not the processor's
        processor.save_pretrained(tmp)
        for p in sorted(Path(tmp).rglob("*")):
            if p.is_file():
                h.update(p.relative_to(tmp).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def dataset_key(rows: Sequence[Any], collator: ChatCollator) -> str:
    """Content hash of what the preprocessed tensors depend on."""

    h = hashlib.sha256(
        f"{VERSION}\0{collator.max_length}\0{processor_hash(collator.processor)}".encode()
    )
    for row in rows:
        rec = row.record
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
        for k, rel in enumerate(rec.get("images") or []):
            src = resolve_image(row.root, rel, rid=str(rec.get("id")), field=f"images[{k}]")
            h.update(hashlib.sha256(src.read_bytes()).digest())
    return h.hexdigest()[:24]


def sample_tensors(collator: ChatCollator, feature: Mapping[str, Any]) -> dict[str, Any]:
    """One sample through the collator: {key: numpy array}, per-token keys 1-D."""
    batch = collator([feature])
    seq = batch["input_ids"].shape[1]
    out: dict[str, Any] = {}
    for key, value in batch.items():
        arr = value.numpy()
        if value.dim() == 2 and value.shape == (1, seq):
            out[key] = arr[0]
        else:  # per image (pixel_values, image_grid_thw, ...): flat values + shape
            out[key] = arr.reshape(-1)
            out[key + SHAPE] = list(arr.shape)
    return out


def build(
    rows: Sequence[Any],
    collator: ChatCollator,
    lengths: Sequence[int],
    *,
    cache_dir: Path,
    progress: bool = False,
) -> Any:
    """The preprocessed ``datasets.Dataset`` of ``rows`` (loaded from the cache when there),
    with the ``length`` column the length-grouped sampler reads."""
    from datasets import Dataset, load_from_disk
    from tqdm.auto import tqdm

    key = dataset_key(rows, collator)
    target = Path(cache_dir) / key
    if (target / "dataset_info.json").is_file():
        log.info("preprocessed dataset: reusing %s", target)
        return load_from_disk(str(target)).with_format("numpy")

    def gen() -> Iterator[dict[str, Any]]:
        for row, n in tqdm(
            zip(rows, lengths, strict=True),
            total=len(rows),
            desc="preprocess",
            disable=not progress,
        ):
            feature = {"record": row.record, "root": str(row.root)}
            yield {**sample_tensors(collator, feature), "length": int(n)}

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    try:
        # the generator's own cache goes to tmp too: nothing lands in ~/.cache
        ds = Dataset.from_generator(gen, cache_dir=str(tmp / "gen"))
        ds.save_to_disk(str(tmp / "ds"))
        if not target.exists():  # else another run with the same inputs got there first
            os.replace(tmp / "ds", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("preprocessed dataset: %d samples written to %s", len(rows), target)
    _prune(target.parent, keep=target)
    return load_from_disk(str(target)).with_format("numpy")


def _prune(cache_dir: Path, *, keep: Path, limit: int = KEEP) -> None:
    """Drop all but the ``limit`` most recent datasets (a real VLM's can be many GB)."""
    entries = sorted(
        (p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in [p for p in entries if p != keep][max(0, limit - 1) :]:
        log.info("preprocessed dataset: removing the older %s", old)
        shutil.rmtree(old, ignore_errors=True)


class PaddingCollator:
    """Batches of preprocessed samples: per-token keys padded on the right (as the
    processor pads), per-image keys concatenated in sample order."""

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        self.pad = {"input_ids": pad_token_id, **_PAD}
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        keys = [k for k in features[0] if k != "length" and not k.endswith(SHAPE)]
        seq_keys = [k for k in keys if k + SHAPE not in features[0]]
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        out: dict[str, Any] = {}
        for key in seq_keys:
            rows = [np.asarray(f[key]) for f in features]
            full = np.full((len(rows), longest), self.pad.get(key, 0), dtype=rows[0].dtype)
            for b, r in enumerate(rows):
                full[b, : len(r)] = r
            out[key] = torch.from_numpy(full)
        for key in keys:
            if key in seq_keys:
                continue
            parts = [np.asarray(f[key]).reshape([int(d) for d in f[key + SHAPE]]) for f in features]
            out[key] = torch.from_numpy(np.concatenate(parts))
        return out
