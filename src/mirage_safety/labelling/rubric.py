"""The curation rubric (``prompts/curate_rubric.yaml``): criteria scored 0..scale per label.

Validated once: a scale of at least 1, at least one criterion, unique ids, non-empty
texts; errors name the file and the criterion.  :func:`parse_scores` is the strict parser
of a judge's JSON answer against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mirage_safety.config import ConfigError
from mirage_safety.endpoints import Malformed, strict_json


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    text: str = Field(min_length=1)
    nullable: bool = False  # may be scored null (does not apply to some labels)


class _RubricDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: int = Field(10, ge=1, le=100)
    criteria: tuple[Criterion, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Rubric:
    path: Path
    scale: int
    criteria: tuple[Criterion, ...]
    text_hash: str

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.criteria)

    def render(self) -> str:
        lines = []
        for c in self.criteria:
            null = " (may be null)" if c.nullable else ""
            lines.append(f"- {c.id} -- {c.name}{null}: {c.text}")
        return "\n".join(lines)

    def example(self) -> str:
        obj: dict[str, Any] = {c.id: self.scale for c in self.criteria}
        obj["rationale"] = "..."
        return json.dumps(obj)

    def schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            c.id: ({"type": ["integer", "null"]} if c.nullable else {"type": "integer"})
            for c in self.criteria
        }
        props["rationale"] = {"type": "string"}
        return {
            "type": "object",
            "properties": props,
            "required": [*self.ids, "rationale"],
            "additionalProperties": False,
        }


def load_rubric(path: str | Path) -> Rubric:
    import hashlib

    p = Path(path)
    try:
        raw = p.read_bytes()
        doc = yaml.safe_load(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: rubric not readable ({exc}); set curate.rubric") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: rubric is not valid YAML: {exc}") from None
    try:
        parsed = _RubricDoc.model_validate(doc)
    except ValidationError as exc:
        probs = []
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "criteria" and isinstance(loc[1], int):
                crit = (
                    (doc.get("criteria") or [None] * (loc[1] + 1))[loc[1]]
                    if isinstance(doc, dict)
                    else None
                )
                cid = crit.get("id") if isinstance(crit, dict) else None
                where = f"criterion {cid!r}" if cid else f"criteria[{loc[1]}]"
                loc = loc[2:]
            else:
                where = "rubric"
            key = ".".join(str(x) for x in loc) or "<document>"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            probs.append(f"{p}: {where}: {key}: {msg}")
        raise ConfigError("\n".join(probs)) from None
    ids = [c.id for c in parsed.criteria]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{p}: duplicate criterion id(s): {', '.join(dup)}")
    return Rubric(p, parsed.scale, parsed.criteria, hashlib.sha256(raw).hexdigest())


def parse_scores(content: str, rubric: Rubric) -> dict[str, int | None]:
    """``{criterion: score}`` from a judge's JSON answer; raises :class:`Malformed`."""
    obj = strict_json(content)
    if not isinstance(obj, dict):
        raise Malformed("not a JSON object")
    out: dict[str, int | None] = {}
    for c in rubric.criteria:
        if c.id not in obj:
            raise Malformed(f"missing criterion {c.id!r}")
        v = obj[c.id]
        if v is None and c.nullable:
            out[c.id] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= rubric.scale:
            raise Malformed(
                f"{c.id} must be an integer 0..{rubric.scale}"
                f"{' or null' if c.nullable else ''}, got {v!r}"
            )
        out[c.id] = v
    return out
