"""Safety policies as versioned data: one YAML document per category under ``policies/``.

A policy (MSR-Align's "standardized safety policy"; STAR-1's policy sections) is::

    id: violent                      # prefix of every rule id
    category: Violent                # a MIS category (schema.CATEGORIES)
    objective: ...                   # what the policy protects
    rules:
      - id: violent.1                # stable: labels cite it, never renumber
        sub_category: Weapon-Related Violence   # optional: the MIS sub-category it covers
        action: refuse | safe-complete | comply
        summary: ...                 # one line, quoted in policy-grounded labels
        text: ...                    # the rule itself, given to teachers and judges

Parsed once into frozen models and validated as a whole: YAML syntax, unknown or missing
keys, an empty rule text, an unknown category or sub-category, a rule id that does not
start with its policy's id or is not ``<id>.<n>``, the same id twice (in one file or
across files), two policies for one category, and no file at all.  Every problem names
the file and the rule; all are reported at once (:class:`PolicyError`).  Which categories
the *data* needs is checked by :meth:`PolicySet.require` when a stage knows its records.

The content hash (:attr:`PolicySet.sha256`) covers every file's name and bytes, so any
edit, even to a comment, is a new policy version: it goes into the labelled data's
manifest and is an MLflow tag (``policies_sha256``) of every run that used the policies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mirage_safety.data.schema import CATEGORIES, GENERAL_CATEGORY, UNKNOWN_CATEGORY
from mirage_safety.io import tree_hash

Action = Literal["refuse", "safe-complete", "comply"]
ACTIONS: tuple[str, ...] = ("refuse", "safe-complete", "comply")
POLICY_SUFFIXES = (".yaml", ".yml")
#: MLflow tag carrying the policies' content hash
POLICY_TAG = "policies_sha256"
_RULE_ID = re.compile(r"^([a-z][a-z0-9_]*)\.([1-9][0-9]*)$")
#: how a rule id appears in free text (a label, a model's answer): ``violent.2``
RULE_MENTION = re.compile(r"\b([a-z][a-z0-9_]*\.[1-9][0-9]*)\b")


class PolicyError(ValueError):
    """Policies that cannot be used; the message lists every problem with file and rule."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the safety policies:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Rule(_Strict):
    id: str
    action: Action
    summary: str = Field(min_length=1)
    text: str = Field(min_length=1)
    sub_category: str | None = None


class Policy(_Strict):
    id: str
    category: str
    objective: str = Field(min_length=1)
    rules: tuple[Rule, ...]
    #: file the policy was read from (set by the loader, not part of the document)
    source: str = ""

    def render(self) -> str:
        """The policy as text for a teacher's or judge's prompt."""
        lines = [f"Policy {self.id} ({self.category})", f"Objective: {self.objective}"]
        lines += [f"- {r.id} [{r.action}]: {r.text}" for r in self.rules]
        return "\n".join(lines)


@dataclass(frozen=True)
class PolicySet:
    """Every policy of a directory, validated together."""

    root: Path
    policies: tuple[Policy, ...]
    sha256: str

    @cached_property
    def by_category(self) -> dict[str, Policy]:
        return {p.category: p for p in self.policies}

    @cached_property
    def rules(self) -> dict[str, tuple[Policy, Rule]]:
        return {r.id: (p, r) for p in self.policies for r in p.rules}

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(p.category for p in self.policies)

    def policy_for(self, category: str) -> Policy | None:
        return self.by_category.get(category)

    def render_for(self, category: str) -> str:
        """The category's policy as prompt text; every policy when the category is unknown
        (an imported record without one: the teacher or judge decides which applies)."""
        policy = self.by_category.get(category)
        if policy is not None:
            return policy.render()
        return (
            "(the request's category is not known: apply whichever of these policies "
            "fits)\n\n" + "\n\n".join(p.render() for p in self.policies)
        )

    def rules_for(self, category: str, sub_category: str | None) -> tuple[Rule, ...]:
        """The rules that apply to a harmful request of this (sub-)category: the rules
        written for the sub-category, else every non-``comply`` rule of the category."""
        policy = self.by_category.get(category)
        if policy is None:
            return ()
        exact = tuple(r for r in policy.rules if sub_category and r.sub_category == sub_category)
        return exact or tuple(r for r in policy.rules if r.action != "comply")

    def comply_rules(self, category: str) -> tuple[Rule, ...]:
        policy = self.by_category.get(category)
        return tuple(r for r in policy.rules if r.action == "comply") if policy else ()

    def cited(self, text: str) -> list[str]:
        """Rule ids of this set mentioned in ``text``, in order of first mention."""
        seen: dict[str, None] = {}
        for m in RULE_MENTION.finditer(text):
            if m.group(1) in self.rules:
                seen.setdefault(m.group(1))
        return list(seen)

    def require(self, categories: Iterable[str], *, where: str = "the data") -> None:
        """Raise :class:`PolicyError` naming every category of ``where`` with no policy."""
        missing = sorted(
            {c for c in categories if c not in ("", GENERAL_CATEGORY, UNKNOWN_CATEGORY)}
            - set(self.by_category)
        )
        if missing:
            raise PolicyError(
                [
                    f"{self.root}: no policy for category {c!r}, which {where} uses (add a "
                    f"policy file with `category: {c}`)"
                    for c in missing
                ]
            )


def _rule_problems(file: str, policy: Policy, seen: dict[str, str]) -> list[str]:
    out = []
    subs = CATEGORIES.get(policy.category, ())
    for rule in policy.rules:
        m = _RULE_ID.match(rule.id)
        if not m:
            out.append(
                f"{file}: rule {rule.id!r}: id must look like '{policy.id}.<n>' "
                "(lower-case policy id, a dot, a number from 1)"
            )
        elif m.group(1) != policy.id:
            out.append(f"{file}: rule {rule.id!r}: id must start with the policy id {policy.id!r}")
        if rule.id in seen:
            out.append(f"{file}: rule {rule.id!r}: duplicate rule id (first in {seen[rule.id]})")
        else:
            seen[rule.id] = file
        for name in ("summary", "text"):
            if not getattr(rule, name).strip():
                out.append(f"{file}: rule {rule.id!r}: empty {name}")
        if rule.sub_category is not None and rule.sub_category not in subs:
            out.append(
                f"{file}: rule {rule.id!r}: sub_category {rule.sub_category!r} is not "
                f"a sub-category of {policy.category!r} (known: {', '.join(subs)})"
            )
    return out


def _validation_problems(
    file: str, doc: object, exc: ValidationError, index: int | None = None
) -> list[str]:
    out = []
    for err in exc.errors():
        loc = list(err["loc"])
        if index is not None:  # errors of one rule validated on its own
            loc = ["rules", index, *loc]
        where = "policy"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            rules = doc.get("rules") if isinstance(doc, dict) else None
            rid = None
            if isinstance(rules, list) and loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
                rid = rules[loc[1]].get("id")
            where = f"rule {rid!r}" if rid else f"rules[{loc[1]}]"
            loc = loc[2:]
        key = ".".join(str(p) for p in loc) or "<document>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        out.append(f"{file}: {where}: {key}: {msg}")
    return out


def load_policies(root: str | Path) -> PolicySet:
    """Read and validate every ``*.yaml`` policy under ``root`` (not recursive)."""
    root = Path(root)
    if not root.is_dir():
        raise PolicyError([f"{root}: policy directory not found (set label.policies)"])
    files = sorted(p for p in root.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())
    if not files:
        raise PolicyError([f"{root}: no policy files (*.yaml) found"])
    problems: list[str] = []
    policies: list[Policy] = []
    seen_rules: dict[str, str] = {}
    seen_cats: dict[str, str] = {}
    for path in files:
        file = str(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            problems.append(f"{file}: not valid YAML: {exc}".replace("\n", " "))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: unreadable: {exc}")
            continue
        if not isinstance(doc, dict):
            problems.append(f"{file}: expected a mapping with id, category, objective, rules")
            continue
        # each rule on its own, so one bad rule does not hide the problems of the others
        raw_rules = doc.get("rules")
        rules: list[Rule] = []
        if isinstance(raw_rules, list):
            for i, raw in enumerate(raw_rules):
                try:
                    rules.append(Rule.model_validate(raw))
                except ValidationError as exc:
                    problems += _validation_problems(file, {"rules": raw_rules}, exc, index=i)
            if not raw_rules:
                problems.append(f"{file}: policy: rules: a policy needs at least one rule")
        try:
            policy = Policy.model_validate(
                {
                    **doc,
                    "source": path.name,
                    "rules": (rules if isinstance(raw_rules, list) else raw_rules),
                }
            )
        except ValidationError as exc:
            problems += _validation_problems(file, doc, exc)
            continue
        if policy.category not in CATEGORIES:
            problems.append(
                f"{file}: policy: unknown category {policy.category!r} (known: "
                f"{', '.join(CATEGORIES)})"
            )
        elif policy.category in seen_cats:
            problems.append(
                f"{file}: policy: a second policy for {policy.category!r} (first "
                f"in {seen_cats[policy.category]})"
            )
        else:
            seen_cats[policy.category] = file
        if not re.fullmatch(r"[a-z][a-z0-9_]*", policy.id):
            problems.append(
                f"{file}: policy: id {policy.id!r} must be lower-case letters, "
                "digits and underscores"
            )
        problems += _rule_problems(file, policy, seen_rules)
        policies.append(policy)
    if problems:
        raise PolicyError(problems)
    return PolicySet(root=root, policies=tuple(policies), sha256=tree_hash(root))
