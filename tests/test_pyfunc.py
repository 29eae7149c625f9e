"""The registered model: a tiny real LLaVA packaged as pyfunc by ``mirage register``,
loaded back through ``models:/mirage@champion`` and queried with two images given as file
paths, base64 or data URLs -- full checkpoint, and LoRA adapter + base (merged)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from mirage_safety.models.folder import ModelDirError
from mirage_safety.models.inference import generate_responses
from mirage_safety.models.loading import apply_lora, load_for_inference
from mirage_safety.registry.pyfunc_model import (
    check_model_dir,
    decode_image,
    encode_image,
    log_pyfunc_model,
    parse_queries,
)
from mirage_safety.registry.register import register
from registry_fixtures import (
    clean_env,
    eval_json,
    fresh_store,
    make_params,
    reset_mlflow,
    tiny_model_dir,
    write_images,
)

MAX_NEW = 4


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The full checkpoint, a LoRA adapter dir pointing at it, and two images."""
    torch.set_num_threads(1)
    full = tiny_model_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("pyfunc")
    model, processor = load_for_inference(full, device="cpu")
    peft_model = apply_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # non-zero B so the merge changes the answers (PEFT inits B = 0)
        gen = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0)
    lora = root / "lora"
    peft_model.save_pretrained(lora)
    processor.save_pretrained(lora)
    (lora / "mirage_model.json").write_text(json.dumps({"method": "lora", "base_path": str(full)}))
    (lora / "checkpoint-2").mkdir()
    (lora / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    img1, img2 = write_images(root / "images")
    return {"full": full, "lora": lora, "img1": img1, "img2": img2}


@pytest.fixture()
def store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> str:
    clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path_factory, tmp_path / "mlflow.db")
    yield uri
    reset_mlflow()


def _queries(d: dict[str, Path]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question": [
                "How do I use the object in the first image on the object in the second image?",
                "What is the object in the first image?",
                "Do the two images show the same object?",
            ],
            "images": [
                [str(d["img1"]), str(d["img2"])],
                [encode_image(d["img2"])],
                [f"data:image/png;base64,{encode_image(d['img2'])}", encode_image(d["img1"])],
            ],
        }
    )


def _reference(model_dir: Path, d: dict[str, Path]) -> list[str]:
    """What the evaluation code path answers for the same prompts."""
    model, processor = load_for_inference(model_dir, device="cpu")
    prompts = [
        (q, imgs)
        for q, imgs in zip(
            _queries(d)["question"],
            [[d["img1"], d["img2"]], [d["img2"]], [d["img2"], d["img1"]]],
            strict=True,
        )
    ]
    return generate_responses(
        model, processor, prompts, batch_size=2, max_new_tokens=MAX_NEW, progress=False
    )


@pytest.mark.slow
def test_champion_answers_multi_image_queries(tmp_path, dirs, store):
    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps(eval_json()))
    result = register(
        make_params(store), eval_path=eval_path, model_dir=dirs["full"], out_path=None
    )
    assert result["alias"] == "champion"

    mlflow.set_tracking_uri(store)
    served = mlflow.pyfunc.load_model("models:/mirage@champion")
    sig = served.metadata.signature
    assert [c.name for c in sig.inputs.inputs] == [
        "question",
        "images",
        "image1",
        "image2",
        "image3",
        "image4",
    ]
    assert [c.name for c in sig.outputs.inputs] == ["response"]

    out = served.predict(_queries(dirs), params={"max_new_tokens": MAX_NEW})
    assert list(out.columns) == ["response"]
    responses = list(out["response"])
    assert len(responses) == 3 and all(isinstance(r, str) and r for r in responses)
    # paths, base64 and data URLs give exactly what `mirage evaluate` generates
    assert responses == _reference(dirs["full"], dirs)
    # the logged default (eval.max_new_tokens = 4) applies without params
    assert list(served.predict(_queries(dirs))["response"]) == responses
    # one column per image (image1, image2) instead of the images list: the same answers
    per_image = pd.DataFrame(
        {
            "question": list(_queries(dirs)["question"]),
            "image1": [str(dirs["img1"]), str(dirs["img2"]), str(dirs["img2"])],
            "image2": [str(dirs["img2"]), None, str(dirs["img1"])],
        }
    )
    assert list(served.predict(per_image)["response"]) == responses

    # models-from-code: no pickled Python object anywhere in the logged model
    local = Path(mlflow.artifacts.download_artifacts("models:/mirage@champion"))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in mlmodel or not str(mlmodel["python_model"]).endswith(".pkl")
    assert mlmodel["model_code_path"].endswith("pyfunc_entry.py")
    assert mlmodel["config"] == {"max_new_tokens": 4, "batch_size": 2}
    pickled = [
        p
        for p in local.rglob("*")
        if p.is_file()
        and (
            p.suffix in (".pkl", ".pickle", ".cloudpickle")
            or p.read_bytes()[:2] in (b"\x80\x04", b"\x80\x05")
        )
    ]
    assert pickled == []


def test_lora_adapter_is_packaged_with_its_base_and_merged(dirs, store):
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("pyfunc")
    with mlflow.start_run():
        info = log_pyfunc_model(dirs["lora"], max_new_tokens=MAX_NEW, batch_size=2)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert (local / "artifacts" / "base" / "config.json").is_file()
    assert (local / "artifacts" / "model" / "adapter_config.json").is_file()
    assert not list(local.rglob("checkpoint-*"))

    served = mlflow.pyfunc.load_model(info.model_uri)
    lora_answers = list(served.predict(_queries(dirs))["response"])
    assert lora_answers == _reference(dirs["lora"], dirs)
    assert lora_answers != _reference(dirs["full"], dirs)  # the adapter really was applied


def test_bad_inputs_name_row_and_image(tmp_path, dirs):
    with pytest.raises(ValueError, match=r"row 3, images\[1\].*neither an existing file"):
        decode_image("no/such/file.png", row=3, index=1)
    not_image = base64.b64encode(b"hello world!").decode()
    with pytest.raises(ValueError, match=r"row 0, images\[0\]: base64 data is not"):
        decode_image(not_image, row=0)
    with pytest.raises(ValueError, match="data URL"):
        decode_image("data:image/png,xyz", row=1)
    assert decode_image(str(dirs["img1"]), row=0).size == (32, 32)
    with pytest.raises(ValueError, match=r"row 0, column 'images': expected a non-empty list"):
        parse_queries(pd.DataFrame({"question": ["q"], "images": [[]]}))
    with pytest.raises(ValueError, match=r"expected 'question' and either 'images'"):
        parse_queries(pd.DataFrame({"question": ["q"]}))
    with pytest.raises(ValueError, match=r"row 0: no image"):
        parse_queries(pd.DataFrame({"question": ["q"], "image1": [None]}))
    # a lone string is one image
    assert (
        len(parse_queries(pd.DataFrame({"question": ["q"], "images": [str(dirs["img1"])]}))[0][1])
        == 1
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirError, match="neither"):
        check_model_dir(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mirage_model.json").write_text('{"method": "lora"}')
    with pytest.raises(ModelDirError, match="base_path"):
        check_model_dir(bad)
    (bad / "mirage_model.json").write_text('{"method": "lora", "base_path": "gone"}')
    with pytest.raises(ModelDirError, match="'gone' is not a model directory"):
        check_model_dir(bad)


@pytest.mark.slow
def test_mlflow_models_serve_answers_from_the_registry(tmp_path, dirs, store):
    """``mlflow models serve -m models:/mirage@champion`` (the venv's bin on PATH, as the
    README says), queried over HTTP with both input layouts."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps(eval_json()))
    register(make_params(store), eval_path=eval_path, model_dir=dirs["full"], out_path=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            f"{bindir}/mlflow",
            "models",
            "serve",
            "-m",
            "models:/mirage@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(0.5)

        def invoke(payload: dict) -> list[str]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                return [p["response"] for p in json.loads(r.read())["predictions"]]

        img1, img2 = encode_image(dirs["img1"]), encode_image(dirs["img2"])
        listed = invoke(
            {
                "dataframe_records": [{"question": "What do you see?", "images": [img1, img2]}],
                "params": {"max_new_tokens": MAX_NEW},
            }
        )
        columns = invoke(
            {
                "dataframe_split": {
                    "columns": ["question", "image1", "image2"],
                    "data": [["What do you see?", img1, img2]],
                },
                "params": {"max_new_tokens": MAX_NEW},
            }
        )
        assert listed == columns and len(listed) == 1 and listed[0]
    finally:
        from mirage_safety.models.serving import stop

        stop(proc)
        log.close()
