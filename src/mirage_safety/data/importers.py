"""Importers for the REAL datasets: public MIS and MSR-Align, from a local copy or the Hub,
and a general instruction mix in the LLaVA / ShareGPT layout (``data.general``).

Each loader returns an :class:`ImportedDataset` whose records are already canonical (see
:mod:`mirage_safety.data.schema`) and have ALL been validated; the ``generate`` stage then
copies the images and writes the canonical layout.  Nothing is written here, and nothing
is returned unless every record passed: the :class:`~mirage_safety.data.schema.DataValidationError`
lists each offending file, record id and field (the first ``max_errors``, then a count).

Common rules
------------
* Image paths inside a data file are relative to the directory holding that file (the MIS
  release's own evaluation code joins them onto ``mis_test/``).  Returned paths are
  POSIX paths relative to :attr:`ImportedDataset.root`; an absolute path, a ``..`` part
  or a symlink that resolves outside the root is an error, as is a missing or unreadable
  image.
* Data files are JSON lists of objects (``.json``) or JSON Lines (``.jsonl``).  Parquet
  with embedded image bytes is not supported: export the images to files first.
* Ids must be unique over the whole dataset.  The public files number records with plain
  integers that restart in every file, so an integer id (or an all-digit string) becomes
  ``"<split>-<n>"`` (``test_easy-17``, ``train-3``) and the original is kept in
  ``source_id``.  Other ids are kept as they are.  A train record without an id gets
  ``"train-<index in file>"``; a test record without one is an error.
* Categories are matched case- and punctuation-insensitively against the MIS taxonomy
  (``schema.CATEGORIES``) and rewritten to its spelling; the original is kept in
  ``source_category`` when it differed.  ``data.<source>.category_map`` adds or overrides
  mappings (value: a MIS category, a MIS sub-category, or ``General``);
  ``data.<source>.skip_categories`` drops records of categories with no MIS counterpart.

MIS (https://github.com/DripNowhy/MIS; Hub: ``Tuwhy/MIS_Train`` + ``Tuwhy/MIS_Test``)
------------------------------------------------------------------------------------
::

    <root>/mis_train.json               train (data.mis.train_file; also found in mis_train/)
    <root>/mis_easy.json                -> split test_easy   (also mis_test_easy.json,
    <root>/mis_hard.json                -> split test_hard    and all three may live in
    <root>/mis_real.json                -> split test_real    <root>/mis_test/ instead)
    <root>/easy_image/<n>/object1.png   images (likewise hard_image/, real_image/)

Train records: ``conversations`` (ShareGPT/LLaVA from/value) or ``messages`` (LLaMA-Factory
role/content), normalised to ``[{from: human|gpt, value}]``; images under ``images`` (list)
or ``image`` (a path or a list, InternVL style), one ``<image>`` placeholder per image in
the user turn.  Test records: ``{id, category, sub_category, question, image_path1,
image_path2}``, extra fields kept.  The train file is required; a missing test file is a
warning, but at least one must exist.  The Hub release ships the train images as
``images.zip``: extract it in place (the error message says so when images are missing).

MSR-Align (https://arxiv.org/abs/2506.19257; Hub: ``Leigest/MSR-Align``)
-----------------------------------------------------------------------
One data file: ``data.msr_align.train_file``, else the first of :data:`MSR_FILE_CANDIDATES`
present, else the only ``.json``/``.jsonl`` file in the root.  The release's exact field
names could not be confirmed offline, so these aliases are accepted (first present wins):

======================  =============================================================
canonical               accepted source fields
======================  =============================================================
id                      id, uid, sample_id, idx, index   (missing: ``train-<index>``)
images                  images, image, image_path, image_paths, img  (path or list;
                        a ``{"path": ...}`` object is accepted; at least one image)
instruction             instruction, question, prompt, query, input
response                response, output, answer, target   (the policy-grounded answer)
reasoning (optional)    reasoning, thinking, cot, rationale, trace   (prepended to the
                        response, separated by a blank line)
category                category, policy_category, harm_category, risk_category
sub_category            sub_category, subcategory   (kept as ``source_sub_category``)
policy                  policy, policy_id, policy_text, spec   (text or id; required)
======================  =============================================================

A record that already holds ``conversations``/``messages`` is taken as a chat record (as
for MIS) and only needs ``images``, ``category`` and ``policy`` besides.  Otherwise the user
turn is one ``<image>\\n`` per image followed by the instruction (an instruction that
already carries exactly one placeholder per image is used as is).  MSR-Align's categories
are its own policy taxonomy: :data:`MSR_CATEGORY_MAP` maps the names with a clear MIS
counterpart, everything else is an error until mapped or skipped in the config.  Other
JSON-compatible source fields (judge scores, source dataset...) are kept.

General instruction mix (``data.general``; e.g. M4-Instruct, Hub: ``lmms-lab/M4-Instruct-Data``)
-------------------------------------------------------------------------------------------
For a real source only (the embedded world writes its own general split).  One data file:
``data.general.file``, else ``m4_instruct_annotations.json``, else the only
``.json``/``.jsonl`` file in the root.  Records in the LLaVA / ShareGPT layout::

    {"id": ..., "image": "a.jpg" | ["a.jpg", "b.jpg", ...]   (or "images"; none: text only),
     "conversations": [{"from": "human", "value": "<image>\n<image>\nWhat changed?"},
                       {"from": "gpt", "value": "..."}, ...]}

Turns alternate human, gpt, ... from a human turn and end with a gpt turn; the human turns
hold one ``<image>`` per image (multi-image records are the point, single-image and
text-only ones are accepted); ``video`` records are an error.  ``max_samples`` records are
drawn with ``seed`` (same file and seed, same records) BEFORE validation, so a 500-record
mix of a 600k-record release opens 500 records' images, and only those must be valid.  Each
becomes a general train record as the world writes them: ``{id, images, conversations,
category: General, sub_category: null, kind: general}`` plus the source's other
JSON-compatible fields (a source ``category`` is kept as ``source_category``); ids follow
the common rules with the prefix ``general``.  M4-Instruct ships its images as ``*.zip``
archives: extract them in place (the error message says so when images are missing).

Hub
---
``data.<source>.hub_id`` (+ ``revision``) is downloaded with
:func:`huggingface_hub.snapshot_download` as plain files into ``download_dir`` (default
``$HF_HOME/mirage-datasets/<owner>--<name>[@<revision>]``) and then read like
``local_dir``; ``test_hub_id`` (MIS) lands in ``<root>/mis_test/``.  Offline
(``HF_HUB_OFFLINE=1`` or no network) only a complete earlier download can be used;
otherwise the error names the Hub id and says to use ``data.<source>.local_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mirage_safety.config import (
    ConfigError,
    DataConfig,
    DatasetLocation,
    GeneralDataConfig,
    HubDataConfig,
)
from mirage_safety.data.schema import (
    ASSISTANT_ROLES,
    CATEGORIES,
    GENERAL_CATEGORY,
    HUMAN_ROLES,
    IMAGE_TOKEN,
    SUB_TO_CATEGORY,
    UNKNOWN_CATEGORY,
    Validator,
    clean_path,
    join_path,
    normalise_conversation,
)

log = logging.getLogger(__name__)

SOURCES = ("mis", "msr_align")
GENERAL_KEY = "general"  # data.general: the general instruction mix of a real source

# ----------------------------------------------------------------------------- MIS layout
MIS_TRAIN_FILE = "mis_train.json"
MIS_TRAIN_DIRS = ("", "mis_train", "MIS_Train")
# our split name -> accepted file names (GitHub README names first, Hub variant second)
MIS_TEST_FILES: dict[str, tuple[str, ...]] = {
    "test_easy": ("mis_easy.json", "mis_test_easy.json"),
    "test_hard": ("mis_hard.json", "mis_test_hard.json"),
    "test_real": ("mis_real.json", "mis_test_real.json"),
}
MIS_TEST_DIRS = ("", "mis_test", "MIS_Test")
MIS_TEST_SUBDIR = "mis_test"  # where a separate test Hub repo is downloaded

# ----------------------------------------------------------------------------- general mix layout
# M4-Instruct's image annotations (its video annotations, m4_instruct_video.json, sit next to
# them and are not supported)
GENERAL_FILE_CANDIDATES = ("m4_instruct_annotations.json",)
# source fields the general importer turns into canonical ones (the rest is kept)
_GENERAL_CONSUMED = frozenset({"id", "image", "images", "conversations", "messages"})

# ----------------------------------------------------------------------------- MSR-Align layout
MSR_FILE_CANDIDATES = (
    "msr_align.json",
    "msr_align.jsonl",
    "MSR-Align.json",
    "MSR-Align.jsonl",
    "msr-align.json",
    "msr-align.jsonl",
    "train.json",
    "train.jsonl",
    "data.json",
    "data.jsonl",
)
_NOT_DATA_FILES = {"dataset_info.json", "dataset_infos.json", "config.json"}
ID_FIELDS = ("id", "uid", "sample_id", "idx", "index")
IMAGE_FIELDS = ("images", "image", "image_path", "image_paths", "img")
INSTRUCTION_FIELDS = ("instruction", "question", "prompt", "query", "input")
RESPONSE_FIELDS = ("response", "output", "answer", "target")
REASONING_FIELDS = ("reasoning", "thinking", "cot", "rationale", "trace")
CATEGORY_FIELDS = ("category", "policy_category", "harm_category", "risk_category")
SUB_CATEGORY_FIELDS = ("sub_category", "subcategory")
POLICY_FIELDS = ("policy", "policy_id", "policy_text", "spec")

# MSR-Align policy category -> MIS category or sub-category (keys are compared after
# _key(): lower case, punctuation folded).  Only names whose MIS counterpart is clear;
# e.g. misinformation, intellectual property or specialised advice have none and stay
# errors until data.msr_align.category_map or skip_categories says what to do.
_MSR_TABLE: dict[str, tuple[str, ...]] = {
    "Illegal Activity": (
        "illegal activity",
        "illegal activities",
        "illegal",
        "illicit behavior",
        "illicit behaviour",
        "illicit criminal behavior",
        "illicit criminal behaviour",
        "illicit activity",
        "illicit activities",
        "criminal activity",
        "criminal activities",
        "crime",
        "crimes",
        "non violent crimes",
        "nonviolent crimes",
        "fraud",
        "fraud deception",
        "fraud and deception",
        "scams",
        "financial crime",
        "financial crimes",
    ),
    "Property Crimes": ("property crime", "property crimes", "theft", "burglary", "vandalism"),
    "Cybercrimes": (
        "cybercrime",
        "cybercrimes",
        "cyber crime",
        "cyber crimes",
        "hacking",
        "malware",
        "cyberattack",
        "cyber attack",
        "cyber attacks",
    ),
    "Drug-Related Offenses": (
        "drugs",
        "drug",
        "illegal drugs",
        "drug related crimes",
        "drug related offenses",
        "controlled substances",
    ),
    "Human Trafficking": ("human trafficking", "trafficking"),
    "Violent": (
        "violence",
        "violent",
        "violent crimes",
        "violence physical harm",
        "violence and physical harm",
        "physical harm",
        "graphic violence",
        "terrorism",
        "violent extremism",
        "extremism",
        "terrorism extremism",
    ),
    "Weapon-Related Violence": (
        "weapons",
        "weapon",
        "weapon related violence",
        "weapons violence",
        "firearms",
    ),
    "Public Violence and Rioting": ("public violence", "rioting", "riots"),
    "Abuse and Physical Alterations": (
        "abuse",
        "physical abuse",
        "child abuse",
        "animal abuse",
        "animal cruelty",
    ),
    "Hate": (
        "hate",
        "hate speech",
        "hateful content",
        "harassment hate discrimination",
        "hate harassment discrimination",
        "hate and discrimination",
        "harassment",
        "bullying",
        "harassment bullying",
        "discrimination",
        "bias",
    ),
    "Racial and Ethnic Discrimination": (
        "racism",
        "racial discrimination",
        "ethnic discrimination",
    ),
    "Gender Discrimination": ("sexism", "gender discrimination", "gender bias"),
    "Self-Harm": (
        "self harm",
        "selfharm",
        "suicide",
        "suicide and self harm",
        "self harm and suicide",
        "suicide self harm",
        "self harm suicide",
        "eating disorders",
    ),
    "Physical Self-Injury": ("self injury", "physical self injury"),
    "Privacy": (
        "privacy",
        "privacy violation",
        "privacy violations",
        "privacy invasion",
        "privacy personal data",
        "personal data",
        "personal information",
    ),
    "Unauthorized Data Collection": (
        "surveillance",
        "unauthorized data collection",
        "data collection",
        "doxxing",
    ),
    "Identity Theft": ("identity theft", "impersonation"),
    "Erotic": (
        "sexual",
        "sexual content",
        "sexual adult",
        "sexual adult content",
        "adult content",
        "adult",
        "erotic",
        "erotica",
        "pornography",
        "porn",
        "nsfw",
        "nudity",
        "sexually explicit",
        "sexually explicit content",
    ),
    GENERAL_CATEGORY: ("general", "benign", "safe"),
}


def _key(name: str) -> str:
    """Case- and punctuation-insensitive lookup key: ``"Self-Harm"`` -> ``"self harm"``."""
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


_MIS_CAT_BY_KEY = {_key(c): c for c in (*CATEGORIES, GENERAL_CATEGORY)}
_MIS_SUB_BY_KEY = {_key(s): s for s in SUB_TO_CATEGORY}
#: MSR-Align category (lookup key) -> MIS category or sub-category name
MSR_CATEGORY_MAP: dict[str, str] = {
    _key(k): target for target, keys in _MSR_TABLE.items() for k in keys
}


class DataSourceError(ConfigError):
    """A data source that cannot be read as configured (missing directory or file,
    unreadable JSON, Hub unreachable).  A :class:`ConfigError`, so the CLI prints the
    message instead of a traceback."""


@dataclass
class ImportedDataset:
    """Validated canonical records of a real dataset, ready to be copied by ``generate``."""

    root: Path  # dataset root; every image path in records is relative to it
    train: list[dict[str, Any]]  # canonical train records (conversations + images)
    tests: dict[str, list[dict[str, Any]]]  # split name -> canonical test records
    source: str = ""  # "mis" | "msr_align"
    origin: str = ""  # the local directory, or hf://datasets/<id>@<revision>
    files: dict[str, str] = field(default_factory=dict)  # split -> source file (rel. root)
    available: int = 0  # records in the source file before any down-sampling (general mix)


# ============================================================================ helpers
def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _pick(rec: dict[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    """First of ``names`` present in ``rec``: (field name, value), or (None, None)."""
    for name in names:
        if name in rec:
            return name, rec[name]
    return None, None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _canonical_id(raw: Any, split: str, idx: int, *, generate: bool) -> tuple[Any, Any]:
    """(canonical id, original id if it was rewritten)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return (f"{split}-{idx}", None) if generate else (raw, None)
    if isinstance(raw, bool):
        return str(raw), None
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
        return f"{split}-{int(raw)}", raw
    return str(raw), None


def _resolve_mis_name(name: str, extra: dict[str, str]) -> tuple[str, str | None] | None:
    """A category-ish name -> (MIS category, MIS sub-category or None), or None."""
    k = _key(name)
    target = extra.get(k, name)
    tk = _key(target)
    if tk in _MIS_CAT_BY_KEY:
        return _MIS_CAT_BY_KEY[tk], None
    if tk in _MIS_SUB_BY_KEY:
        sub = _MIS_SUB_BY_KEY[tk]
        return SUB_TO_CATEGORY[sub], sub
    return None


def _category_map(cfg: HubDataConfig, key: str, builtin: dict[str, str]) -> dict[str, str]:
    """Built-in table + the config's ``category_map``, every target checked up front."""
    table = dict(builtin)
    for src, target in cfg.category_map.items():
        if _resolve_mis_name(target, {}) is None:
            known = ", ".join([*CATEGORIES, GENERAL_CATEGORY, *SUB_TO_CATEGORY])
            raise DataSourceError(
                f"data.{key}.category_map[{src!r}]: {target!r} is not a MIS category or "
                f"sub-category (known: {known})"
            )
        table[_key(src)] = target
    return table


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ============================================================================ locating data
def _download(
    repo_id: str, revision: str | None, dest: Path, key: str, *, field: str | None = None
) -> Path:
    """Snapshot a Hub dataset into ``dest`` as plain files (no cache symlinks, which would
    resolve outside the dataset root).  ``field``: the params key named in errors
    (default ``data.<key>``)."""
    field = field or f"data.{key}"
    from huggingface_hub import snapshot_download

    offline = _env_flag("HF_HUB_OFFLINE")
    try:
        path = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            local_dir=dest,
            local_files_only=offline,
        )
    except Exception as exc:  # any failure (network, auth, offline) -> one clear message
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        why = (
            "offline mode (HF_HUB_OFFLINE=1) and no complete earlier download"
            if offline
            else f"{type(exc).__name__}: {reason}"
        )
        at = f" at revision {revision!r}" if revision else ""
        raise DataSourceError(
            f"{field}.hub_id: cannot download Hub dataset {repo_id!r}{at} into {dest} "
            f"({why}). Download it where the Hub is reachable, e.g. `hf download {repo_id} "
            f"--repo-type dataset --local-dir DIR`, then set {field}.local_dir: DIR "
            f"instead of {field}.hub_id."
        ) from exc
    return Path(path)


def _default_download_dir(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants

    home = Path(os.environ.get("HF_HOME") or constants.HF_HOME).expanduser()
    name = repo_id.replace("/", "--") + (f"@{revision}" if revision else "")
    return home / "mirage-datasets" / name


def _resolve_root(cfg: DatasetLocation, key: str) -> tuple[Path, str]:
    """The dataset root (downloading first for a Hub id) and a provenance string."""
    if cfg.local_dir:
        root = Path(cfg.local_dir).expanduser()
        if not root.is_dir():
            raise DataSourceError(f"data.{key}.local_dir: {cfg.local_dir!r} is not a directory")
        return root.resolve(), str(root.resolve())
    if not cfg.hub_id:
        raise DataSourceError(
            f"data.{key}: set local_dir (a copy of the public layout) or hub_id (a Hub dataset id)"
        )
    dest = (
        Path(cfg.download_dir).expanduser()
        if cfg.download_dir
        else _default_download_dir(cfg.hub_id, cfg.revision)
    )
    root = _download(cfg.hub_id, cfg.revision, dest, key).resolve()
    origin = f"hf://datasets/{cfg.hub_id}@{cfg.revision or 'main'}"
    if isinstance(cfg, HubDataConfig) and cfg.test_hub_id:
        _download(cfg.test_hub_id, cfg.test_revision, root / MIS_TEST_SUBDIR, key)
        origin += f" + hf://datasets/{cfg.test_hub_id}@{cfg.test_revision or 'main'}"
    return root, origin


def _inside(root: Path, rel: str, key: str, fld: str = "train_file") -> Path:
    path = (root / rel).resolve()
    try:
        path.relative_to(root)
    except ValueError:
        raise DataSourceError(
            f"data.{key}.{fld}: {rel!r} is outside the dataset root {root}"
        ) from None
    return path


def _find(root: Path, dirs: Iterable[str], names: Iterable[str]) -> Path | None:
    names = tuple(names)
    for d in dirs:
        for name in names:
            path = root / d / name if d else root / name
            if path.is_file():
                return path
    return None


def _read_records(path: Path, root: Path) -> list[Any]:
    """A JSON list or JSON Lines file -> list of records (not yet checked)."""
    rel = _rel(path, root)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise DataSourceError(
            f"{rel}: unsupported data file type {suffix!r} (expected .json or .jsonl)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataSourceError(f"{rel}: cannot read: {exc}") from None
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataSourceError(f"{rel}: line {n}: not valid JSON: {exc.msg}") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSourceError(
            f"{rel}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise DataSourceError(f"{rel}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _zip_hint(root: Path, v: Validator) -> str | None:
    if not any("file not found" in p.message for p in v.problems):
        return None
    zips = sorted(p.name for p in root.glob("*.zip")) + sorted(
        f"{MIS_TEST_SUBDIR}/{p.name}" for p in (root / MIS_TEST_SUBDIR).glob("*.zip")
    )
    if not zips:
        return None
    return (
        f"{root} holds image archive(s) {', '.join(zips)}; extract them in place "
        f"(e.g. `cd {root} && unzip {zips[0]}`) so the image paths resolve"
    )


def _progress(records: list[Any], desc: str, progress: bool) -> Iterable[Any]:
    return tqdm(records, desc=desc, unit="rec", disable=not progress, leave=False)


# ============================================================================ MIS
def _canonicalise_category(out: dict[str, Any], table: dict[str, str]) -> None:
    """Rewrite a recognised category/sub-category spelling in place (keeps the original)."""
    cat, sub = out.get("category"), out.get("sub_category")
    if isinstance(cat, str):
        hit = _resolve_mis_name(cat, table)
        if hit is not None:
            new_cat, implied_sub = hit
            if new_cat != cat:
                out["source_category"] = cat
                out["category"] = new_cat
            if implied_sub is not None and sub is None:
                out["sub_category"] = sub = implied_sub
    elif cat is None and isinstance(sub, str):
        hit = _resolve_mis_name(sub, table)
        if hit is not None and hit[1] is not None:
            out["category"] = hit[0]
    if isinstance(sub, str) and _key(sub) in _MIS_SUB_BY_KEY:
        canon = _MIS_SUB_BY_KEY[_key(sub)]
        if canon != sub:
            out["source_sub_category"] = sub
            out["sub_category"] = canon


def _mis_train_record(raw: Any, idx: int, base: str, table: dict[str, str]) -> Any:
    if not isinstance(raw, dict):
        return raw  # the Validator reports it
    out = normalise_conversation(raw)
    out = dict(out)
    out["id"], source_id = _canonical_id(raw.get("id"), "train", idx, generate=True)
    if source_id is not None:
        out["source_id"] = source_id
    fld, images = _pick(raw, ("images", "image"))
    out.pop("image", None)
    if fld is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    out["images"] = [join_path(base, p) for p in images] if isinstance(images, list) else images
    _canonicalise_category(out, table)  # may derive the category from a sub-category
    cat = out.get("category")
    if cat is None or (isinstance(cat, str) and not cat.strip()):
        # ShareGPT-style files carry no category: needed for reporting, not for training
        out["category"] = UNKNOWN_CATEGORY
    return out


def _mis_test_record(raw: Any, idx: int, split: str, base: str, table: dict[str, str]) -> Any:
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    out["id"], source_id = _canonical_id(raw.get("id"), split, idx, generate=False)
    if source_id is not None:
        out["source_id"] = source_id
    for fld in ("image_path1", "image_path2"):
        if fld in out:
            out[fld] = join_path(base, out[fld])
    _canonicalise_category(out, table)
    return out


def _skip(records: list[Any], skip: set[str], dropped: dict[str, int]) -> list[Any]:
    if not skip:
        return records
    kept = []
    for rec in records:
        cat = rec.get("category") if isinstance(rec, dict) else None
        if isinstance(cat, str) and _key(cat) in skip:
            dropped[cat] = dropped.get(cat, 0) + 1
        else:
            kept.append(rec)
    return kept


def load_mis(cfg: HubDataConfig, *, progress: bool = True, max_errors: int = 20) -> ImportedDataset:
    """Read and validate the public MIS layout (see the module docstring)."""
    root, origin = _resolve_root(cfg, "mis")
    table = _category_map(cfg, "mis", {})
    skip = {_key(c) for c in cfg.skip_categories}
    v = Validator(root)
    files: dict[str, str] = {}
    dropped: dict[str, int] = {}

    train_path: Path | None
    if cfg.train_file:
        train_path = _inside(root, cfg.train_file, "mis")
        if not train_path.is_file():
            raise DataSourceError(f"data.mis.train_file: {cfg.train_file!r} not found in {root}")
    else:
        train_path = _find(root, MIS_TRAIN_DIRS, (MIS_TRAIN_FILE,))
        if train_path is None:
            looked = ", ".join(
                f"{d}/{MIS_TRAIN_FILE}" if d else MIS_TRAIN_FILE for d in MIS_TRAIN_DIRS
            )
            raise DataSourceError(
                f"data.mis: no train file in {root} (looked for {looked}); set data.mis.train_file"
            )
    train_file = files["train"] = _rel(train_path, root)
    base = _rel(train_path.parent, root) if train_path.parent != root else ""
    raw_train = _skip(_read_records(train_path, root), skip, dropped)
    if not raw_train:
        raise DataSourceError(f"{train_file}: contains no records")
    train = [_mis_train_record(r, i, base, table) for i, r in enumerate(raw_train)]
    v.train_records(train_file, _progress(train, f"validate {train_file}", progress))
    n_unknown = sum(
        1 for r in train if isinstance(r, dict) and r.get("category") == UNKNOWN_CATEGORY
    )
    if n_unknown:
        log.warning(
            "MIS: %d of %d train record(s) in %s have no category: imported as %r "
            "(trained on, counted in the manifest; not reportable per category)",
            n_unknown,
            len(train),
            train_file,
            UNKNOWN_CATEGORY,
        )

    tests: dict[str, list[dict[str, Any]]] = {}
    for split, names in MIS_TEST_FILES.items():
        path = _find(root, MIS_TEST_DIRS, names)
        if path is None:
            log.warning(
                "MIS: no %s file (%s) in %s; split %s is skipped",
                split,
                " / ".join(names),
                root,
                split,
            )
            continue
        rel = files[split] = _rel(path, root)
        base = _rel(path.parent, root) if path.parent != root else ""
        raw = _skip(_read_records(path, root), skip, dropped)
        if not raw:
            log.warning("MIS: %s holds no records; split %s is skipped", rel, split)
            continue
        recs = [_mis_test_record(r, i, split, base, table) for i, r in enumerate(raw)]
        v.test_records(rel, _progress(recs, f"validate {rel}", progress))
        tests[split] = recs
    if not tests:
        wanted = ", ".join(n for names in MIS_TEST_FILES.values() for n in names[:1])
        raise DataSourceError(
            f"data.mis: no MIS test file with records in {root} or "
            f"{root / MIS_TEST_SUBDIR} (expected at least one of {wanted})"
        )
    if dropped:
        log.warning("MIS: skipped %s", ", ".join(f"{n} {c!r}" for c, n in dropped.items()))

    v.raise_if_any(max_errors, hint=_zip_hint(root, v))
    for rec in train:
        rec["images"] = [clean_path(p) for p in rec["images"]]
    for recs in tests.values():
        for rec in recs:
            rec["image_path1"] = clean_path(rec["image_path1"])
            rec["image_path2"] = clean_path(rec["image_path2"])
    log.info(
        "MIS from %s: %d train, %s",
        origin,
        len(train),
        ", ".join(f"{s} {len(r)}" for s, r in tests.items()),
    )
    return ImportedDataset(
        root=root, train=train, tests=tests, source="mis", origin=origin, files=files
    )


# ============================================================================ MSR-Align
def _find_data_file(
    root: Path, rel: str | None, candidates: Sequence[str], key: str, fld: str
) -> Path:
    """``rel`` (the config's ``data.<key>.<fld>``), else the first of ``candidates`` in the
    root, else the root's only ``.json``/``.jsonl`` file."""
    if rel:
        path = _inside(root, rel, key, fld)
        if not path.is_file():
            raise DataSourceError(f"data.{key}.{fld}: {rel!r} not found in {root}")
        return path
    found = _find(root, ("",), candidates)
    if found is not None:
        return found
    data = sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and p.suffix.lower() in (".json", ".jsonl")
        and not p.name.startswith(".")
        and p.name not in _NOT_DATA_FILES
    )
    if len(data) == 1:
        return data[0]
    if not data:
        raise DataSourceError(
            f"data.{key}: no .json/.jsonl data file in {root}; set data.{key}.{fld}"
        )
    raise DataSourceError(
        f"data.{key}: several data files in {root} "
        f"({', '.join(p.name for p in data)}); set data.{key}.{fld}"
    )


def _find_msr_file(root: Path, cfg: HubDataConfig) -> Path:
    return _find_data_file(root, cfg.train_file, MSR_FILE_CANDIDATES, "msr_align", "train_file")


def _image_list(value: Any) -> list[Any]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    # a datasets ``Image`` feature serialised to JSON: {"path": ..., "bytes": ...}
    return [it.get("path") if isinstance(it, dict) and it.get("path") else it for it in items]


def _check_images(
    v: Validator, file: str, rid: str, fld: str | None, images: list[Any], base: str
) -> list[Any]:
    name = fld or "images"
    if not images:
        v.add(
            file,
            rid,
            name,
            "missing image: an MSR-Align sample needs at least one image "
            f"(accepted fields: {', '.join(IMAGE_FIELDS)})",
        )
        return []
    out = []
    for k, img in enumerate(images):
        where = f"{name}[{k}]"
        if isinstance(img, dict):
            v.add(
                file,
                rid,
                where,
                "embedded image bytes are not supported; export the "
                "images to files and reference them by path",
            )
            continue
        path = join_path(base, img)
        v.check_path(file, rid, where, path)
        out.append(path)
    return out


def _msr_text(
    v: Validator, file: str, rid: str, raw: dict[str, Any], names: Sequence[str], what: str
) -> tuple[str | None, str | None]:
    fld, value = _pick(raw, names)
    if fld is None:
        v.add(file, rid, what, f"missing {what} (accepted fields: {', '.join(names)})")
        return None, None
    if not isinstance(value, str) or not value.strip():
        v.add(file, rid, fld, "missing or empty text")
        return fld, None
    return fld, value


def _msr_record(
    raw: Any, idx: int, file: str, base: str, v: Validator, table: dict[str, str]
) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        v.add(file, f"#{idx}", "<record>", "record is not a JSON object")
        return None
    id_fld, raw_id = _pick(raw, ID_FIELDS)
    rid, source_id = _canonical_id(raw_id, "train", idx, generate=True)
    chat = "conversations" in raw or "messages" in raw

    # category: MSR-Align's policy taxonomy -> MIS
    cat_fld, src_cat = _pick(raw, CATEGORY_FIELDS)
    mapped = None
    if cat_fld is None or not isinstance(src_cat, str) or not src_cat.strip():
        v.add(
            file,
            rid,
            cat_fld or "category",
            f"missing category (accepted fields: {', '.join(CATEGORY_FIELDS)})",
        )
    else:
        mapped = _resolve_mis_name(src_cat, table)
        if mapped is None:
            v.add(
                file,
                rid,
                cat_fld,
                f"unknown MSR-Align category {src_cat!r}: no MIS counterpart is known; map "
                "it with data.msr_align.category_map (to one of "
                f"{', '.join([*CATEGORIES, GENERAL_CATEGORY])}) or drop it with "
                "data.msr_align.skip_categories",
            )
    sub_fld, src_sub = _pick(raw, SUB_CATEGORY_FIELDS)

    pol_fld, policy = _pick(raw, POLICY_FIELDS)
    if pol_fld is None:
        v.add(file, rid, "policy", f"missing policy (accepted fields: {', '.join(POLICY_FIELDS)})")
    elif (
        isinstance(policy, bool)
        or not isinstance(policy, (str, int))
        or (isinstance(policy, str) and not policy.strip())
    ):
        v.add(file, rid, pol_fld, "missing or empty policy (the policy text or a policy id)")

    img_fld, img_value = _pick(raw, IMAGE_FIELDS)
    consumed = {id_fld, cat_fld, sub_fld, pol_fld, img_fld}
    if chat:
        out = normalise_conversation(raw)
        out = {k: val for k, val in out.items() if k not in consumed and _jsonable(val)}
        out["id"] = rid
        images = _image_list(img_value)
        if not images:
            v.add(
                file,
                rid,
                img_fld or "images",
                "missing image: an MSR-Align sample needs at "
                f"least one image (accepted fields: {', '.join(IMAGE_FIELDS)})",
            )
        out["images"] = [join_path(base, p) if not isinstance(p, dict) else p for p in images]
        # the Validator checks id, turns, placeholders and images like any chat record
        v.train_records(file, [out], require_category=False)
    else:
        v.check_id(file, {"id": rid}, idx)
        images = _check_images(v, file, rid, img_fld, _image_list(img_value), base)
        ins_fld, instruction = _msr_text(v, file, rid, raw, INSTRUCTION_FIELDS, "instruction")
        res_fld, response = _msr_text(v, file, rid, raw, RESPONSE_FIELDS, "response")
        rsn_fld, reasoning = _pick(raw, REASONING_FIELDS)
        consumed |= {ins_fld, res_fld, rsn_fld}
        user = None
        if instruction is not None:
            n_ph = instruction.count(IMAGE_TOKEN)
            if n_ph == 0:
                user = f"{IMAGE_TOKEN}\n" * len(images) + instruction
            elif n_ph == len(images):
                user = instruction
            else:
                v.add(
                    file,
                    rid,
                    ins_fld or "instruction",
                    f"{n_ph} <image> placeholder(s) but {len(images)} image(s)",
                )
        if response is not None:
            if isinstance(reasoning, str) and reasoning.strip():
                response = f"{reasoning.strip()}\n\n{response}"
            if IMAGE_TOKEN in response:
                v.add(file, rid, res_fld or "response", "response contains an <image> placeholder")
        out = {k: val for k, val in raw.items() if k not in consumed and _jsonable(val)}
        out.update(
            id=rid,
            images=images,
            conversations=[
                {"from": HUMAN_ROLES[0], "value": user},
                {"from": ASSISTANT_ROLES[0], "value": response},
            ],
        )

    if source_id is not None:
        out["source_id"] = source_id
    if mapped is not None:
        cat, sub = mapped
        if sub is None and isinstance(src_sub, str):
            hit = _resolve_mis_name(src_sub, {})
            if hit is not None and hit[0] == cat:
                sub = hit[1]
        out.update(category=cat, sub_category=sub, source_category=src_cat)
    if isinstance(src_sub, str):
        out["source_sub_category"] = src_sub
    out["policy"] = policy
    return out


def load_msr_align(
    cfg: HubDataConfig, *, progress: bool = True, max_errors: int = 20
) -> ImportedDataset:
    """Read and validate an MSR-Align release into canonical train records."""
    root, origin = _resolve_root(cfg, "msr_align")
    table = _category_map(cfg, "msr_align", MSR_CATEGORY_MAP)
    skip = {_key(c) for c in cfg.skip_categories}
    path = _find_msr_file(root, cfg)
    file = _rel(path, root)
    base = _rel(path.parent, root) if path.parent != root else ""
    raw = _read_records(path, root)
    v = Validator(root)
    train: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for idx, rec in enumerate(_progress(raw, f"validate {file}", progress)):
        if isinstance(rec, dict) and skip:
            _, cat = _pick(rec, CATEGORY_FIELDS)
            if isinstance(cat, str) and _key(cat) in skip:
                dropped[cat] = dropped.get(cat, 0) + 1
                continue
        out = _msr_record(rec, idx, file, base, v, table)
        if out is not None:
            train.append(out)
    if dropped:
        log.warning("MSR-Align: skipped %s", ", ".join(f"{n} {c!r}" for c, n in dropped.items()))
    if not raw or (not train and not v.problems):
        raise DataSourceError(
            f"{file}: contains no records" + (" after skip_categories" if dropped else "")
        )
    v.raise_if_any(max_errors, hint=_zip_hint(root, v))
    for rec in train:
        rec["images"] = [clean_path(p) for p in rec["images"]]
    log.info("MSR-Align from %s: %d train records", origin, len(train))
    return ImportedDataset(
        root=root, train=train, tests={}, source="msr_align", origin=origin, files={"train": file}
    )


# ============================================================================ general mix
def _sample_indices(n: int, max_samples: int, seed: int) -> list[int]:
    """Indices of the records to import, in file order: all of them for ``max_samples``
    -1 (or at least ``n``), else ``max_samples`` drawn without replacement.  A function of
    ``(n, max_samples, seed)`` alone, so the same file and seed give the same picks."""
    if max_samples < 0 or max_samples >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), max_samples))


def _general_images(v: Validator, file: str, rid: str, raw: dict[str, Any], base: str) -> list[Any]:
    """``image`` (LLaVA: a path or a list) or ``images``, joined onto the file's folder; no
    image field is a text-only record (LLaVA mixes hold some)."""
    present = [f for f in ("images", "image") if f in raw]
    if len(present) == 2:
        v.add(file, rid, "image", "both 'image' and 'images' are set; keep one")
    items = _image_list(raw[present[0]]) if present else []
    return [join_path(base, p) if not isinstance(p, dict) else p for p in items]


def _check_turn_order(v: Validator, file: str, rid: str, conv: Any) -> None:
    """Turns alternate human, gpt, human, ... (the Validator checks the roles themselves,
    the last turn and the text; one report per record is enough to find it)."""
    if not isinstance(conv, list):
        return
    for t, turn in enumerate(conv):
        role = turn.get("from") if isinstance(turn, dict) else None
        if role not in HUMAN_ROLES + ASSISTANT_ROLES:
            continue
        want = HUMAN_ROLES if t % 2 == 0 else ASSISTANT_ROLES
        if role not in want:
            v.add(
                file,
                rid,
                f"conversations[{t}].from",
                f"{role!r} turn out of order: turns alternate human, gpt, human, ... "
                "starting with a human turn",
            )
            return


def _general_record(
    raw: Any, idx: int, file: str, base: str, v: Validator
) -> dict[str, Any] | None:
    """One LLaVA / ShareGPT record -> a canonical general train record (the layout the
    world writes into data/general/train.json), its problems added to ``v``."""
    if not isinstance(raw, dict):
        v.add(file, f"#{idx}", "<record>", "record is not a JSON object")
        return None
    rid, source_id = _canonical_id(raw.get("id"), GENERAL_KEY, idx, generate=True)
    if "video" in raw:
        v.add(
            file,
            rid,
            "video",
            "video records are not supported (images only; "
            "M4-Instruct's image annotations are m4_instruct_annotations.json)",
        )
        return None
    images = _general_images(v, file, rid, raw, base)
    conv = normalise_conversation(raw).get("conversations")
    _check_turn_order(v, file, rid, conv)
    out = {k: val for k, val in raw.items() if k not in _GENERAL_CONSUMED and _jsonable(val)}
    src_cat = out.pop("category", None)
    out.update(
        id=rid,
        images=images,
        conversations=conv,
        category=GENERAL_CATEGORY,
        sub_category=None,
        kind="general",
    )
    if source_id is not None:
        out["source_id"] = source_id
    if src_cat is not None:
        out["source_category"] = src_cat
    # id (unique over the file), roles, text, placeholders == images, every image opened
    v.train_records(file, [out], require_category=False)
    return out


def load_general(
    cfg: GeneralDataConfig, *, progress: bool = True, max_errors: int = 20
) -> ImportedDataset:
    """Read, down-sample and validate a general instruction set in the LLaVA / ShareGPT
    layout (``data.general``; see the module docstring) into canonical general train
    records, returned as the dataset's ``train``.  Nothing is returned unless every drawn
    record passed."""
    root, origin = _resolve_root(cfg, GENERAL_KEY)
    path = _find_data_file(root, cfg.file, GENERAL_FILE_CANDIDATES, GENERAL_KEY, "file")
    file = _rel(path, root)
    base = _rel(path.parent, root) if path.parent != root else ""
    raw = _read_records(path, root)
    if not raw:
        raise DataSourceError(f"{file}: contains no records")
    picks = _sample_indices(len(raw), cfg.max_samples, cfg.seed)
    v = Validator(root)
    records = [
        _general_record(raw[i], i, file, base, v)
        for i in _progress(picks, f"validate {file}", progress)
    ]
    v.raise_if_any(max_errors, hint=_zip_hint(root, v))
    train = [r for r in records if r is not None]  # all of them once nothing was raised
    for rec in train:
        rec["images"] = [clean_path(p) for p in rec["images"]]
    log.info(
        "general mix from %s: %d of %d records of %s (seed %d)",
        origin,
        len(train),
        len(raw),
        file,
        cfg.seed,
    )
    return ImportedDataset(
        root=root,
        train=train,
        tests={},
        source=GENERAL_KEY,
        origin=origin,
        files={"train": file},
        available=len(raw),
    )


# ============================================================================ dispatch
def load_source(data_cfg: DataConfig, **kw: Any) -> ImportedDataset:
    """The importer for ``data_cfg.source`` (``mis`` or ``msr_align``) on its config slice."""
    if data_cfg.source == "mis":
        return load_mis(data_cfg.mis, **kw)
    if data_cfg.source == "msr_align":
        return load_msr_align(data_cfg.msr_align, **kw)
    raise DataSourceError(
        f"data.source {data_cfg.source!r} has no importer (importers: "
        f"{', '.join(SOURCES)}; the embedded world is generated)"
    )
