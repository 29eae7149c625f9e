"""External benchmarks inside ``mirage evaluate``: load, ask, judge, score.

:func:`load_benchmarks` reads every enabled ``eval.benchmarks`` entry through its adapter
(validated; a bad record stops the stage before any answer is generated).  The models'
answers go into the same response stores as the MIS splits (split ``bench/<name>``), so
they resume and never duplicate; :func:`score` judges them with each subset's judge and
summarises them with the benchmark's protocol.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirage_safety.config import BenchmarkConfig, ConfigError, EvalConfig
from mirage_safety.data.importers import _default_download_dir, _download
from mirage_safety.evaluation.benchmarks.judges import judge_answers
from mirage_safety.evaluation.benchmarks.protocols import Outcome, Protocol
from mirage_safety.evaluation.benchmarks.registry import LOADERS, protocol_of
from mirage_safety.evaluation.benchmarks.sample import BenchSample
from mirage_safety.io import sha256_bytes

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    name: str
    cfg: BenchmarkConfig
    protocol: Protocol
    root: Path
    samples: list[BenchSample]

    @property
    def split(self) -> str:
        return f"bench/{self.name}"


def resolve_root(name: str, cfg: BenchmarkConfig) -> Path:
    if cfg.local_dir:
        root = Path(cfg.local_dir).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"eval.benchmarks.{name}.local_dir: {cfg.local_dir!r} is not a directory"
            )
        return root.resolve()

    assert cfg.hub_id  # BenchmarkConfig requires one of the two
    dest = (
        Path(cfg.download_dir).expanduser()
        if cfg.download_dir
        else _default_download_dir(cfg.hub_id, cfg.revision)
    )
    return _download(
        cfg.hub_id, cfg.revision, dest, name, field=f"eval.benchmarks.{name}"
    ).resolve()


def load_benchmarks(cfg: EvalConfig) -> tuple[list[Loaded], dict[str, str]]:
    """(the benchmarks to run, {name: why skipped}).  An embedded split that the generate
    stage did not write (``data.source`` is not ``world``) is skipped and reported; any
    other benchmark that cannot be read is an error."""
    loaded, skipped = [], {}
    for name, bcfg in cfg.benchmarks.items():
        if not bcfg.enabled:
            continue
        proto = protocol_of(name, bcfg)
        if proto.embedded and bcfg.local_dir and not Path(bcfg.local_dir).is_dir():
            skipped[name] = f"{bcfg.local_dir} not written (the embedded world's split)"
            log.warning("benchmark %s: %s, skipped", name, skipped[name])
            continue
        root = resolve_root(name, bcfg)
        samples = LOADERS[proto.name](root)
        if bcfg.subsets is not None:
            unknown = set(bcfg.subsets) - {s.subset for s in samples}
            if unknown:
                raise ConfigError(
                    f"eval.benchmarks.{name}.subsets: {sorted(unknown)} not in "
                    f"{root} (it has {sorted({s.subset for s in samples})})"
                )
            samples = [s for s in samples if s.subset in bcfg.subsets]
        limit = bcfg.max_samples if bcfg.max_samples >= 0 else cfg.max_samples_per_split
        if limit >= 0:
            samples = _first_per_subset(samples, limit)
        loaded.append(Loaded(name, bcfg, proto, root, samples))
        log.info("benchmark %s: %d sample(s) from %s", name, len(samples), root)
    return loaded, skipped


def _first_per_subset(samples: list[BenchSample], limit: int) -> list[BenchSample]:
    """The first ``limit`` samples of each subset (a smoke run still sees every subset)."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        if seen.get(s.subset, 0) < limit:
            seen[s.subset] = seen.get(s.subset, 0) + 1
            out.append(s)
    return out


def input_sha(question: str, images: list[Path]) -> str:

    h = hashlib.sha256(question.encode())
    for path in images:
        h.update(
            b"\0" + (sha256_bytes(path.read_bytes()).encode() if path.is_file() else b"missing")
        )
    return h.hexdigest()[:16]


def score(
    bench: Loaded, store: Any, *, cache_dir: Path | None, progress: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the benchmark's metrics for one model's stored answers, one row per sample)."""
    answers = []
    for s in bench.samples:
        row = store.get(bench.split, s.id) or {}
        err = row.get("generation_error") or (None if row else "no stored answer")
        answers.append((s, row.get("response"), err))
    by_judge: dict[str, list[int]] = {}
    for i, s in enumerate(bench.samples):
        by_judge.setdefault(bench.protocol.judge_for(s.subset, bench.cfg), []).append(i)
    outcomes: list[Outcome | None] = [None] * len(answers)
    for kind, idx in by_judge.items():
        got = judge_answers(
            kind,
            bench.protocol,
            [answers[i] for i in idx],
            bench.root,
            bench.cfg,
            name=bench.name,
            cache_dir=cache_dir,
            progress=progress,
        )
        for i, o in zip(idx, got, strict=True):
            outcomes[i] = o
    scored = [(s, o) for s, o in zip(bench.samples, outcomes, strict=True) if o is not None]
    metrics = bench.protocol.summarise(scored)
    metrics["judges"] = {kind: len(idx) for kind, idx in sorted(by_judge.items())}
    if bench.protocol.group_by:
        metrics["groups"] = _groups(bench.protocol, scored)
    rows = [
        {
            "benchmark": bench.name,
            "id": s.id,
            "subset": s.subset,
            "question": s.question,
            "images": list(s.images),
            "response": a[1],
            "generation_error": a[2],
            "judge": o.judge,
            "outcome": o.value,
            "judge_error": o.error,
            "raw": o.raw,
        }
        for (s, o), a in zip(scored, answers, strict=True)
    ]
    return metrics, rows


def _groups(proto: Protocol, scored: list[tuple[BenchSample, Outcome]]) -> dict[str, Any]:
    """The headline metrics per value of the protocol's grouping field (scenario, category)."""
    groups: dict[str, list[tuple[BenchSample, Outcome]]] = {}
    for s, o in scored:
        groups.setdefault(str(s.meta.get(proto.group_by or "") or "unknown"), []).append((s, o))
    out = {}
    for g, part in sorted(groups.items()):
        m = proto.summarise(part)
        out[g] = {"n": len(part), **{h.key: m.get(h.key) for h in proto.headline}}
    return out
