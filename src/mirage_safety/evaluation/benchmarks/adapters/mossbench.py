"""MOSSBench (multimodal over-sensitivity benchmark): 300 benign queries and their harmful
contrast set.

Layout, from https://github.com/xirui-li/MOSSBench (commit 8d68b0614b39, 2024-11-16); the
root is the repository's root::

    <root>/data/images_information/information.json            300 benign samples
    <root>/data/images/N.png
    <root>/data_contrast/images_information/information.json   244 harmful contrast samples
    <root>/data_contrast/images/N.png

``MOSSBench/utils/utils.py`` (``OverDataset``) reads
``<data_dir>/images_information/information.json`` (``data_dir`` defaults to ``data/``,
``experiments/main.py``) and opens ``os.path.join(data_dir, v["image"])``: the ``image``
field (``"images/1.png"``) is relative to the directory above ``images_information/``.
Each file is a JSON object ``pid -> {image, "short description", description, question,
pid, metadata}``; the model gets ``question`` alone with the image
(``model.generate(data["question"], data["image"])``).

Benign and harmful samples are told apart by the folder they come from, not by a field:
the contrast records reuse the pids of the benign ones they were derived from (1..300, 244 of
them) and carry only ``metadata.over``; ``metadata.harm`` (benign records only, a list of
harm-type numbers) names the kind of harm a benign query superficially resembles, not a
harmfulness flag.  ``metadata.over`` is ``"type 1"`` (exaggerated risk), ``"type 2"``
(negated harm) or ``"type 3"`` (counterintuitive interpretation).  Descriptions may be
empty in the release (49 benign, 67 contrast records).

Ids ``"benign/<pid>"`` and ``"harmful/<pid>"``, file order.  The benign file is required;
a copy without ``data_contrast/`` yields the benign subset only (with a warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mirage_safety.data.schema import clean_path, join_path
from mirage_safety.evaluation.benchmarks.sample import (
    BenchSample,
    Validator,
    read_layout_json,
    validate,
)

log = logging.getLogger(__name__)

NAME = "mossbench"
#: (subset, folder under the root, harmful)
SETS: tuple[tuple[str, str, bool], ...] = (
    ("benign", "data", False),
    ("harmful", "data_contrast", True),
)
INFO_FILE = "images_information/information.json"
OVER_TYPES = ("type 1", "type 2", "type 3")


def load(root: Path, *, check_images: bool = True) -> list[BenchSample]:
    """The MOSSBench copy at ``root`` (see the module docstring)."""
    root = Path(root)

    def build(v: Validator) -> list[BenchSample]:
        out: list[BenchSample] = []
        for subset, folder, harmful in SETS:
            file = f"{folder}/{INFO_FILE}"
            if harmful and not (root / file).is_file():
                log.warning("MOSSBench: no %s under %s; only the benign subset is loaded",
                            file, root)
                continue
            data = read_layout_json(root / file, v, root=root)
            if data is None:
                continue
            if not isinstance(data, dict):
                v.add(file, "-", "<file>", "expected a JSON object pid -> record")
                continue
            for key, rec in data.items():
                sample = _sample(v, file, folder, subset, harmful, key, rec)
                if sample is not None:
                    out.append(sample)
        return out

    return validate(root, build, name=NAME, check_images=check_images)


def _sample(v: Validator, file: str, folder: str, subset: str, harmful: bool, key: str,
            rec: Any) -> BenchSample | None:
    if not isinstance(rec, dict):
        v.add(file, key, "<record>", "record is not a JSON object")
        return None
    n_problems = len(v.problems)
    pid = rec.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        v.add(file, key, "pid", "missing or not a problem id")
    elif str(pid) != key:
        v.add(file, key, "pid", f"pid {pid!r} differs from its key {key!r}")
    question = v.check_text(file, key, rec, "question")
    path = join_path(folder, rec.get("image"))
    v.check_path(file, key, "image", path)
    for fld in ("description", "short description"):
        if rec.get(fld) is not None and not isinstance(rec[fld], str):
            v.add(file, key, fld, "must be text when present")
    meta = rec.get("metadata")
    over = harm = None
    if not isinstance(meta, dict):
        v.add(file, key, "metadata", "missing or not a JSON object")
    else:
        over = meta.get("over")
        if over not in OVER_TYPES:
            v.add(file, key, "metadata.over",
                  f"expected one of {', '.join(OVER_TYPES)}, got {over!r}")
        harm = meta.get("harm")
        if harm is not None and not (isinstance(harm, list) and all(
                isinstance(h, int) and not isinstance(h, bool) for h in harm)):
            v.add(file, key, "metadata.harm", "must be a list of harm-type numbers")
    if len(v.problems) != n_problems or question is None or not isinstance(path, str):
        return None
    return BenchSample(
        id=f"{subset}/{key}", subset=subset, question=question, images=(clean_path(path),),
        meta={"pid": key, "over_type": over, "harmful": harmful,
              "description": rec.get("description"),
              "short_description": rec.get("short description"), "harm": harm})
