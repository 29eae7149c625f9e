"""``train.compile``: the decoder layers under torch.compile train to the eager model."""

import pytest
import torch

from sft_world import run_sft_stage, sft_cfg, state_file


@pytest.mark.slow
def test_compiled_training_reaches_the_eager_model(sft_world, tmp_path):
    # the speed options it is meant for: packed rows through mirage_varlen (a graph break
    # per layer at the position resets) and labelled-only logits; inductor's C++ kernels
    # (a cold compile is most of this test's time)
    from torch._dynamo.utils import counters

    cfg = {
        "method": "full",
        "max_steps": 4,
        "save_steps": 100,
        "packing": True,
        "labelled_logits": True,
    }
    eager = run_sft_stage(sft_world, tmp_path / "eager", sft_cfg(**cfg))
    counters.clear()
    compiled = run_sft_stage(sft_world, tmp_path / "compiled", sft_cfg(**cfg, compile=True))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled the layers
    assert not counters["recompiles"]  # dynamic shapes: one compile for every row length
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], abs=1e-5)
    a, b = (
        state_file(tmp_path / run / "model" / "model.safetensors") for run in ("eager", "compiled")
    )
    assert a.keys() == b.keys()  # in place: no "_orig_mod." in the saved names
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_compile_is_undone_after_training_and_finds_peft_layers(sft_world):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mirage_safety.training.compile import compiled_decoder_layers, decoder_layers

    model = AutoModelForImageTextToText.from_pretrained(sft_world["base"])
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    layers = decoder_layers(lora)
    assert layers is model.model.language_model.layers
    with compiled_decoder_layers(lora) as n:
        assert n == len(layers)
        assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in layers)


def test_compile_names_what_is_missing(sft_world, monkeypatch):
    import torch._inductor.config as inductor_config

    from mirage_safety.training.compile import (
        CompileError,
        compiled_decoder_layers,
        decoder_layers,
    )

    with pytest.raises(CompileError, match="no decoder layers found on Linear"):
        decoder_layers(torch.nn.Linear(2, 2))
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(sft_world["base"])
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    with (
        pytest.raises(CompileError, match="needs a C\\+\\+ compiler"),
        compiled_decoder_layers(model),
    ):
        pass
    # nothing was left compiled by the refusal
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
