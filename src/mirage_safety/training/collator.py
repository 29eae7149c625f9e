"""Multi-image chat collator: canonical train records -> model inputs with assistant-only labels.

One code path for the embedded tiny VLM and Hub VLMs: each record becomes chat ``messages``
(one ``{"type": "image"}`` part per ``<image>`` placeholder, in order), the *processor's*
chat template renders them, and the *processor* tokenises text + images together, so
processors that expand an image into many tokens (LLaVA, Qwen2-VL, InternVL...) work
unchanged.

How assistant tokens are found (labels != -100 only on the answer and its end-of-turn
token), and why this way:

* ``return_assistant_tokens_mask`` needs a ``{% generation %}`` block, which most Hub chat
  templates (Qwen2-VL, InternVL, LLaVA) lack, so it cannot be the general mechanism.
* Instead the template is rendered twice per assistant turn: the conversation up to that
  turn with ``add_generation_prompt=True`` (the prompt) and the full conversation.  The
  prompt must be a character prefix of the full text (checked; a template that is not
  prefix-stable is reported, never silently mis-masked).  The answer's characters start at
  ``len(prompt)``; the turn's loss ends with the answer text plus the special token right
  after it (``</s>``, ``<|im_end|>``, ``<|eot_id|>``...), so template newlines after the
  end-of-turn token, role markers, the prompt and image tokens never carry loss.
* Characters are mapped to tokens with the fast tokenizer's offsets on the *unexpanded* text
  (text-only, cheap, cached per record).  The processor then expands image placeholders,
  which only happens before the trained turn, so the unexpanded token tail from the first
  trained token on must equal the tail of the processor's ids: this is checked for every
  sample, and a mismatch raises an error naming the record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirage_safety.data.chat import (
    RecordError,
    load_image,
    prompt_messages,
    record_id,
    record_to_messages,
    resolve_image,
)
from mirage_safety.data.schema import IMAGE_TOKEN
from mirage_safety.models.families import processor_family

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TextEncoding:
    """Template-rendered text and, on its unexpanded tokens, which ones carry loss."""

    text: str
    ids: tuple[int, ...]  # unexpanded token ids of ``text``
    loss: tuple[bool, ...]  # per unexpanded token
    first: int  # index of the first loss token (tail from here is image-free)


def _render(processor: Any, messages: list[dict[str, Any]], *, generation: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def encode_text(processor: Any, messages: list[dict[str, Any]], rid: str = "?") -> TextEncoding:
    """Render ``messages`` and mark the tokens of every assistant answer + end-of-turn."""
    tok = _tokenizer(processor)
    full = _render(processor, messages, generation=False)
    spans: list[tuple[int, int]] = []  # [start char, end char of answer)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(processor, messages[:i], generation=True)
        if not full.startswith(prompt):
            raise RecordError(
                f"record {rid!r}: the chat template is not prefix-stable (the prompt rendered "
                f"with add_generation_prompt is not a prefix of the full conversation), so "
                f"assistant tokens cannot be located"
            )
        answer = "".join(p["text"] for p in msg["content"] if p["type"] == "text").strip()
        at = full.find(answer, len(prompt)) if answer else -1
        if at < 0:  # template rewrote the answer: train on the whole rendered turn
            end = len(_render(processor, messages[: i + 1], generation=False))
        else:
            end = at + len(answer)
        spans.append((len(prompt), end))

    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    special = set(tok.all_special_ids) | {
        i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special
    }
    loss = [False] * len(ids)
    for start, end in spans:
        last = -1
        for j, (a, _b) in enumerate(offsets):
            if start <= a < end:
                loss[j] = True
                last = j
        # the end-of-turn special token directly after the answer (</s>, <|im_end|>, ...)
        nxt = last + 1
        while last >= 0 and nxt < len(ids) and offsets[nxt][0] < end:
            nxt += 1
        if last >= 0 and nxt < len(ids) and ids[nxt] in special:
            loss[nxt] = True
    if not any(loss):
        raise RecordError(f"record {rid!r}: no assistant token found after tokenisation")
    return TextEncoding(full, tuple(ids), tuple(loss), loss.index(True))


class ChatCollator:
    """Collate canonical train records into a padded multi-image training batch.

    ``features`` are records, or rows ``{"record": record-or-JSON, "root": dataset root}``
    (the training dataset stores the root per row since ``data/mis`` and
    ``data/general`` have their own image roots).  Text-side work is cached per record id,
    so later epochs only load images and pad.
    """

    def __init__(
        self,
        processor: Any,
        root: str | os.PathLike[str] | None = None,
        *,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        cache: bool = True,
    ):
        self.processor = processor
        self.root = Path(root) if root is not None else None
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self._cache: dict[tuple[str, str], TextEncoding] | None = {} if cache else None
        tok = _tokenizer(processor)
        if tok.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one before training")
        family_ids = [
            tok.convert_tokens_to_ids(t)
            for t in processor_family(processor).image_tokens
            if t in tok.get_vocab()
        ]
        self.image_token_ids = {
            i
            for i in (
                getattr(processor, "image_token_id", None),
                getattr(tok, "image_token_id", None),
                *family_ids,
            )
            if isinstance(i, int)
        }
        self._warned_truncation = False

    # ------------------------------------------------------------------ per record
    def _unpack(self, feature: Mapping[str, Any]) -> tuple[dict[str, Any], Path]:
        if "record" in feature:
            rec = feature["record"]
            rec = json.loads(rec) if isinstance(rec, str) else rec
            root = feature.get("root")
        else:
            rec, root = dict(feature), None
        root = Path(root) if root else self.root
        if root is None:
            raise ValueError("ChatCollator needs a dataset root (argument or row 'root')")
        return rec, root

    def encode(self, rec: Mapping[str, Any], root: Path) -> TextEncoding:
        key = (str(root), str(rec["id"])) if "id" in rec else None
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        enc = encode_text(self.processor, record_to_messages(rec), record_id(rec))
        if self._cache is not None and key is not None:
            self._cache[key] = enc
        return enc

    def images(self, rec: Mapping[str, Any], root: Path) -> list[Any]:
        paths = rec.get("images") or []
        n_placeholders = sum(t.get("value", "").count(IMAGE_TOKEN) for t in rec["conversations"])
        if len(paths) != n_placeholders:
            raise RecordError(
                f"record {record_id(rec)!r}: field 'images': {len(paths)} image(s) "
                f"but {n_placeholders} {IMAGE_TOKEN} placeholder(s)"
            )
        return [
            load_image(resolve_image(root, p, rid=record_id(rec), field=f"images[{k}]"))
            for k, p in enumerate(paths)
        ]

    # ------------------------------------------------------------------ batch
    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        recs, encs, images = [], [], []
        for feature in features:
            rec, root = self._unpack(feature)
            recs.append(rec)
            encs.append(self.encode(rec, root))
            images.append(self.images(rec, root))
        kwargs: dict[str, Any] = {
            "padding": True,
            "padding_side": "right",
            "add_special_tokens": False,
            "return_tensors": "pt",
        }
        if self.pad_to_multiple_of:
            kwargs["pad_to_multiple_of"] = self.pad_to_multiple_of
        # one image list per prompt: processors that count images per prompt (Gemma 3)
        # need it, and the others give the same tensors as with a flat list
        batch = self.processor(
            text=[e.text for e in encs], images=images if any(images) else None, **kwargs
        )
        input_ids = batch["input_ids"]
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for b, (enc, n) in enumerate(zip(encs, lengths, strict=True)):
            tail_ids = enc.ids[enc.first :]
            start = n - len(tail_ids)
            if start < 0 or input_ids[b, start:n].tolist() != list(tail_ids):
                raise RecordError(
                    f"record {record_id(recs[b])!r}: the processor's token ids do not end with the "
                    f"assistant tokens (images after an assistant turn are not supported)"
                )
            tail_loss = torch.tensor(enc.loss[enc.first :], dtype=torch.bool)
            labels[b, start:n] = torch.where(
                tail_loss, input_ids[b, start:n], torch.tensor(IGNORE_INDEX)
            )
        batch["labels"] = labels
        if self.max_length and input_ids.shape[1] > self.max_length:
            batch = self._truncate(batch, recs)
        return dict(batch)

    def _truncate(self, batch: Any, recs: list[dict[str, Any]]) -> Any:
        """Cut the tail beyond ``max_length``; never cut image placeholder tokens."""
        import torch

        cut = self.max_length
        assert cut is not None
        dropped = batch["input_ids"][:, cut:]
        for b in range(dropped.shape[0]):
            if any(int(t) in self.image_token_ids for t in dropped[b].tolist()):
                raise RecordError(
                    f"record {record_id(recs[b])!r}: max_length {cut} would cut image tokens; "
                    f"raise train.max_length"
                )
        if not self._warned_truncation:
            log.warning(
                "truncating batch from %d to max_length=%d tokens (answer tails lose their loss)",
                batch["input_ids"].shape[1],
                cut,
            )
            self._warned_truncation = True
        seq = batch["input_ids"].shape[1]
        for key, value in list(batch.items()):
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == seq:
                batch[key] = value[:, :cut]
        return batch

    # ------------------------------------------------------------------ lengths
    def estimate_length(self, rec: Mapping[str, Any], root: Path, tokens_per_image: int) -> int:
        """Unexpanded text tokens + image expansion: for length-grouped batching."""
        enc = self.encode(rec, root)
        n_images = len(rec.get("images") or [])
        return len(enc.ids) + n_images * max(tokens_per_image - 1, 0)


def tokens_per_image(processor: Any, image_size: int = 64) -> int:
    """How many tokens one ``<image>`` expands to (measured once through the processor)."""
    from PIL import Image

    messages = prompt_messages("x", 1)
    text = _render(processor, messages, generation=True)
    img = Image.new("RGB", (image_size, image_size))
    with_image = processor(text=[text], images=[img], add_special_tokens=False)
    plain = _tokenizer(processor)(text, add_special_tokens=False)
    return len(with_image["input_ids"][0]) - len(plain["input_ids"]) + 1


def reset_tokenizer_state(processor: Any) -> None:
    """Clear the padding / truncation a fast tokenizer's backend keeps from its last call.

    transformers leaves them set after any padded call, and ``save_pretrained`` writes
    them into ``tokenizer.json``: with ``train.preprocess: once`` a cold cache tokenizes
    (padded) and a warm one does not, so the saved model's bytes depended on the cache.
    Every call passes its own padding, so the saved state is never read.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "no_padding"):
        backend.no_padding()
        backend.no_truncation()
