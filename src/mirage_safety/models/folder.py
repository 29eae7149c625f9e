"""The model folder: what a model directory holds and how it is read, in one place.

Every stage that hands a model to another goes through a directory of one of three kinds:

* a ``save_pretrained`` checkpoint (``config.json`` + weights + processor files):
  ``models/base`` of the builtin world, or a full fine-tune in ``models/mirage``;
* a Hub pin (:data:`PIN_FILE` = ``{model_id, commit, trust_remote_code, dtype}``), written
  by ``mirage base`` with ``base.source: hub``: the weights stay in the Hub cache at exactly
  that commit;
* a trained directory with :data:`MODEL_META_FILE` (written by ``mirage train``):
  ``{"method": "full" | "lora", "base_path", "base_model_id", "base_revision",
  "trust_remote_code", "dtype" (inference dtype, when trained in bf16), ...}``; for
  ``lora`` it holds a PEFT adapter on the base.

Training writes it (:func:`write_model_meta`), inference, the registry and ``mirage
serve`` read it (:func:`read_model_meta`, :func:`find_base`); anything wrong with a
directory is a :class:`ModelDirError` naming the path and the field.  Loading the weights
is :mod:`mirage_safety.models.loading`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mirage_safety.io import read_json, write_json_atomic

PIN_FILE = "pin.json"
MODEL_META_FILE = "mirage_model.json"
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


class ModelDirError(ValueError):
    """A model directory or Hub pin that cannot be read, packaged or loaded; the message
    names the path (and the field)."""


def is_model_dir(path: Path) -> bool:
    """A checkpoint or a Hub pin (what a LoRA adapter's base may be)."""
    return (path / "config.json").is_file() or (path / PIN_FILE).is_file()


def has_processor(path: Path) -> bool:
    return any((path / f).is_file() for f in PROCESSOR_FILES)


def _read_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when there is no such file."""
    if not path.is_file():
        return None
    try:
        obj = read_json(path)
    except ValueError as exc:
        raise ModelDirError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return obj


def read_pin(model_dir: Path) -> dict[str, Any] | None:
    """The Hub pin of ``model_dir`` (``model_id`` and ``commit`` checked), or None."""
    pin = _read_object(model_dir / PIN_FILE)
    for key in ("model_id", "commit"):
        if pin is not None and not pin.get(key):
            raise ModelDirError(f"{model_dir / PIN_FILE}: field {key!r} is missing")
    return pin


def read_model_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``mirage_model.json`` of a trained model dir, or None for a plain checkpoint or pin."""
    path = Path(model_dir) / MODEL_META_FILE
    meta = _read_object(path)
    if meta is None:
        return None
    method = meta.get("method", "full")
    if method not in ("full", "lora"):
        raise ModelDirError(f"{path}: field 'method' must be 'full' or 'lora' (got {method!r})")
    if method == "lora" and not (meta.get("base_path") or meta.get("base_model_id")):
        raise ModelDirError(
            f"{path}: method is 'lora' but neither field 'base_path' nor 'base_model_id' is set"
        )
    return {**meta, "method": method}


def write_model_meta(out_dir: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    write_json_atomic(Path(out_dir) / MODEL_META_FILE, meta)


def find_base(meta: dict[str, Any], model_dir: Path) -> Path | str:
    """The base of a trained dir: ``base_path`` as an existing checkpoint or pin (tried as
    given, against the repo root -- ``$DVC_ROOT`` or cwd -- and against the model dir and
    its parent), else ``base_model_id`` (a Hub id)."""
    raw = str(meta.get("base_path") or "")
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd())
    if raw:
        for cand in (Path(raw), root / raw, model_dir / raw, model_dir.parent / raw):
            if is_model_dir(cand):
                return cand.resolve()
    if meta.get("base_model_id"):
        return str(meta["base_model_id"])
    raise ModelDirError(
        f"{model_dir / MODEL_META_FILE}: base_path {raw!r} is not a model "
        "directory (config.json or pin.json; relative paths are tried against "
        "the repo root and the model dir) and no base_model_id is given"
    )
