"""Inference engines of ``mirage evaluate``: who answers the test prompts.

* :class:`HFEngine` (``eval.engine: hf``) -- the model directory loaded with
  ``transformers`` in this process, batched greedy decoding
  (:mod:`mirage_safety.models.inference`); a batch that fails is retried one prompt at
  a time, so one bad sample is one error row.
* :class:`ServedEngine` (``eval.engine: openai``) -- the model under test behind any
  OpenAI-compatible server (``vllm serve``, SGLang, ``transformers serve``; ``mirage
  serve`` starts the last for a model directory or a registry URI).  Each prompt is one
  chat completion through the shared client (:mod:`mirage_safety.endpoints`: both images as
  data URLs before the question, as the chat template puts them, temperature 0 and
  ``max_tokens = eval.max_new_tokens``, ``eval.server.concurrency`` in flight, retries with
  backoff on timeouts / 429 / 5xx).  A request that still fails is an error row, answered
  again by the next run; an empty answer or one cut at ``max_tokens`` is an answer
  (``finished`` false for the latter) that the degenerate-answer check sees.

Both return, per prompt, a :class:`~mirage_safety.models.inference.Generation` or the
error string of that prompt.  The response store's fingerprint says which engine wrote a
row: a served model is identified by its served id and the revision the user gives
(``eval.server.revisions``), since its weights are not on this machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirage_safety.config import EvalConfig
from mirage_safety.endpoints import ChatClient, ChatRequest, Image, Text
from mirage_safety.evaluation.responses import model_fingerprint
from mirage_safety.models import inference
from mirage_safety.models.inference import Generation
from mirage_safety.models.loading import load_for_inference

log = logging.getLogger(__name__)

Prompt = tuple[str, Sequence[Any]]  # (question, [image paths or packed images])


class HFEngine:
    def __init__(self, model_dir: Path, cfg: EvalConfig) -> None:
        self.model_dir = Path(model_dir)
        self.cfg = cfg
        self._loaded: tuple[Any, Any] | None = None

    def fingerprint(self) -> str:

        return model_fingerprint(self.model_dir)

    def answer(self, prompts: Sequence[Prompt], *, progress: bool) -> list[Any]:
        if self._loaded is None:
            self._loaded = load_for_inference(self.model_dir)
        model, processor = self._loaded
        cfg = self.cfg
        try:
            return list(
                inference.generate(
                    model,
                    processor,
                    prompts,
                    batch_size=cfg.batch_size,
                    max_new_tokens=cfg.max_new_tokens,
                    progress=progress,
                )
            )
        except Exception as exc:
            log.warning("batch failed (%s); retrying its samples one by one", exc)
        out: list[Any] = []
        for prompt in prompts:
            try:
                out.append(
                    inference.generate(
                        model,
                        processor,
                        [prompt],
                        batch_size=1,
                        max_new_tokens=cfg.max_new_tokens,
                        progress=False,
                    )[0]
                )
            except Exception as one_exc:
                out.append(f"{type(one_exc).__name__}: {one_exc}")
        return out


class ServedEngine:
    def __init__(self, name: str, cfg: EvalConfig) -> None:

        self.name = name
        self.cfg = cfg
        self.model_id = cfg.server.models[name]
        self.client = ChatClient(
            cfg.server.endpoint(self.model_id, cfg.max_new_tokens),
            purpose=f"served/{name}",
            cache_dir=None,
        )

    def fingerprint(self) -> str:
        revision = self.cfg.server.revisions.get(self.name, "unpinned")
        return f"served:{self.model_id}@{revision}"

    def answer(self, prompts: Sequence[Prompt], *, progress: bool) -> list[Any]:

        requests = [
            ChatRequest(system="", parts=(*(Image(p) for p in images), Text(question)))
            for question, images in prompts
        ]
        results = self.client.complete_many(
            requests,
            lambda content: content,
            progress=progress,
            strict=False,
            desc=f"generate ({self.model_id})",
        )
        out: list[Any] = []
        for res in results:
            if res.ok:
                out.append(
                    Generation(
                        (res.content or "").strip(),
                        int(res.usage.get("completion_tokens", 0)),
                        res.finish_reason != "length",
                    )
                )
            else:
                out.append(f"served {self.model_id}: {res.error}")
        return out


def make_engine(name: str, model_dir: Path | None, cfg: EvalConfig) -> Any:
    if cfg.engine == "openai" and name in cfg.server.models:
        return ServedEngine(name, cfg)
    if model_dir is None:
        raise ValueError(
            f"model {name!r}: no model directory and no served model (eval.server.models.{name})"
        )
    return HFEngine(model_dir, cfg)
