"""ChatCollator: only assistant answers (+ their end-of-turn token) carry loss."""

import json
from pathlib import Path

import pytest
import torch

from mirage_safety.config import parse_params
from mirage_safety.data.chat import RecordError
from mirage_safety.data.generate import generate
from mirage_safety.training.collator import IGNORE_INDEX, ChatCollator
from sft_world import IMAGE_SIZE, TINY

WORLD = {
    "image_size": IMAGE_SIZE,
    "n_train": 24,
    "n_test_per_split": 4,
    "n_general_train": 12,
    "n_general_test": 4,
    "n_instruct": 4,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collator") / "data"
    generate(parse_params({"data": {"world": WORLD}}).data, out, workers=1, progress=False)
    return out


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def processor(data_dir):
    from mirage_safety.models.tiny_vlm import build_processor, train_tokenizer

    torch.set_num_threads(1)
    corpus = [
        turn["value"].replace("<image>", " ")
        for name in ("mis/train.json", "general/train.json")
        for rec in _records(data_dir / name)
        for turn in rec["conversations"]
    ]
    return build_processor(train_tokenizer(corpus, TINY.vocab_size), TINY, IMAGE_SIZE)


def _answers(rec: dict) -> list[str]:
    return [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]


def _labelled(processor, batch, b: int) -> str:
    ids, labels = batch["input_ids"][b], batch["labels"][b]
    keep = labels != IGNORE_INDEX
    assert torch.equal(labels[keep], ids[keep])  # labelled positions predict their own token
    return processor.tokenizer.decode(ids[keep], skip_special_tokens=False)


def test_only_answer_and_end_of_turn_carry_loss(processor, data_dir):
    safety = _records(data_dir / "mis/train.json")[:2]
    general = _records(data_dir / "general/train.json")[:1]  # a short answer: padded row
    features = [{"record": r, "root": str(data_dir / "mis")} for r in safety]
    features += [{"record": json.dumps(r), "root": str(data_dir / "general")} for r in general]
    batch = ChatCollator(processor)(features)

    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    per_image = (IMAGE_SIZE // TINY.patch_size) ** 2
    assert batch["pixel_values"].shape[0] == 6  # two images per record, in order
    for b, rec in enumerate([*safety, *general]):
        (answer,) = _answers(rec)
        assert _labelled(processor, batch, b) == answer + "</s>"
        ids, labels, mask = batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b]
        is_image = ids == image_id
        assert int(is_image.sum()) == 2 * per_image
        assert (labels[is_image] == IGNORE_INDEX).all()
        assert (labels[mask == 0] == IGNORE_INDEX).all()  # right padding never trains
        # the prompt (bos, role markers, question) before the answer is masked
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        prompt = processor.tokenizer.decode(ids[:first])
        assert prompt.startswith("<s><|user|><image>") and prompt.endswith("<|assistant|>")
    # dynamic padding: the batch is as long as its longest row, not a fixed max length
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
    assert int(batch["attention_mask"][2].sum()) < batch["input_ids"].shape[1]


def test_multi_turn_labels_every_answer(processor, data_dir):
    rec = _records(data_dir / "mis/train.json")[0]
    first_q, first_a = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
    rec = {
        **rec,
        "conversations": [
            {"from": "human", "value": first_q},
            {"from": "gpt", "value": first_a},
            {"from": "human", "value": "What is in the second image?"},
            {"from": "gpt", "value": "A bike lock."},
        ],
    }
    batch = ChatCollator(processor, root=data_dir / "mis")([rec])
    assert _labelled(processor, batch, 0) == first_a + "</s>" + "A bike lock." + "</s>"
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "What is in the second image?" in text  # present, but not labelled (above)


def test_template_with_newline_after_end_of_turn(processor, data_dir):
    """A ChatML-like template (newline after the end-of-turn token): the newline and the
    role header never carry loss."""
    from mirage_safety.models.tiny_vlm import build_processor

    chatml = build_processor(processor.tokenizer, TINY, IMAGE_SIZE)
    chatml.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + '\n' }}"
        "{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>' }}"
        "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{{ '</s>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' + '\n' }}{% endif %}"
    )
    rec = _records(data_dir / "mis/train.json")[1]
    batch = ChatCollator(chatml, root=data_dir / "mis")([rec])
    assert _labelled(chatml, batch, 0) == _answers(rec)[0] + "</s>"


def test_image_count_mismatch_names_the_record(processor, data_dir):
    rec = _records(data_dir / "mis/train.json")[0]
    bad = {**rec, "id": "bad-count", "images": rec["images"][:1]}
    with pytest.raises(RecordError, match=r"bad-count.*1 image\(s\) but 2 <image>"):
        ChatCollator(processor, root=data_dir / "mis")([bad])


@pytest.mark.parametrize("path", ["../general/images/x.png", "/etc/passwd"])
def test_image_path_escaping_the_root_is_refused(processor, data_dir, path):
    rec = _records(data_dir / "mis/train.json")[0]
    bad = {**rec, "id": "escape", "images": [rec["images"][0], path]}
    with pytest.raises(RecordError, match=r"escape.*images\[1\].*escapes the dataset root"):
        ChatCollator(processor, root=data_dir / "mis")([bad])


def test_max_length_never_cuts_image_tokens(processor, data_dir):
    rec = _records(data_dir / "mis/train.json")[0]
    with pytest.raises(RecordError, match="max_length 20 would cut image tokens"):
        ChatCollator(processor, root=data_dir / "mis", max_length=20)([rec])


def test_qwen2_vl_processor_expands_images_and_only_answers_carry_loss(data_dir):
    """A Hub-style processor that expands each image into a grid-dependent number of
    <|image_pad|> tokens (Qwen2-VL's, built locally: its PIL image processor, a tokenizer
    with Qwen's special tokens and the published chat template): the same collator labels
    exactly the answer + <|im_end|>, no image token, and a Qwen2-VL model trains on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    # as published with Qwen/Qwen2-VL-*-Instruct: a system turn is added, each image becomes
    # <|vision_start|><|image_pad|><|vision_end|>, turns end with <|im_end|> and a newline
    from mirage_safety.models.tiny_hub import QWEN2_VL_TEMPLATE

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        # the video processor needs torchvision, which CPU installs here do not have
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    recs = _records(data_dir / "mis/train.json")[:3]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [t["value"] for r in recs for t in r["conversations"]],
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=special,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=special[1:],
    )
    merge = 2
    proc = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            min_pixels=56 * 56, max_pixels=56 * 56, merge_size=merge
        ),
        tokenizer=tok,
        chat_template=QWEN2_VL_TEMPLATE,
    )

    batch = ChatCollator(proc, root=data_dir / "mis")(recs[:2])
    grids = batch["image_grid_thw"]
    assert grids.shape == (4, 3)  # two images per record
    per_image = [int(g.prod()) // merge**2 for g in grids]  # patches merged 2x2 per token
    assert min(per_image) > 1
    for b, rec in enumerate(recs[:2]):
        ids, labels = batch["input_ids"][b], batch["labels"][b]
        is_image = ids == proc.image_token_id
        assert int(is_image.sum()) == per_image[2 * b] + per_image[2 * b + 1]
        assert not (labels[is_image] != IGNORE_INDEX).any()
        assert _labelled(proc, batch, b) == _answers(rec)[0] + "<|im_end|>"

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "bos_token_id": None,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "in_chans": 3,
        },
        image_token_id=proc.image_token_id,
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.lm_head.weight.grad is not None


def test_saved_tokenizer_does_not_depend_on_the_last_padded_call(processor, tmp_path):
    # a padded call leaves padding set on the fast tokenizer's backend, and save_pretrained
    # wrote it into tokenizer.json: a cold preprocessing cache gave other model bytes
    from mirage_safety.training.collator import reset_tokenizer_state

    def saved(name: str) -> bytes:
        processor.save_pretrained(tmp_path / name)
        return (tmp_path / name / "tokenizer.json").read_bytes()

    reset_tokenizer_state(processor)
    clean = saved("clean")
    processor.tokenizer(["a b", "a"], padding=True, truncation=True, max_length=8)
    assert saved("padded") != clean  # the leak this guards against
    reset_tokenizer_state(processor)
    assert saved("reset") == clean
    assert json.loads(clean)["padding"] is None
