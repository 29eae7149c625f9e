"""The registered MIRage model: an ``mlflow.pyfunc`` wrapper around a trained VLM directory.

What the registry stores is the final model only -- the ``models/mirage`` directory
(full weights, or a LoRA adapter plus the base it applies to), minus trainer checkpoints
and optimizer state -- so ``mlflow.pyfunc.load_model("models:/mirage@champion")`` is
self-contained (the ``mirage_safety`` package travels with it as ``code_paths``).  It is
logged as *models-from-code* (:mod:`.pyfunc_entry`, settings in ``model_config``): nothing
in the artefact is a pickled Python object, so loading it never unpickles code.

Input (a DataFrame, one row per query):

* ``question`` (str) -- the text turn;
* ``images`` (list of str) -- one entry per image, in order; each a file path,
  base64-encoded PNG/JPEG bytes, or a data URL (``data:image/png;base64,...``);
* or, instead of ``images``, one column per image: ``image1``, ``image2``, ... (the MIS
  layout's ``image_path1`` / ``image_path2`` renamed); a row uses the ones it fills.

Params: ``max_new_tokens`` (long), ``batch_size`` (long).  Output: a DataFrame with one
string column ``response``.  Decoding is :func:`mirage_safety.models.inference.
generate_responses` (batched greedy), the one decoding path ``mirage evaluate`` uses, so a
served answer equals the evaluated one.

Model directory layout (written by the train stage; the conventions of
:mod:`mirage_safety.models.loading`, which does the loading): ``mirage_model.json`` =
``{"base_path": ..., "method": "full" | "lora", ...}``.  ``method: lora`` means the
directory holds a PEFT adapter for the model at ``base_path`` (a checkpoint or a Hub pin
dir); that base directory is packaged as a second artefact (a pin dir is tiny: its weights
come from the Hub at load time) and the adapter is merged at load time.  Without
``mirage_model.json`` the directory is a full checkpoint that
``AutoModelForImageTextToText`` / ``AutoProcessor`` load.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc

# by name: mlflow's __init__ binds ``mlflow.pyfunc`` to a lazy loader that type checkers
# cannot see through (``mlflow.pyfunc.PythonModel`` is no type to them); the same class
from mlflow.pyfunc import PythonModel

from mirage_safety.models.folder import (
    MODEL_META_FILE,
    ModelDirError,
    find_base,
    read_model_meta,
)
from mirage_safety.models.inference import generate_responses
from mirage_safety.models.loading import load_for_inference
from mirage_safety.registry.weights_ref import is_reference, materialize, write_pointer

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo
    from mlflow.pyfunc import PythonModelContext
    from PIL import Image

MODEL_ARTIFACT = "model_dir"
BASE_ARTIFACT = "base_dir"
QUESTION_COLUMN = "question"
IMAGES_COLUMN = "images"
INPUT_COLUMNS = (QUESTION_COLUMN, IMAGES_COLUMN)
#: one column per image, the alternative to ``images`` (``image1``, ``image2``, ...)
IMAGE_COLUMNS = tuple(f"image{k}" for k in range(1, 5))
OUTPUT_COLUMN = "response"
DEFAULT_MAX_NEW_TOKENS = 96
DEFAULT_BATCH_SIZE = 8
# Never copied into the registry: trainer checkpoints and their optimizer/scheduler/RNG
# state, TensorBoard logs, temp/hidden files.  DVC versions those; the registry holds
# only what serving needs.
EXCLUDE_PATTERNS = (
    "checkpoint-*",
    "checkpoints",
    "runs",
    "optimizer.pt",
    "optimizer.bin",
    "scheduler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
    "*.tmp",
    ".*",
    "__pycache__",
)
# Distributions the served model needs, pinned to the versions it was logged with.
_RUNTIME_DISTS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "peft",
    "accelerate",
    "pillow",
    "numpy",
    "pandas",
    "pydantic",
    "pyyaml",
    "tqdm",
)
_MAX_PATH_LEN = 4096  # longer strings cannot be paths: treat as base64 without a stat


def decode_image(value: Any, *, row: int, index: int = 0) -> Image.Image:
    """A file path, base64 PNG/JPEG or data URL -> RGB PIL image (errors name row + image)."""
    from PIL import Image, UnidentifiedImageError

    where = f"row {row}, images[{index}]"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{where}: expected a file path or base64 image string, got {type(value).__name__}"
        )
    text = value.strip()
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if ";base64" not in header or not payload:
            raise ValueError(f"{where}: data URL must be 'data:image/...;base64,<data>'")
        text = payload
    elif len(text) < _MAX_PATH_LEN and Path(text).is_file():
        try:
            with Image.open(text) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{where}: {text!r} is not a readable image: {exc}") from None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(
            f"{where}: {shown!r} is neither an existing file nor base64 image data"
        ) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{where}: base64 data is not a PNG/JPEG image: {exc}") from None


def encode_image(path: str | os.PathLike[str]) -> str:
    """Base64 text of an image file (what a remote client sends)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _image_list(value: Any, row: int) -> list[Any]:
    """The ``images`` cell: a list / array / tuple of strings (a lone string = one image)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        if items:
            return items
    raise ValueError(
        f"row {row}, column {IMAGES_COLUMN!r}: expected a non-empty list of image "
        f"paths or base64 strings, got {type(value).__name__}"
    )


def _filled(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def parse_queries(model_input: pd.DataFrame) -> list[tuple[str, list[Image.Image]]]:
    """DataFrame rows -> ``(question, [PIL images])`` prompts for ``generate_responses``."""
    columns = set(model_input.columns)
    per_image = [c for c in IMAGE_COLUMNS if c in columns]
    if QUESTION_COLUMN not in columns or not (IMAGES_COLUMN in columns or per_image):
        raise ValueError(
            f"model input has columns {sorted(columns)}; expected "
            f"{QUESTION_COLUMN!r} and either {IMAGES_COLUMN!r} (a list) or "
            f"{', '.join(repr(c) for c in IMAGE_COLUMNS[:2])}, ..."
        )
    prompts = []
    for i, row in enumerate(model_input.to_dict("records")):
        question = row.get(QUESTION_COLUMN)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"row {i}, column {QUESTION_COLUMN!r}: expected a non-empty string")
        listed = row.get(IMAGES_COLUMN)
        if (
            IMAGES_COLUMN in columns
            and listed is not None
            and not (isinstance(listed, float) and listed != listed)
        ):  # NaN: column unused here
            values = _image_list(listed, i)
        else:
            values = [row[c] for c in per_image if _filled(row.get(c))]
            if not values:
                raise ValueError(
                    f"row {i}: no image (fill {IMAGES_COLUMN!r} or {', '.join(per_image)})"
                )
        images = [decode_image(v, row=i, index=k) for k, v in enumerate(values)]
        prompts.append((question, images))
    return prompts


# --------------------------------------------------------------------------- pyfunc
class MiragePyfuncModel(PythonModel):
    """Answers multi-image safety queries with the packaged VLM (greedy decoding)."""

    def __init__(
        self,
        default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        default_batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.default_max_new_tokens = default_max_new_tokens
        self.default_batch_size = default_batch_size

    def load_context(self, context: PythonModelContext) -> None:
        config = getattr(context, "model_config", None) or {}
        self.default_max_new_tokens = int(config.get("max_new_tokens", self.default_max_new_tokens))
        self.default_batch_size = int(config.get("batch_size", self.default_batch_size))

        artifacts = context.artifacts
        model_dir = Path(artifacts[MODEL_ARTIFACT])
        if is_reference(model_dir):  # registered by reference: fetch the weights through DVC
            model_dir = materialize(model_dir)
        self.model, self.processor = load_for_inference(
            model_dir, base_dir=artifacts.get(BASE_ARTIFACT)
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        import pandas as pd

        params = params or {}
        max_new = int(params.get("max_new_tokens") or self.default_max_new_tokens)
        batch_size = int(params.get("batch_size") or self.default_batch_size)
        prompts = parse_queries(model_input)
        responses = generate_responses(
            self.model,
            self.processor,
            prompts,
            batch_size=batch_size,
            max_new_tokens=max_new,
            progress=False,
        )
        return pd.DataFrame({OUTPUT_COLUMN: [str(r) for r in responses]})


def build_signature(
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE
) -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, QUESTION_COLUMN),
                ColSpec(Array(DataType.string), IMAGES_COLUMN, required=False),
                *(ColSpec(DataType.string, c, required=False) for c in IMAGE_COLUMNS),
            ]
        ),
        outputs=Schema([ColSpec(DataType.string, OUTPUT_COLUMN)]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", DataType.long, max_new_tokens),
                ParamSpec("batch_size", DataType.long, batch_size),
            ]
        ),
    )


def pip_requirements() -> list[str]:
    """The runtime dists pinned to this environment's versions (reproducible serving)."""
    reqs = []
    for dist in _RUNTIME_DISTS:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def stage_model_dir(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` without checkpoints, optimizer state and hidden/temp files."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*EXCLUDE_PATTERNS))
    return dst


def check_model_dir(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Fail early (before any MLflow run) on a directory that cannot be packaged."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found (run `mirage train` first)")
    meta = read_model_meta(model_dir)
    if meta is None and not (model_dir / "config.json").is_file():
        raise ModelDirError(
            f"{model_dir}: neither {MODEL_META_FILE} nor a full checkpoint (config.json) found"
        )
    if meta is not None and meta["method"] == "lora":
        find_base(meta, model_dir)
    return meta


def log_pyfunc_model(
    model_dir: str | os.PathLike[str],
    *,
    name: str = "model",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    registered_model_name: str | None = None,
    tags: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> ModelInfo:
    """Log ``model_dir`` as a pyfunc model in the active run (checkpoints excluded).

    ``reference`` (:func:`mirage_safety.registry.weights_ref.make_pointer`): log the
    pointer instead of the weight files (registry by reference).

    With ``registered_model_name`` MLflow also registers a new version.  Returns the
    ``ModelInfo`` (``.model_uri`` is what :func:`mlflow.register_model` takes).
    """

    model_dir = Path(model_dir)
    meta = check_model_dir(model_dir)
    package_dir = Path(__file__).resolve().parents[1]  # src/mirage_safety
    with tempfile.TemporaryDirectory(prefix="mirage-pyfunc-") as tmp:
        code = Path(tmp) / "code" / package_dir.name
        shutil.copytree(package_dir, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        artifacts = {MODEL_ARTIFACT: str(stage_model_dir(model_dir, Path(tmp) / "model"))}
        if reference is not None:
            write_pointer(Path(artifacts[MODEL_ARTIFACT]), reference)
        if meta is not None and meta["method"] == "lora":
            base = find_base(meta, model_dir)
            if isinstance(base, Path):  # a Hub id (no local base) is fetched at load time
                artifacts[BASE_ARTIFACT] = str(stage_model_dir(base, Path(tmp) / "base"))
        with warnings.catch_warnings():
            # an input example would make MLflow load and run the whole model once more at
            # logging time; the explicit signature documents the input instead
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            return _log(
                name, max_new_tokens, batch_size, artifacts, code, registered_model_name, tags
            )


def _log(
    name: str,
    max_new_tokens: int,
    batch_size: int,
    artifacts: dict[str, str],
    code: Path,
    registered_model_name: str | None,
    tags: dict[str, Any] | None,
) -> ModelInfo:
    return mlflow.pyfunc.log_model(
        name=name,
        # models-from-code: the entry file is logged and run at load time; nothing pickled
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        model_config={"max_new_tokens": max_new_tokens, "batch_size": batch_size},
        artifacts=artifacts,
        signature=build_signature(max_new_tokens, batch_size),
        # the package travels with the model so load_model works outside this repo
        code_paths=[str(code)],
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
        tags=tags,
    )
