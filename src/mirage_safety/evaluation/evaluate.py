"""The ``evaluate`` stage: answers of the base and the MIRage model on every test split,
judged, scored and reported side by side.

Outputs (DVC): ``eval/`` (responses_<model>.jsonl, verdicts_<model>.jsonl, report.md,
gallery/, plots/*.png, per_sample.csv), ``metrics/eval.json`` (DVC metrics) and
``plots/eval_rates.csv`` (DVC plots).  Generation is resumable and idempotent (see
:mod:`.responses`); judge verdicts are cached by content hash; one bad sample is
recorded as an error row and never stops the run.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirage_safety import paths
from mirage_safety.config import (
    EvalConfig,
    Params,
    add_run_arguments,
    tracking_wanted,
)
from mirage_safety.data.image_packs import image_at
from mirage_safety.data.schema import SAFETY_SPLITS
from mirage_safety.evaluation import general
from mirage_safety.evaluation import metrics as M
from mirage_safety.evaluation.benchmarks.report import table
from mirage_safety.evaluation.benchmarks.run import input_sha as bench_sha
from mirage_safety.evaluation.benchmarks.run import load_benchmarks, score
from mirage_safety.evaluation.degenerate import degenerate_reason
from mirage_safety.evaluation.engines import make_engine
from mirage_safety.evaluation.judges import make_judge
from mirage_safety.evaluation.judges.base import JudgeInput
from mirage_safety.evaluation.report import headline_table, write_outputs
from mirage_safety.evaluation.responses import ResponseStore
from mirage_safety.io import read_json, sha256_bytes, write_json_atomic, write_text_atomic
from mirage_safety.labelling.policies import load_policies
from mirage_safety.tracking import flatten_params, stage_run

log = logging.getLogger(__name__)

MODELS = ("base", "mirage")
#: part of the response store's fingerprint: bump when rows gain a field every row needs
STORE_VERSION = "r2"  # r2: n_tokens + finished (degenerate answers cut at max_new_tokens)


# --------------------------------------------------------------------------- data
def split_file(data_dir: Path, split: str) -> Path:
    return data_dir / "mis" / f"{split}.json"


def load_splits(data_dir: Path, cfg: EvalConfig) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """{split: (dataset root, records)} for the configured splits that exist."""
    out = {}
    for split in cfg.splits:
        path = split_file(data_dir, split)
        if not path.is_file():
            log.warning("split %s: %s not found, skipped", split, path)
            continue
        records = read_json(path)
        if cfg.max_samples_per_split >= 0:
            records = records[: cfg.max_samples_per_split]
        if records:
            out[split] = (path.parent, records)
    return out


# --------------------------------------------------------------------------- generation
def input_sha(root: Path, rec: dict[str, Any]) -> str:
    """Hash of what a response answers: the question and both images' bytes.

    Ids alone are not enough: regenerated data reuses ids (``test_easy-00000``) for other
    questions and images, and ``eval/`` persists across DVC runs.
    """
    import hashlib

    h = hashlib.sha256(str(rec["question"]).encode())
    for key in ("image_path1", "image_path2"):
        path = image_at(root, rec[key])
        h.update(
            b"\0" + (sha256_bytes(path.read_bytes()).encode() if path.is_file() else b"missing")
        )
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Ask:
    """One prompt to answer: where its answer is stored, the question, its images."""

    split: str
    id: str
    question: str
    images: tuple[Any, ...]  # paths (or images inside packs)
    sha: str  # of the question and the images' bytes


def mis_asks(splits: dict[str, tuple[Path, list[dict[str, Any]]]]) -> list[Ask]:

    return [
        Ask(
            split,
            str(rec["id"]),
            rec["question"],
            (image_at(root, rec["image_path1"]), image_at(root, rec["image_path2"])),
            input_sha(root, rec),
        )
        for split, (root, records) in splits.items()
        for rec in records
    ]


def _generate_missing(
    engine: Any, store: ResponseStore, asks: Sequence[Ask], cfg: EvalConfig, *, progress: bool
) -> int:
    """Answer every (split, id) not yet in ``store`` (or stored for another input, or
    stored as a failed generation); returns how many rows were added."""
    shas = {(a.split, a.id): a.sha for a in asks}
    stale = [
        k
        for k, sha in shas.items()
        if (stored := store.get(*k)) is not None and stored.get("input_sha") != sha
    ]
    if stale:
        dropped = store.discard(stale)
        log.info(
            "%s: %d stored answer(s) are for an older input, answering again", store.path, dropped
        )
    failed = [
        k for k in shas if (stored := store.get(*k)) is not None and stored.get("generation_error")
    ]
    if failed:  # a failed request (a server that went away) is asked again, never kept
        store.discard(failed)
        log.info("%s: answering %d failed generation(s) again", store.path, len(failed))
    todo = [a for a in asks if (a.split, a.id) not in store]
    if not todo:
        return 0
    added = 0
    # chunks of a few batches: each chunk is appended (and fsync'ed) as soon as it is done
    chunk = max(1, cfg.batch_size) * 4
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        answers = engine.answer([(a.question, list(a.images)) for a in part], progress=progress)
        rows = []
        for a, answer in zip(part, answers, strict=True):
            row = {
                "split": a.split,
                "id": a.id,
                "question": a.question,
                "response": None if isinstance(answer, str) else answer.text,
                "max_new_tokens": cfg.max_new_tokens,
                "input_sha": a.sha,
            }
            if isinstance(answer, str):  # the error of this prompt: a counted error row
                row["generation_error"] = answer
            else:  # cut at max_new_tokens is a degenerate answer
                row.update(n_tokens=answer.n_tokens, finished=answer.finished)
            rows.append(row)
        added += store.append(rows)
    return added


# --------------------------------------------------------------------------- stage
def evaluate(
    params: Params,
    *,
    data_dir: Path = Path("data"),
    model_dirs: dict[str, Path] | None = None,
    out_dir: Path = Path("eval"),
    metrics_path: Path = Path(paths.EVAL_METRICS),
    plots_path: Path = Path("plots/eval_rates.csv"),
    cache_dir: Path = Path(".cache/openai"),
    progress: bool = True,
    track: bool = True,
) -> dict[str, Any]:

    cfg = params.eval
    policies = load_policies(params.label.policies)
    model_dirs = model_dirs or {"base": Path(paths.BASE_MODEL), "mirage": Path(paths.MODEL)}

    splits = load_splits(data_dir, cfg)
    # every benchmark is read and validated before any answer is generated
    benches, skipped = load_benchmarks(cfg)
    if not splits and not benches:
        raise FileNotFoundError(
            f"{data_dir}: none of the splits {cfg.splits} exist and no "
            "benchmark is configured; run `mirage generate` first"
        )
    asks = mis_asks(splits)
    for b in benches:
        for smp in b.samples:
            images = [b.root / p for p in smp.images]
            asks.append(
                Ask(b.split, smp.id, smp.question, tuple(images), bench_sha(smp.question, images))
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = make_judge(cfg.judge, cfg, cache_dir=cache_dir)
    second = (
        make_judge(cfg.second_judge, cfg, cache_dir=cache_dir)
        if cfg.second_judge not in ("none", cfg.judge)
        else None
    )

    per_model: dict[str, Any] = {}
    judged: dict[str, dict[str, list[dict[str, Any]]]] = {}
    agreement: dict[str, Any] = {}
    bench_metrics: dict[str, dict[str, Any]] = {b.name: {} for b in benches}
    bench_rows: list[dict[str, Any]] = []
    names = list(model_dirs) + [
        n for n in (cfg.server.models if cfg.engine == "openai" else {}) if n not in model_dirs
    ]
    for name in names:
        mdir = model_dirs.get(name)
        served = cfg.engine == "openai" and name in cfg.server.models
        if not served and (mdir is None or not Path(mdir).exists()):
            log.warning("model %s: %s missing, skipped", name, mdir)
            continue
        engine = make_engine(name, Path(mdir) if mdir is not None else None, cfg)
        # STORE_VERSION: rows of older code lack `finished`, so they are answered again
        fp = f"{engine.fingerprint()}-{cfg.max_new_tokens}-{STORE_VERSION}"
        store = ResponseStore(out_dir / f"responses_{name}.jsonl", fp)
        added = _generate_missing(engine, store, asks, cfg, progress=progress)
        log.info("model %s: %d new response(s), %d total", name, added, len(store))
        for b in benches:
            bench_metrics[b.name][name], rows = score(
                b, store, cache_dir=cache_dir, progress=progress
            )
            bench_rows += [{"model": name, **r} for r in rows]
        rows = _judge_rows(store, splits, judge, second, progress=progress)
        write_jsonl_atomic(out_dir / f"verdicts_{name}.jsonl", rows)
        judged[name] = _by_split(rows)
        per_model[name] = M.summarise_model(judged[name], judge=judge.name)
        for split, split_rows in judged[name].items():
            cites = M.rule_citation(split_rows, policies) if split in SAFETY_SPLITS else None
            if cites is not None:
                per_model[name][split]["policy"] = cites
        if second is not None:
            agreement[name] = M.judge_agreement(rows, judge.name, second.name)
        if cfg.general.tasks:  # general capability: lmms-eval against the model, served
            # lmms-eval's whole output and the server's log (dates, ports, durations) go to
            # the cache; eval/ keeps the per-sample logs, the same bytes on every run
            scratch = cache_dir.parent / "lmms-eval"
            with general.target_for(
                name, Path(mdir) if mdir is not None else None, cfg, log_dir=scratch
            ) as target:
                per_model[name]["general"] = general.run(
                    cfg.general,
                    target,
                    scratch / name,
                    max_new_tokens=cfg.max_new_tokens,
                    data_dir=data_dir,
                    keep=out_dir / "general" / name,
                )
            log.info(
                "model %s: general accuracy %.2f (lmms-eval: %s)",
                name,
                per_model[name]["general"]["accuracy"],
                ", ".join(cfg.general.tasks),
            )
    result = {
        **per_model,
        "agreement": agreement,
        "judges": {"primary": judge.name, "second": second.name if second else None},
        "policies_sha256": policies.sha256,
        "min_judged_share": cfg.min_judged_share,
    }
    if benches or skipped:
        result["benchmarks"] = {
            **{
                b.name: {
                    **bench_metrics[b.name],
                    # where from, as configured (not the resolved path: the metrics
                    # must not depend on where the checkout is)
                    "info": {
                        "benchmark": b.protocol.name,
                        "n": len(b.samples),
                        "source": b.cfg.local_dir
                        or f"hf://datasets/{b.cfg.hub_id}@{b.cfg.revision or 'main'}",
                    },
                }
                for b in benches
            },
            **{n: {"info": {"skipped": why}} for n, why in skipped.items()},
        }
        write_jsonl_atomic(out_dir / "benchmark_verdicts.jsonl", bench_rows)
    write_json_atomic(metrics_path, result)
    write_outputs(
        result,
        judged,
        splits,
        out_dir=out_dir,
        plots_path=plots_path,
        gallery_size=cfg.gallery_size,
    )
    if track:
        _track(params, result, out_dir, metrics_path)
    return result


def _by_split(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["split"], []).append(r)
    return out


def _judge_rows(
    store: ResponseStore,
    splits: dict[str, tuple[Path, list[dict[str, Any]]]],
    judge: Any,
    second: Any,
    *,
    progress: bool,
) -> list[dict[str, Any]]:
    """One row per (split, id): the record, the response and each judge's verdict."""

    rows: list[dict[str, Any]] = []
    items: list[JudgeInput] = []
    for split, (root, records) in splits.items():
        for rec in records:
            got = store.get(split, str(rec["id"]))
            if got is None:
                continue
            row = {
                "split": split,
                "id": str(rec["id"]),
                "record": rec,
                "response": got.get("response"),
                "generation_error": got.get("generation_error"),
            }
            rows.append(row)
            if got.get("generation_error"):
                continue  # nothing to judge: counted as a judge error by the metrics
            reason = degenerate_reason(got.get("response"), finished=got.get("finished"))
            if reason:
                row["degenerate"] = reason
            items.append(
                JudgeInput(
                    id=str(rec["id"]),
                    split=split,
                    question=rec["question"],
                    response=got.get("response") or "",
                    image_paths=(str(root / rec["image_path1"]), str(root / rec["image_path2"])),
                    meta=rec,
                )
            )
    index = {(r["split"], r["id"]): r for r in rows}
    for j in (judge, second):
        if j is None or not items:
            continue
        for item, verdict in zip(items, j.judge_many(items, progress=progress), strict=True):
            index[(item.split, item.id)].setdefault("verdicts", {})[j.name] = verdict.to_dict()
    return rows


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import json

    write_text_atomic(
        path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    )


def _track(params: Params, result: dict[str, Any], out_dir: Path, metrics_path: Path) -> None:
    import mlflow

    with stage_run(
        "evaluate",
        params.tracking,
        params=params.eval.model_dump(mode="json"),
        profile=params.profile,
        tags={"policies_sha256": str(result.get("policies_sha256"))},
    ):
        flat = {
            k: float(v)
            for k, v in flatten_params(result).items()
            if _is_number(v) and "_ci" not in k
        }
        # benchmark groups carry the data's own names (categories, scenarios)
        mlflow.log_metrics({re.sub(r"[^\w\-. :]", "_", k): v for k, v in flat.items()})
        mlflow.log_artifact(str(metrics_path))
        for rel in ("report.md", "per_sample.csv"):
            if (out_dir / rel).exists():
                mlflow.log_artifact(str(out_dir / rel))
        if (out_dir / "plots").is_dir():
            mlflow.log_artifacts(str(out_dir / "plots"), artifact_path="plots")
        if (out_dir / "general").is_dir():  # lmms-eval's results and per-sample logs
            mlflow.log_artifacts(str(out_dir / "general"), artifact_path="general")
        if (out_dir / "benchmark_verdicts.jsonl").exists():
            import pandas as pd

            bench = pd.read_json(out_dir / "benchmark_verdicts.jsonl", lines=True)
            if len(bench):
                mlflow.log_table(bench.astype(str), artifact_file="benchmark_verdicts_table.json")
        if (out_dir / "per_sample.csv").exists():
            import pandas as pd

            mlflow.log_table(
                pd.read_csv(out_dir / "per_sample.csv"), artifact_file="per_sample_table.json"
            )


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- CLI
def add_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="answer every test split with the base and MIRage models, judge and score",
        description=(
            "Batched greedy generation for the base and the fine-tuned model on every test split "
            "(resumable: rows already in eval/responses_<model>.jsonl for the same model and "
            "settings are reused, never duplicated), judging with eval.judge (+ eval.second_judge "
            "for agreement), metrics per split and category with 95%% Wilson intervals, "
            "metrics/eval.json for `dvc metrics show`, plots and a markdown report with a gallery."
        ),
    )
    p.add_argument("--data", default=paths.DATA, help="dataset dir (default: %(default)s)")
    p.add_argument("--base-model", default=paths.BASE_MODEL, help="base model dir")
    p.add_argument("--model", default=paths.MODEL, help="fine-tuned model dir")
    p.add_argument("--out", default=paths.EVAL, help="output dir (default: %(default)s)")
    p.add_argument("--metrics", default=paths.EVAL_METRICS, help="metrics file")
    p.add_argument("--plots", default=paths.EVAL_PLOTS, help="DVC plots CSV")
    add_run_arguments(p, cache_user="openai judge")
    p.set_defaults(func=_cli, params_section="eval")
    return p


def _cli(args: argparse.Namespace, params: Params) -> int:
    result = evaluate(
        params,
        data_dir=Path(args.data),
        model_dirs={"base": Path(args.base_model), "mirage": Path(args.model)},
        out_dir=Path(args.out),
        metrics_path=Path(args.metrics),
        plots_path=Path(args.plots),
        cache_dir=Path(args.cache_dir),
        progress=not args.no_progress,
        track=tracking_wanted(args),
    )

    print(headline_table(result))

    if table(result):
        print("\n" + table(result))
    return 0
