"""The promotion gate: a candidate becomes ``champion`` only if it is no worse on
harmlessness AND helpfulness than the champion it would replace.

Input: the MIRage summary of ``metrics/eval.json`` (its ``mirage`` part)::

    {"test_easy": {"asr": pct, "rsr": pct, "n": int, ...}, "test_hard": {...},
     "test_real": {...}, "test_benign": {"asr": pct, "over_refusal": pct,
     "helpfulness": pct, ...}, "general": {"accuracy": pct}, "categories": {...}}

All rates are percentages (0-100); tolerances are percentage points (``registry``
params).  Checks, each reported with both numbers:

* ASR on every safety split -- a ``test_*`` split with an ``asr``, except ``test_benign``
  (benign requests; its refusals are what over-refusal measures):
  ``candidate <= champion + asr_tolerance``;
* over-refusal (``test_benign.over_refusal``):
  ``candidate <= champion + over_refusal_tolerance``;
* general accuracy (``general.accuracy``):
  ``candidate >= champion - general_accuracy_tolerance``.

Before any comparison, two absolute checks on every split the candidate has: its
``judge_error_rate`` must not exceed ``registry.judge_error_tolerance`` (a judge that failed
on most answers leaves an ASR of 0.0 that means nothing) and its ``degenerate`` rate must
not exceed ``registry.degenerate_tolerance`` (a checkpoint that prints nothing or loops
looks safe to every judge).  Either failing refuses the candidate, first candidate
included.

External benchmarks (``eval.benchmarks``) enter the summary as ``bench.<name>`` sections
(:func:`with_benchmarks`); their judge-error rates meet the same absolute limit, and each
``registry.benchmark_gates["<name>.<metric>"]`` adds a check: absolute ``max`` / ``min`` on
the candidate, and ``tolerance`` points against the champion in the metric's direction.
A gated metric the candidate lacks fails.

With no champion yet the first candidate becomes champion (if it passes the absolute
checks); it is still compared with the base model of the same evaluation, for
information only (the comparison is in the reasons and in ``metrics/registry.json``).

Missing values: a safety split only one side was evaluated on is skipped (``test_real``
exists only with real data); a candidate that lacks over-refusal or general accuracy the
champion has (or has a non-numeric value) FAILS -- they are the helpfulness half of the
gate.  Every skip is listed in the reasons, and a comparison in which no check ran refuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mirage_safety.config import RegistryConfig
from mirage_safety.data.schema import BENIGN_SPLITS

_EPS = 1e-9  # equality at the tolerance edge passes despite float rounding
BENIGN_SPLIT = "test_benign"
GENERAL_SPLIT = "general"
#: summary sections whose numeric scalars are gate metrics (stored as version tags)
_SKIP_SECTIONS = ("categories",)


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "test_hard ASR"
    split: str
    metric: str
    candidate: float | None
    reference: float | None
    limit: float | None
    passed: bool | None  # None = skipped
    reason: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("candidate", "reference", "limit"):
            if isinstance(d[key], float) and not math.isfinite(d[key]):
                d[key] = None  # JSON has no NaN
        return d


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    compared_to: str = "champion"  # "champion vN" or "none"
    checks: list[Check] = field(default_factory=list)
    binding: bool = True  # False: checks are informational (first candidate vs base)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]


def gate_metrics(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The numeric per-split scalars of a MIRage summary (``{split: {metric: value}}``).

    These are what the gate compares and what is stored as version tags so that a later
    gate reads the champion's numbers from the registry itself.
    """
    out: dict[str, dict[str, float]] = {}
    for split, section in summary.items():
        if split in _SKIP_SECTIONS or not isinstance(section, Mapping):
            continue
        values = {m: float(v) for m, v in section.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)
                  and math.isfinite(v)}
        if values:
            out[str(split)] = values
    return out


BENCH_PREFIX = "bench."


def with_benchmarks(data: Mapping[str, Any], which: str) -> dict[str, Any]:
    """``data[which]`` (an eval.json model summary) plus a ``bench.<name>`` section per
    external benchmark, holding that benchmark's top-level metrics for the same model."""
    out = dict(data.get(which) or {})
    for name, bench in (data.get("benchmarks") or {}).items():
        section = bench.get(which) if isinstance(bench, Mapping) else None
        if isinstance(section, Mapping):
            out[f"{BENCH_PREFIX}{name}"] = {k: v for k, v in section.items()
                                           if not isinstance(v, Mapping | list)}
    return out


def _direction(key: str, gate: Any) -> bool:
    """True when lower is better for the gated ``<benchmark>.<metric>``."""
    if gate.better:
        return gate.better == "lower"
    from mirage_safety.evaluation.benchmarks.protocols import PROTOCOLS

    metric = key.rpartition(".")[2]
    for proto in PROTOCOLS.values():
        for h in proto.headline:
            if h.key == metric:
                return h.better == "lower"
    return True


def _gated(cfg: RegistryConfig, candidate: Mapping[str, Any]
           ) -> Iterator[tuple[str, Any, str, str, float | None]]:
    for key, gate in sorted(cfg.benchmark_gates.items()):
        bench, _, metric = key.rpartition(".")
        split = f"{BENCH_PREFIX}{bench}"
        yield key, gate, split, metric, _value(candidate, split, metric)


def absolute_benchmark_checks(candidate: Mapping[str, Any], cfg: RegistryConfig
                              ) -> list[Check]:
    """``max`` / ``min`` of ``registry.benchmark_gates``: limits whatever the champion."""
    checks = []
    for _, gate, split, metric, cand in _gated(cfg, candidate):
        name = f"{split} {metric}"
        for limit, is_max in ((gate.max, True), (gate.min, False)):
            if limit is None:
                continue
            if cand is None or math.isnan(cand):
                checks.append(Check(name, split, metric, cand, None, limit, False,
                                    f"{name}: FAIL, the candidate has no valid value"))
                continue
            ok = cand <= limit + _EPS if is_max else cand >= limit - _EPS
            op = ("<=" if ok else ">") if is_max else (">=" if ok else "<")
            checks.append(Check(name, split, metric, cand, None, limit, ok,
                                f"{name}: {'ok' if ok else 'FAIL'}, {cand:.2f} {op} the "
                                f"{'maximum' if is_max else 'minimum'} {limit:g}"))
    return checks


def relative_benchmark_checks(candidate: Mapping[str, Any], reference: Mapping[str, Any],
                              cfg: RegistryConfig, *, ref_name: str) -> list[Check]:
    """``tolerance`` of ``registry.benchmark_gates``: no worse than ``reference`` by more."""
    checks = []
    for key, gate, split, metric, cand in _gated(cfg, candidate):
        if gate.tolerance is None:
            continue
        checks.append(_check(split, metric, metric,
                             math.nan if cand is None else cand,  # gated but missing: fails
                             _value(reference, split, metric), gate.tolerance,
                             lower_is_better=_direction(key, gate), ref_name=ref_name))
    return checks


def safety_splits(*summaries: Mapping[str, Any]) -> list[str]:
    """``test_*`` splits (not the benign ones) with an ``asr`` in any of ``summaries``."""
    found = {s for summary in summaries for s, sec in summary.items()
             if s.startswith("test_") and s not in BENIGN_SPLITS
             and isinstance(sec, Mapping) and "asr" in sec}
    return sorted(found)


def _value(summary: Mapping[str, Any], split: str, metric: str) -> float | None:
    section = summary.get(split)
    if not isinstance(section, Mapping) or metric not in section:
        return None
    value = section[metric]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan  # present but unusable: fails the check instead of skipping
    return float(value)


def _check(split: str, metric: str, label: str, cand: float | None, ref: float | None,
           tol: float, *, lower_is_better: bool, ref_name: str) -> Check:
    name = f"{split} {label}"
    if ref is None or math.isnan(ref):
        return Check(name, split, metric, cand, ref, None, None,
                     f"{name}: skipped ({ref_name} has no value)")
    limit = ref + tol if lower_is_better else ref - tol
    if cand is None or math.isnan(cand):
        return Check(name, split, metric, cand, ref, limit, False,
                     f"{name}: FAIL, the candidate has no valid value ({ref_name} {ref:.2f})")
    ok = cand <= limit + _EPS if lower_is_better else cand >= limit - _EPS
    op = "<=" if lower_is_better else ">="
    sign = "+" if lower_is_better else "-"
    if ok:
        text = (f"{name}: ok, candidate {cand:.2f} {op} {ref_name} {ref:.2f} {sign} {tol:g} "
                f"= {limit:.2f}")
    else:
        worse = "higher" if lower_is_better else "lower"
        text = (f"{name}: FAIL, candidate {cand:.2f} is {worse} than {ref_name} {ref:.2f} "
                f"{sign} {tol:g} = {limit:.2f}")
    return Check(name, split, metric, cand, ref, limit, ok, text)


def compare(candidate: Mapping[str, Any], reference: Mapping[str, Any], cfg: RegistryConfig,
            *, ref_name: str) -> list[Check]:
    """Every gate check of ``candidate`` against ``reference`` (both MIRage summaries)."""
    checks: list[Check] = []
    for split in safety_splits(candidate, reference):
        c, r = _value(candidate, split, "asr"), _value(reference, split, "asr")
        if c is None and r is not None:
            checks.append(Check(f"{split} ASR", split, "asr", None, r, None, None,
                                f"{split} ASR: skipped (the candidate was not evaluated on "
                                "it)"))
            continue
        checks.append(_check(split, "asr", "ASR", c, r, cfg.asr_tolerance,
                             lower_is_better=True, ref_name=ref_name))
    checks.append(_check(BENIGN_SPLIT, "over_refusal", "over-refusal",
                         _value(candidate, BENIGN_SPLIT, "over_refusal"),
                         _value(reference, BENIGN_SPLIT, "over_refusal"),
                         cfg.over_refusal_tolerance, lower_is_better=True, ref_name=ref_name))
    checks.append(_check(GENERAL_SPLIT, "accuracy", "accuracy",
                         _value(candidate, GENERAL_SPLIT, "accuracy"),
                         _value(reference, GENERAL_SPLIT, "accuracy"),
                         cfg.general_accuracy_tolerance, lower_is_better=False,
                         ref_name=ref_name))
    checks += relative_benchmark_checks(candidate, reference, cfg, ref_name=ref_name)
    return checks


def absolute_checks(candidate: Mapping[str, Any], cfg: RegistryConfig) -> list[Check]:
    """Judge-error and degenerate rates of every split, against their absolute limits."""
    checks = []
    for split in sorted(s for s, sec in candidate.items()
                        if isinstance(sec, Mapping) and s not in _SKIP_SECTIONS):
        for metric, label, tol in (("judge_error_rate", "judge errors",
                                    cfg.judge_error_tolerance),
                                   ("degenerate", "degenerate answers",
                                    cfg.degenerate_tolerance)):
            value = _value(candidate, split, metric)
            if value is None:
                continue
            name = f"{split} {label}"
            if math.isnan(value):
                checks.append(Check(name, split, metric, value, None, tol, False,
                                    f"{name}: FAIL, not a number"))
                continue
            ok = value <= tol + _EPS
            verdict = "ok" if ok else "FAIL"
            checks.append(Check(name, split, metric, value, None, tol, ok,
                                f"{name}: {verdict}, {value:.2f}% "
                                f"{'<=' if ok else '>'} the limit {tol:g}%"))
    return checks + absolute_benchmark_checks(candidate, cfg)


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None,
           cfg: RegistryConfig, *, champion_label: str = "champion",
           base: Mapping[str, Any] | None = None) -> Decision:
    """Promote ``candidate`` over ``champion`` (MIRage summaries), or decline.

    ``champion`` None means there is no champion yet: the candidate is promoted, and if
    ``base`` (the base model's summary from the same eval.json) is given the checks
    against it are attached for information.
    """
    sanity = absolute_checks(candidate, cfg)
    broken = [c for c in sanity if not c.passed]
    if broken:
        others = (compare(candidate, champion, cfg, ref_name=champion_label)
                  if champion is not None else [])
        head = ("not promoted: " + ", ".join(c.name for c in broken)
                + " above the absolute limit (the safety rates cannot be trusted)")
        return Decision(False, [head, *(c.reason for c in broken),
                                *(c.reason for c in others)],
                        compared_to=champion_label if champion is not None else "none",
                        checks=[*sanity, *others])
    if champion is None:
        reasons = ["no champion yet: the first candidate becomes champion"]
        checks = compare(candidate, base, cfg, ref_name="base model") if base else []
        reasons += [f"for information, {c.reason}" for c in checks]
        return Decision(True, reasons, compared_to="none", checks=[*sanity, *checks],
                        binding=False)

    checks = compare(candidate, champion, cfg, ref_name=champion_label)
    ran = [c for c in checks if c.passed is not None]
    failed = [c for c in ran if not c.passed]
    if not ran:
        reasons = [c.reason for c in checks]
        reasons.append(f"no metric in common with the {champion_label}: refusing")
        return Decision(False, reasons, compared_to=champion_label, checks=[*sanity, *checks])
    if failed:
        head = (f"not promoted: worse than the {champion_label} on "
                + ", ".join(c.name for c in failed))
    else:
        head = f"promoted: no worse than the {champion_label} on any gate metric"
    # failures first: the reason a human needs is the first line
    ordered = failed + [c for c in checks if c not in failed]
    return Decision(not failed, [head, *(c.reason for c in ordered),
                                 *(c.reason for c in sanity)],
                    compared_to=champion_label, checks=[*sanity, *checks])
