"""Registry by reference: a registered version holds a pointer to its DVC-tracked weights;
loading it in a fresh directory fetches them through a (local-directory) DVC remote and
checks their md5; a tampered remote object fails clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mirage_safety.config import BuiltinModelConfig
from mirage_safety.models.folder import ModelDirError
from mirage_safety.registry.register import register
from mirage_safety.registry.weights_ref import REF_FILE, WeightsReferenceError
from registry_fixtures import (
    clean_env,
    eval_json,
    make_params,
    reset_mlflow,
    world_corpus,
    write_images,
)

pytestmark = pytest.mark.slow
# ~2.3M parameters: ~9 MB of weights, enough for the copy / reference sizes to differ
BIGGER = BuiltinModelConfig(
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    patch_size=16,
    text_hidden=256,
    text_layers=2,
    text_heads=4,
    intermediate_size=1024,
    vocab_size=400,
)


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    """A git + DVC repo whose `train` stage output is the model, pushed to a local remote."""
    import torch

    from mirage_safety.models.tiny_vlm import build_tiny_vlm, save_tiny_vlm

    clean_env(monkeypatch)
    reset_mlflow()
    model, processor = build_tiny_vlm(world_corpus(), BIGGER, 32, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight[processor.tokenizer.all_special_ids] = 0.0
    trained = save_tiny_vlm(model, processor, tmp_path / "trained")
    root = tmp_path / "repo"
    root.mkdir()
    dvc = str(Path(sys.executable).with_name("dvc"))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        [dvc, "init", "-q"],
        [dvc, "remote", "add", "-d", "store", str(tmp_path / "remote")],
    ):
        _run(cmd, root)
    (root / "dvc.yaml").write_text(
        json.dumps(
            {
                "stages": {
                    "train": {
                        "cmd": f"mkdir -p models && cp -r {trained} models/mirage",
                        "outs": ["models/mirage"],
                    }
                }
            }
        )
    )
    (root / ".gitignore").write_text("mlflow.db*\nmlruns/\n")
    _run([dvc, "repro", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "trained"], root)
    _run([dvc, "push", "-q"], root)
    monkeypatch.chdir(root)
    yield root
    reset_mlflow()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _query(tmp_path: Path) -> pd.DataFrame:
    img1, img2 = write_images(tmp_path / "imgs")[:2]
    return pd.DataFrame(
        {"question": ["What do the two images show?"], "images": [[str(img1), str(img2)]]}
    )


@pytest.mark.slow
def test_a_reference_version_is_small_loads_anywhere_and_refuses_tampered_weights(
    repo, tmp_path, monkeypatch
):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "eval.json").write_text(json.dumps(eval_json()))
    ref = register(
        make_params(store, store="reference"),
        eval_path=tmp_path / "eval.json",
        model_dir=repo / "models" / "mirage",
        out_path=None,
    )
    copy = register(
        make_params(store, store="copy"),
        eval_path=tmp_path / "eval.json",
        model_dir=repo / "models" / "mirage",
        out_path=None,
    )
    assert ref["weights"]["store"] == "reference" and copy["weights"]["store"] == "copy"
    assert ref["weights"]["path"] == "models/mirage"
    assert ref["weights"]["dir_md5"].endswith(".dir")
    mlflow.set_tracking_uri(store)
    ref_art = Path(
        mlflow.artifacts.download_artifacts(ref["model_uri"], dst_path=str(tmp_path / "a-ref"))
    )
    copy_art = Path(
        mlflow.artifacts.download_artifacts(copy["model_uri"], dst_path=str(tmp_path / "a-copy"))
    )
    assert _size(ref_art) < 1 << 20 < 5 * (1 << 20) < _size(copy_art)
    assert not list(ref_art.rglob("*.safetensors"))
    pointer = json.loads((ref_art / "artifacts" / "model" / REF_FILE).read_text())
    assert set(pointer["files"]) == {"model.safetensors"}
    version = mlflow.MlflowClient().get_model_version("mirage", str(ref["version"]))
    assert version.tags["weights.store"] == "reference"

    # a fresh directory, no DVC cache and no workspace copy: only the remote has the weights
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "models")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    monkeypatch.setenv("MIRAGE_WEIGHTS_CACHE", str(tmp_path / "weights-cache"))
    query = _query(tmp_path)
    by_ref = mlflow.pyfunc.load_model(ref["model_uri"]).predict(query)
    by_copy = mlflow.pyfunc.load_model(copy["model_uri"]).predict(query)
    assert list(by_ref["response"]) == list(by_copy["response"])
    assert by_ref["response"][0]
    # fetched into the weights cache, never into the registered artefact
    assert list((tmp_path / "weights-cache").rglob("model.safetensors"))
    assert not list((repo / "mlruns").rglob("*/model_dir*/model.safetensors"))
    local = Path(mlflow.artifacts.download_artifacts(ref["model_uri"]))
    assert not list(local.rglob("*.safetensors"))

    # tamper with the object in the remote: loading refuses it, naming the file
    md5 = pointer["files"]["model.safetensors"]
    obj = tmp_path / "remote" / "files" / "md5" / md5[:2] / md5[2:]
    assert obj.is_file()
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-64] + b"\0" * 64)
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo / "models", ignore_errors=True)
    monkeypatch.setenv("MIRAGE_WEIGHTS_CACHE", str(tmp_path / "other-machine"))
    with pytest.raises(ModelDirError, match=r"models/mirage/model\.safetensors"):
        mlflow.pyfunc.load_model(ref["model_uri"])


@pytest.mark.slow
def test_reference_needs_a_committed_dvc_out_and_a_remote(repo, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "eval.json").write_text(json.dumps(eval_json()))
    loose = repo / "loose"
    shutil.copytree(repo / "models" / "mirage", loose)
    with pytest.raises(WeightsReferenceError, match="not a DVC out"):
        register(
            make_params(store, store="reference"),
            eval_path=tmp_path / "eval.json",
            model_dir=loose,
            out_path=None,
        )
    dvc = str(Path(sys.executable).with_name("dvc"))
    _run([dvc, "remote", "remove", "store"], repo)
    with pytest.raises(WeightsReferenceError, match="no DVC remote"):
        register(
            make_params(store, store="reference"),
            eval_path=tmp_path / "eval.json",
            model_dir=repo / "models" / "mirage",
            out_path=None,
        )
    # auto: a model under registry.reference_above_mb is copied
    result = register(
        make_params(store, reference_above_mb=1000.0),
        eval_path=tmp_path / "eval.json",
        model_dir=repo / "models" / "mirage",
        out_path=None,
    )
    assert result["weights"] == {"store": "copy"}
