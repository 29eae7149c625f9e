"""The one client for OpenAI-compatible chat endpoints: teacher, curation judge, eval judge.

Built on the official ``openai`` SDK (its timeouts, retries and typed errors): any server
that speaks ``/v1/chat/completions`` works (``vllm serve``, SGLang, ``transformers serve``,
a hosted API).  What it adds on top, once for every caller:

* **Requests as data.**  A :class:`ChatRequest` is a system text plus parts: text, an
  image (a path: sent as a base64 data URL) or *untrusted* text (a model's output under
  judgement), which is fenced between markers carrying a fresh random nonce per request
  and neutralised so it can neither close its fence nor open a fake one.
* **Retries.**  Timeouts, connection errors, HTTP 408/409/429 and 5xx are retried
  ``max_retries`` times by the SDK; the wait is ``backoff_s * 2**attempt`` (this client's
  setting, instead of the SDK's fixed 0.5 s base), or the server's ``Retry-After`` when it
  is at most :data:`MAX_RETRY_AFTER_S`.  Other 4xx fail at once.
* **A content-hash cache.**  The key is the sha256 of everything that decides the answer:
  model, system text, parts (images by the sha256 of their bytes; the nonce is not part of
  it), max_tokens, temperature, seed, response format and the caller's ``purpose``.  Only
  answers the caller's parser accepted are stored, one JSON file per key under
  ``<cache_dir>/<key[:2]>/<key>.json``, written atomically; a re-run pays for nothing it
  already has and asks again for what failed.
* **Counted failures, never a crash.**  Every request ends as a :class:`Completion`: its
  content and parsed value, or an ``error`` with its ``kind`` (``transport``, ``http``,
  ``malformed``, ``input``).  An empty answer and an answer cut at ``max_tokens``
  (``finish_reason: length``) are ``malformed``.  Token usage is recorded per request.
* **Concurrency.**  ``concurrency`` requests in flight on a thread pool; results come back
  in request order.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mirage_safety.config import EndpointConfig
from mirage_safety.io import read_json, sha256_bytes, write_json_atomic

log = logging.getLogger(__name__)

#: a Retry-After longer than this is not waited for (the exponential backoff is used)
MAX_RETRY_AFTER_S = 30.0
#: the placeholder a request's texts use for the fence nonce (``<<<RESPONSE-{nonce}>>>``)
NONCE = "{nonce}"

ERROR_KINDS = ("transport", "http", "malformed", "input")


class Malformed(ValueError):
    """Raised by a parser: the answer arrived but is not usable (counted as malformed)."""


# --------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Image:
    """An image file, or anything with ``read_bytes()`` and a ``name`` (an image inside a
    zip pack, :class:`mirage_safety.data.image_packs.PackedImage`)."""

    path: Any
    label: str | None = None  # a text part sent just before the image ("First image:")

    def read_bytes(self) -> bytes:
        src = self.path
        return src.read_bytes() if hasattr(src, "read_bytes") else Path(src).read_bytes()


@dataclass(frozen=True)
class Untrusted:
    """Model output under judgement: fenced as ``<<<{name}-{nonce}>>>`` ... ``<<<END-...>>>``."""

    text: str
    name: str = "RESPONSE"


Part = Text | Image | Untrusted


def fences(name: str, nonce: str) -> tuple[str, str]:
    return f"<<<{name}-{nonce}>>>", f"<<<END-{name}-{nonce}>>>"


def neutralise(text: str) -> str:
    """Break every ``<<<`` / ``>>>`` so untrusted text cannot open or close a fence."""
    return text.replace("<<<", "< < <").replace(">>>", "> > >")


def new_nonce() -> str:
    return secrets.token_hex(8)


def data_url(path: Any) -> str:
    """A base64 data URL of an image file (or of an :class:`Image`'s source)."""
    data = path.read_bytes() if hasattr(path, "read_bytes") else Path(path).read_bytes()
    name = getattr(path, "name", None) or str(path)
    mime = mimetypes.guess_type(str(name))[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion: ``system`` and text parts may use ``{nonce}`` (the fence nonce
    of this request, e.g. to tell the judge where the untrusted text starts)."""

    system: str
    parts: tuple[Part, ...]
    #: a JSON schema the answer must follow (sent as response_format when the endpoint's
    #: ``json_schema`` is on); it is part of the cache key either way
    schema: dict[str, Any] | None = None
    tag: str = ""  # caller's label for logs (a record id)
    #: a last, assistant turn: the answer a guard model classifies (its own chat template
    #: turns the conversation into its classification prompt); sent as is, not fenced
    assistant: str | None = None

    def key(self, cfg: EndpointConfig, purpose: str) -> str:
        """Content hash of the request (raises OSError when an image cannot be read)."""
        parts: list[Any] = []
        for p in self.parts:
            if isinstance(p, Image):
                parts.append(["image", p.label, sha256_bytes(p.read_bytes())])
            elif isinstance(p, Untrusted):
                parts.append(["untrusted", p.name, p.text])
            else:
                parts.append(["text", p.text])
        payload = [
            purpose,
            cfg.model,
            cfg.max_tokens,
            cfg.temperature,
            cfg.seed,
            self.schema if cfg.json_schema else None,
            self.system,
            parts,
        ]
        if self.assistant is not None:  # absent from older keys, which stay valid
            payload.append(["assistant", self.assistant])
        return hashlib.sha256(
            json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        ).hexdigest()

    def messages(self, nonce: str) -> list[dict[str, Any]]:
        """The chat messages, with a fresh fence nonce (raises OSError on a bad image)."""
        content: list[dict[str, Any]] = []
        for p in self.parts:
            if isinstance(p, Image):
                if p.label:
                    content.append({"type": "text", "text": p.label})
                src = p.path if hasattr(p.path, "read_bytes") else Path(p.path)
                content.append({"type": "image_url", "image_url": {"url": data_url(src)}})
            elif isinstance(p, Untrusted):
                open_, close = fences(p.name, nonce)
                content.append({"type": "text", "text": f"{open_}\n{neutralise(p.text)}\n{close}"})
            else:
                content.append({"type": "text", "text": p.text.replace(NONCE, nonce)})
        turns: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if self.assistant is not None:
            turns.append({"role": "assistant", "content": self.assistant})
        if not self.system:  # no system turn at all (served inference: the model's own)
            return turns
        return [{"role": "system", "content": self.system.replace(NONCE, nonce)}, *turns]


@dataclass
class Completion:
    """The outcome of one request: ``value`` (the parser's result) or an ``error``."""

    content: str | None = None
    value: Any = None
    error: str | None = None
    kind: str | None = None  # None (ok) | transport | http | malformed | input
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def summarise(results: Sequence[Completion]) -> dict[str, Any]:
    """Counts for reports and metrics: requests, cached, errors by kind, tokens."""
    kinds = Counter(r.kind for r in results if r.error)
    tokens: Counter[str] = Counter()
    for r in results:
        if not r.cached:
            tokens.update({k: int(v) for k, v in r.usage.items() if isinstance(v, int)})
    return {
        "requests": len(results),
        "cached": sum(r.cached for r in results),
        "ok": sum(r.ok for r in results),
        "errors": {k: kinds.get(k, 0) for k in ERROR_KINDS},
        "prompt_tokens": tokens.get("prompt_tokens", 0),
        "completion_tokens": tokens.get("completion_tokens", 0),
    }


# --------------------------------------------------------------------------- cache
class CompletionCache:
    """Accepted answers by request hash (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = read_json(path)
            if entry.get("key") != key or not isinstance(entry.get("content"), str):
                raise ValueError("not a cache entry for this key")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("endpoint cache: unreadable entry %s (%s), asking again", path, exc)
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_json_atomic(self._path(key), {**entry, "key": key})

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json")) if self.dir.is_dir() else 0


# --------------------------------------------------------------------------- client
Parser = Callable[[str], Any]


def _sdk_client(cfg: EndpointConfig, on_request: Callable[[], None]) -> Any:
    import openai

    backoff, retry_after_cap = cfg.backoff_s, MAX_RETRY_AFTER_S

    class _Client(openai.OpenAI):
        # The SDK retries with a fixed 0.5 s base; use ours (tests, and servers whose
        # recovery time is known) and honour Retry-After only up to our cap.
        def _calculate_retry_timeout(
            self, remaining_retries: int, options: Any, response_headers: Any = None
        ) -> float:
            ra = self._parse_retry_after_header(response_headers)
            if ra is not None and 0 < ra <= retry_after_cap:
                return ra
            attempt = options.get_max_retries(self.max_retries) - remaining_retries
            return min(backoff * 2.0 ** min(attempt, 16), 60.0)

    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [lambda _request: on_request()]}
    )
    # a local vLLM needs no key, but the SDK insists on one: send a placeholder
    key = os.environ.get(cfg.api_key_env) or "no-key"
    return _Client(
        base_url=cfg.base_url,
        api_key=key,
        timeout=cfg.timeout_s,
        max_retries=cfg.max_retries,
        http_client=http_client,
    )


def _describe(exc: Exception, attempts: int) -> tuple[str, str]:
    import openai

    tries = f" (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
    if isinstance(exc, openai.APIStatusError):
        body = ""
        with contextlib.suppress(Exception):  # a body that cannot be read
            body = exc.response.text[:200]
        retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500
        return "http", f"http {exc.status_code}: {body}{tries if retried else ''}"
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return "transport", f"transport error: {type(exc).__name__}: {exc}{tries}"
    return "transport", f"{type(exc).__name__}: {exc}"


class ChatClient:
    """Chat completions against one endpoint (one per teacher / judge), with one cache
    directory shared by all of them (keys include model and purpose)."""

    def __init__(self, cfg: EndpointConfig, *, purpose: str, cache_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.purpose = purpose
        self.cache = CompletionCache(cache_dir) if cache_dir is not None else None
        self.http_calls = 0  # HTTP attempts made, retries included (logs and tests)
        self._lock = threading.Lock()
        self._local = threading.local()  # attempts of the request this thread is making
        self._sdk: Any = None

    def _count(self) -> None:
        # the SDK's sync client sends from the calling thread, so the hook runs there
        self._local.attempts = getattr(self._local, "attempts", 0) + 1
        with self._lock:
            self.http_calls += 1

    def _client(self) -> Any:
        with self._lock:
            if self._sdk is None:
                self._sdk = _sdk_client(self.cfg, self._count)
            return self._sdk

    def close(self) -> None:
        """Release the connection pool (a later request opens a new one)."""
        with self._lock:
            sdk, self._sdk = self._sdk, None
        if sdk is not None:
            sdk.close()

    # ---------------------------------------------------------------- one request
    def complete(self, request: ChatRequest, parse: Parser, *, strict: bool = True) -> Completion:
        """Never raises: every failure is a :class:`Completion` with an error.

        ``strict`` False (served inference of the model under test): an empty answer or one
        cut at ``max_tokens`` is an answer like any other (``finish_reason`` says which),
        not a malformed one; judging it is the evaluator's business."""
        key: str | None = None
        if self.cache is not None:
            try:
                key = request.key(self.cfg, self.purpose)
            except OSError as exc:
                return Completion(error=f"image unreadable: {exc}", kind="input")
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    value = parse(hit["content"])
                except Malformed:
                    pass  # the parser changed since: ask again
                else:
                    return Completion(
                        content=hit["content"],
                        value=value,
                        finish_reason=hit.get("finish_reason"),
                        usage=dict(hit.get("usage") or {}),
                        cached=True,
                    )
        try:
            messages = request.messages(new_nonce())
        except OSError as exc:
            return Completion(error=f"image unreadable: {exc}", kind="input")
        result = self._call(messages, request.schema, strict=strict)
        if result.ok and result.content is not None:
            try:
                result.value = parse(result.content)
            except Malformed as exc:
                result.error, result.kind = f"unparseable: {exc}", "malformed"
        if result.ok and self.cache is not None and key is not None:
            try:
                self.cache.put(
                    key,
                    {
                        "purpose": self.purpose,
                        "model": self.cfg.model,
                        "content": result.content,
                        "finish_reason": result.finish_reason,
                        "usage": result.usage,
                    },
                )
            except OSError as exc:
                log.warning("endpoint cache write failed: %s", exc)
        return result

    def _call(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, *, strict: bool = True
    ) -> Completion:
        import openai
        from openai.types.chat import ChatCompletion

        kwargs: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
        }
        if self.cfg.seed is not None:
            kwargs["seed"] = self.cfg.seed
        if schema is not None and self.cfg.json_schema:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        self._local.attempts = 0
        try:
            answer = self._client().chat.completions.create(**kwargs)
        except openai.OpenAIError as exc:
            kind, msg = _describe(exc, self._local.attempts)
            return Completion(error=msg, kind=kind)
        except Exception as exc:  # a body the SDK cannot even decode
            return Completion(
                error=f"unparseable: endpoint answer ({type(exc).__name__}: {exc})",
                kind="malformed",
            )
        if not isinstance(answer, ChatCompletion) or not answer.choices:
            raw = answer if isinstance(answer, str) else repr(answer)
            return Completion(
                content=None,
                error=f"unparseable: endpoint answer is not a chat completion: {raw[:200]!r}",
                kind="malformed",
            )
        choice = answer.choices[0]
        content = choice.message.content if choice.message else None
        usage = {}
        if answer.usage is not None:
            usage = {
                "prompt_tokens": int(answer.usage.prompt_tokens or 0),
                "completion_tokens": int(answer.usage.completion_tokens or 0),
            }
        result = Completion(content=content, finish_reason=choice.finish_reason, usage=usage)
        if not strict:
            result.content = content or ""
        elif content is None or not content.strip():
            result.error, result.kind = "empty answer", "malformed"
        elif choice.finish_reason == "length":
            result.error = f"answer cut at max_tokens ({self.cfg.max_tokens})"
            result.kind = "malformed"
        return result

    # ---------------------------------------------------------------- many requests
    def complete_many(
        self,
        requests: Sequence[ChatRequest],
        parse: Parser,
        *,
        progress: bool = True,
        desc: str | None = None,
        strict: bool = True,
    ) -> list[Completion]:
        """One :class:`Completion` per request, in order; ``concurrency`` in flight."""
        results: list[Completion | None] = [None] * len(requests)
        if not requests:
            return []
        workers = max(1, min(self.cfg.concurrency, len(requests)))

        def one(i: int) -> Completion:
            try:
                return self.complete(requests[i], parse, strict=strict)
            except Exception as exc:  # a bug in a parser: count it, keep going
                log.exception("request %s failed", requests[i].tag or i)
                return Completion(error=f"{type(exc).__name__}: {exc}", kind="malformed")

        try:
            with ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix=self.purpose.split("/")[0]
            ) as pool:
                futures = {pool.submit(one, i): i for i in range(len(requests))}
                for fut in tqdm(
                    as_completed(futures),
                    total=len(futures),
                    desc=desc or f"{self.purpose} ({self.cfg.model})",
                    disable=not progress,
                ):
                    results[futures[fut]] = fut.result()
        finally:
            self.close()
        out = [
            r if r is not None else Completion(error="not sent", kind="transport") for r in results
        ]
        s = summarise(out)
        log.info(
            "%s: %d request(s), %d cached, %d ok, errors %s, %d+%d tokens",
            self.purpose,
            s["requests"],
            s["cached"],
            s["ok"],
            s["errors"],
            s["prompt_tokens"],
            s["completion_tokens"],
        )
        return out


def strict_json(content: str) -> Any:
    """One JSON value, optionally inside a ```json fence; anything else is Malformed."""
    import re

    text = content.strip()
    m = re.match(r"^```(?:json|JSON)?[ \t]*\n?(.*?)\n?```$", text, re.DOTALL)
    if m:
        text = m.group(1).strip()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Malformed(f"not JSON ({exc.__class__.__name__})") from None
