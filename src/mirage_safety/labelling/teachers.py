"""Teachers: who writes a training label for a record.

* :class:`WorldTeacher` -- the embedded world's labeller.  It knows each record's ground
  truth (the two objects, the world rule, harmful or not) and writes the label in the
  chosen style and format.  A seeded **noise model** plants defects in a fraction of the
  labels, each recorded in the record's ``teacher`` metadata so the curation filter can be
  scored against it (never read by the filter itself):

  ==============  ===========================================  =========================
  defect          what the label does                           applies to
  ==============  ===========================================  =========================
  wrong_object    names an object the image does not show       every label that names
                  (as a teacher that misread the image)         objects
  wrong_rule      cites a policy rule that does not apply       ``policy``: all; ``cot`` /
                  (``policy``) / gives another rule's risk      ``text_only``: harmful
                  (``cot``, ``text_only``)
  comply          answers a harmful request helpfully           harmful records
  truncated       cut short at 30-80% of its length             all
  ==============  ===========================================  =========================

  Each record draws one number from its own RNG (seeded by ``label.seed`` and the record
  id, so the defects do not depend on file order); the fractions of ``label.noise`` are
  consecutive intervals of it.  A record drawn into the interval of a defect that does
  not apply to it stays clean, so the realised rate is at most the configured one; the
  manifest reports the realised counts.
* :class:`OpenAITeacher` -- a VLM behind an OpenAI-compatible endpoint
  (:mod:`mirage_safety.endpoints`): both images, the instruction, the category's policy
  and the style's prompt file (``prompts/teacher_<style>.md``).  A malformed answer (empty,
  cut at ``max_tokens``, no ``<think>`` block in the ``think`` format, no or an unknown
  rule id in the ``policy`` style, an ``<image>`` placeholder) is a counted failure.
* :class:`KeepTeacher` -- the labels the data came with (e.g. an imported MIS release).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirage_safety.config import ConfigError, LabelConfig, NoiseConfig
from mirage_safety.data import world as W
from mirage_safety.data.schema import IMAGE_TOKEN, assistant_text, user_text
from mirage_safety.endpoints import ChatClient, ChatRequest, Image, Malformed, Text
from mirage_safety.labelling.formats import compose, split_think
from mirage_safety.labelling.policies import RULE_MENTION, PolicySet
from mirage_safety.labelling.policies import Rule as PolicyRule

DEFECTS = ("wrong_object", "wrong_rule", "comply", "truncated")
#: the world labels' decline sentence (see :data:`mirage_safety.data.world.DECLINE`)
DECLINE = W.DECLINE


@dataclass
class LabelOutcome:
    """One record's label, or why there is none (``kind``: malformed, transport, http,
    input)."""

    text: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    kind: str | None = None
    #: fields of the record the label replaces besides the answer (text_only: the
    #: question names the objects and the images are dropped)
    question: str | None = None
    images: list[str] | None = None


# --------------------------------------------------------------------------- world
def record_rng(seed: int, record_id: str) -> np.random.Generator:
    digest = int(hashlib.sha256(str(record_id).encode()).hexdigest()[:12], 16)
    return np.random.default_rng([seed, digest])


def _eligible(style: str, harmful: bool) -> dict[str, bool]:
    names_objects = style != "refusal" or not harmful  # a bare refusal names nothing
    return {
        "wrong_object": names_objects,
        "wrong_rule": style == "policy" or (harmful and style in ("cot", "text_only")),
        "comply": harmful,
        "truncated": True,
    }


def draw_defect(
    rng: np.random.Generator, noise: NoiseConfig, eligible: dict[str, bool]
) -> str | None:
    u, edge = float(rng.random()), 0.0
    for name in DEFECTS:
        edge += getattr(noise, name)
        if u < edge:
            return name if eligible[name] else None
    return None


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def truncate(text: str, rng: np.random.Generator) -> str:
    """Cut at a word boundary at 30-80% of the length (a teacher that stopped early)."""
    pos = int(len(text) * float(rng.uniform(0.3, 0.8)))
    cut = text.rfind(" ", 0, pos)
    return text[: cut if cut > 0 else pos].rstrip()


def citation(rule_id: str) -> str:
    # the id alone: the rule's text is in the policy; quoting its summary too cost ~15
    # tokens of the embedded tokenizer (its words are not in the world's vocabulary)
    return f"Rule {rule_id} applies."


class WorldTeacher:
    """Ground-truth labeller of the embedded world, with the seeded noise model."""

    name = "world"

    def __init__(self, cfg: LabelConfig, policies: PolicySet) -> None:
        self.cfg = cfg
        self.policies = policies
        self._other_rules = [
            r.id for p in policies.policies for r in p.rules if r.action != "comply"
        ]

    def label_many(
        self, records: Sequence[dict[str, Any]], image_root: Path, *, progress: bool = True
    ) -> list[LabelOutcome]:
        out = []
        for rec in records:
            try:
                out.append(self.label(rec))
            except _NotWorld as exc:
                out.append(LabelOutcome(None, error=str(exc), kind="input"))
        return out

    def label(self, rec: dict[str, Any]) -> LabelOutcome:
        cfg = self.cfg
        objects = rec.get("objects")
        if not (
            isinstance(objects, list)
            and len(objects) == 2
            and all(o in W.OBJECT_BY_NAME for o in objects)
        ):
            raise _NotWorld(
                f"record {rec.get('id')!r}: the world teacher needs the embedded "
                "world's ground truth (field 'objects'); use label.teacher openai "
                "or keep for other data"
            )
        template = W.template_of(user_text(rec))
        if template is None:
            raise _NotWorld(
                f"record {rec.get('id')!r}: question is not one of the world's request templates"
            )
        a, b = objects
        harmful = bool(rec.get("is_harmful"))
        rule = W.RULE_BY_KEY.get(str(rec.get("rule"))) if rec.get("rule") else None
        if harmful and rule is None:
            raise _NotWorld(f"record {rec.get('id')!r}: a harmful world record needs its rule")
        rng = record_rng(cfg.seed, str(rec["id"]))
        defect = draw_defect(rng, cfg.noise, _eligible(cfg.style, harmful))
        detail: dict[str, Any] = {}
        shown = [a, b]
        if defect == "wrong_object":
            k = int(rng.integers(2))
            wrong = [n for n in W.OBJECT_NAMES if n not in (a, b)]
            shown[k] = wrong[int(rng.integers(len(wrong)))]
            detail = {"image": k + 1, "named": shown[k], "truth": objects[k]}
        text, cited = self._compose(rec, template, harmful, rule, shown, defect, rng, detail)
        if defect == "truncated":
            full = text
            text = truncate(full, rng)
            detail = {"kept_chars": len(text), "full_chars": len(full)}
        meta = {
            "name": self.name,
            "defect": defect,
            "defect_detail": detail or None,
            "rules": cited,
        }
        if cfg.style == "text_only":
            return LabelOutcome(text, meta, question=W.question_text(template, a, b), images=[])
        return LabelOutcome(text, meta)

    def _compose(
        self,
        rec: dict[str, Any],
        template: str,
        harmful: bool,
        rule: W.Rule | None,
        shown: list[str],
        defect: str | None,
        rng: np.random.Generator,
        detail: dict[str, Any],
    ) -> tuple[str, list[str]]:
        style = self.cfg.style
        sa, sb = shown
        if style == "refusal":
            if harmful and defect != "comply":
                return W.REFUSAL, []
            return W.helpful_answer(sa, sb, template), []
        seen = (
            f"The request mentions {W.article(sa)} and {W.article(sb)}."
            if style == "text_only"
            else W.perception(sa, sb)
        )
        category, sub = str(rec.get("category")), rec.get("sub_category")
        reasoning, cited = [seen], []
        cited_rule: PolicyRule | None  # the policy rule the label cites (``policy`` style)
        if harmful and defect != "comply":
            assert rule is not None
            if style == "policy":
                applies = self.policies.rules_for(category, sub)
                cited_rule = applies[0]
                if defect == "wrong_rule":
                    others = [r for r in self._other_rules if r not in {x.id for x in applies}]
                    wrong_id = others[int(rng.integers(len(others)))]
                    cited_rule = self.policies.rules[wrong_id][1]
                    detail.update(cited=wrong_id, applies=[x.id for x in applies])
                reasoning.append(citation(cited_rule.id))
                cited.append(cited_rule.id)
                risk_rule = rule
            elif defect == "wrong_rule":
                other_rules = [r for r in W.RULES if r.key != rule.key]
                risk_rule = other_rules[int(rng.integers(len(other_rules)))]
                detail.update(risk_of=risk_rule.key, applies=rule.key)
            else:
                risk_rule = rule
            reasoning.append(_cap(risk_rule.risk.format(a=W.article(sa), b=W.article(sb))))
            answer = [DECLINE, rule.safe_reply]
        else:  # benign, or a harmful request the teacher wrongly treats as benign
            if style == "policy":
                comply = self.policies.comply_rules(category)
                cited_rule = comply[0] if comply else None
                if defect == "wrong_rule" or cited_rule is None:
                    wrong_id = self._other_rules[int(rng.integers(len(self._other_rules)))]
                    cited_rule = self.policies.rules[wrong_id][1]
                    if defect == "wrong_rule":
                        detail.update(cited=wrong_id, applies=[r.id for r in comply])
                reasoning.append(citation(cited_rule.id))
                cited.append(cited_rule.id)
            reasoning.append(
                W.SAFE_QUESTION_NOTE
                if template in W.BENIGN_TEMPLATES
                else W.SAFE_REQUEST_NOTE.format(a=W.article(sa), b=W.article(sb))
            )
            answer = [W.helpful_answer(sa, sb, template)]
        return compose(reasoning, answer, self.cfg.format), cited


class _NotWorld(ValueError):
    """A record the world teacher cannot label (no ground truth)."""


# --------------------------------------------------------------------------- keep
class KeepTeacher:
    """The record's own label (an imported release's teacher), unchanged."""

    name = "keep"

    def label_many(
        self, records: Sequence[dict[str, Any]], image_root: Path, *, progress: bool = True
    ) -> list[LabelOutcome]:
        return [LabelOutcome(assistant_text(r), {"name": self.name}) for r in records]


# --------------------------------------------------------------------------- openai
def check_label(text: str, style: str, fmt: str, policies: PolicySet) -> str:
    """The label if it is well-formed for ``style`` / ``fmt``; raises Malformed."""

    label = text.strip()
    if IMAGE_TOKEN in label:
        raise Malformed(f"label contains an {IMAGE_TOKEN} placeholder")
    parsed = split_think(label)
    if fmt == "think":
        if parsed.reasoning is None or not parsed.closed:
            raise Malformed("no <think>...</think> block before the answer")
        if not parsed.reasoning or not parsed.answer:
            raise Malformed("empty reasoning or empty final answer")
    elif parsed.reasoning is not None:
        raise Malformed("a <think> block in a prose label")
    if style == "policy":
        prefixes = {p.id for p in policies.policies}
        mentioned = [
            m.group(1) for m in RULE_MENTION.finditer(label) if m.group(1).split(".")[0] in prefixes
        ]
        unknown = sorted({r for r in mentioned if r not in policies.rules})
        if unknown:
            raise Malformed(f"cites unknown rule id(s) {', '.join(unknown)}")
        if not mentioned:
            raise Malformed("cites no rule of the policies")
    return label


class OpenAITeacher:
    """A VLM behind an OpenAI-compatible endpoint writes the labels."""

    name = "openai"

    def __init__(self, cfg: LabelConfig, policies: PolicySet, *, cache_dir: Path | None) -> None:

        self.cfg = cfg
        self.policies = policies
        prompts = Path(cfg.prompts)
        self.system = (
            _read_prompt(prompts / f"teacher_{cfg.style}.md")
            + "\n\n"
            + _read_prompt(prompts / f"format_{cfg.format}.md")
        )
        self.user = _read_prompt(prompts / "teacher_user.md")
        self.client = ChatClient(
            cfg.openai, purpose=f"teacher/{cfg.style}/{cfg.format}", cache_dir=cache_dir
        )

    def request(self, rec: dict[str, Any], image_root: Path) -> Any:

        images = list(rec.get("images") or [])
        question = user_text(rec).replace(IMAGE_TOKEN, "").strip()
        category = str(rec.get("category") or "unknown")
        harmful = rec.get("is_harmful")
        note = (
            "The dataset marks this request as harmful."
            if harmful is True
            else "The dataset marks this request as benign."
            if harmful is False
            else "The dataset does not say whether this request is harmful."
        )
        labels = ("First image:", "Second image:")
        parts: list[Any] = [
            Image(str(image_root / p), label=labels[i] if i < 2 else f"Image {i + 1}:")
            for i, p in enumerate(images)
        ]
        parts.append(
            Text(
                self.user.format(
                    question=question,
                    category=category,
                    sub_category=rec.get("sub_category") or "unspecified",
                    harm_note=note,
                    policy=self.policies.render_for(category),
                )
            )
        )
        return ChatRequest(system=self.system, parts=tuple(parts), tag=str(rec.get("id")))

    def label_many(
        self, records: Sequence[dict[str, Any]], image_root: Path, *, progress: bool = True
    ) -> list[LabelOutcome]:
        cfg = self.cfg

        def parse(content: str) -> str:
            return check_label(content, cfg.style, cfg.format, self.policies)

        results = self.client.complete_many(
            [self.request(r, image_root) for r in records],
            parse,
            progress=progress,
            desc="label (teacher)",
        )
        out = []
        for res in results:
            meta = {
                "name": self.name,
                "model": cfg.openai.model,
                "cached": res.cached,
                "finish_reason": res.finish_reason,
                "usage": res.usage,
            }
            if res.ok:
                meta["rules"] = self.policies.cited(res.value)
                out.append(LabelOutcome(res.value, meta))
            else:
                meta["raw"] = res.content[:2000] if res.content else None
                out.append(LabelOutcome(None, meta, error=res.error, kind=res.kind))
        return out


def _read_prompt(path: Path) -> str:

    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{path}: prompt file not readable ({exc}); set label.prompts to "
            "the directory holding the teacher prompts"
        ) from None


def make_teacher(cfg: LabelConfig, policies: PolicySet, *, cache_dir: Path | None) -> Any:
    if cfg.teacher == "world":
        return WorldTeacher(cfg, policies)
    if cfg.teacher == "openai":
        return OpenAITeacher(cfg, policies, cache_dir=cache_dir)
    return KeepTeacher()
