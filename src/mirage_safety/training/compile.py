"""Regional ``torch.compile`` of the language model's decoder layers (``train.compile``).

Why regional: compiling the whole VLM through the Trainer (``torch_compile=True``) recompiles
for every new packed-row length and breaks the graph at the image-placeholder check
(measured 0.44x).  The decoder layers are where a step's time goes, and they are all one
class, so one dynamic-shape compile serves every layer and every row length: PyTorch's
regional-compilation recipe, the one accelerate's ``compile_regions`` applies.  Inductor
fuses what eager runs op by op around the matmuls (RMSNorm, rotary, SwiGLU, residuals);
the matmuls themselves stay the same library calls.

The compile is in place (``nn.Module.compile``), so parameter names, checkpoints and the
saved model are unchanged, and it is undone on the way out, so generation after training
in the same process runs eagerly.  It costs a first step of tens of seconds (inductor
writes and builds C++ kernels; its on-disk cache makes later runs of the same model
faster): it pays on runs of hundreds of steps, not on short ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mirage_safety.models.loading import unwrap_peft


class CompileError(RuntimeError):
    """``train.compile`` cannot work on this model or machine."""


def decoder_layers(model: Any) -> Any:
    """The language model's repeated decoder blocks (an ``nn.ModuleList``), through PEFT's
    wrapper; a VLM's ``get_decoder()`` is its language model."""
    import torch

    inner = unwrap_peft(model)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise CompileError(
            f"train.compile: no decoder layers found on "
            f"{type(inner).__name__} (get_decoder().layers)"
        )
    return layers


def check_compiler() -> None:
    """Inductor builds C++ kernels on CPUs: fail before training, naming the fix."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch without this helper: inductor will say it itself
        return
    try:
        get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler and friends
        raise CompileError(
            "train.compile needs a C++ compiler for torch.compile on CPU "
            "(install g++ or set CXX), or set train.compile: false"
        ) from e


@contextmanager
def compiled_decoder_layers(model: Any) -> Iterator[int]:
    """While inside, every decoder layer runs compiled (dynamic shapes: one compile for
    all row lengths).  Yields the number of layers compiled."""
    import torch

    layers = decoder_layers(model)
    if not torch.cuda.is_available():
        check_compiler()
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            # what nn.Module.compile set: the layer's calls go to its eager forward again
            layer._compiled_call_impl = None
