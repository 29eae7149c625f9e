"""Three Hub VLM families besides the builtin LLaVA: Qwen2-VL, InternVL (transformers-native)
and Gemma 3, as tiny random-weight checkpoints laid out as Hub snapshots (`mirage tiny-hub`).

* the snapshot resolves offline through huggingface_hub, with the same commit on a rebuild;
* per family, the collator's masking: only the answer and its end-of-turn token carry loss,
  no image token does, and each image became the family's image tokens; the vision tower
  is frozen for full fine-tuning and never LoRA-wrapped;
* (slow, e2e) per family, `dvc repro` on the public-MIS-layout fixture: base pin -> train
  (full, then LoRA) -> evaluate -> register, and `models:/mirage@champion` answers a
  two-image query in a fresh process.

Torchvision is not installed here, so the Qwen2-VL and InternVL processors load without
their video processors (mirage_safety.models.families); images are unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mirage_safety.models.families import FAMILIES
from mirage_safety.models.tiny_hub import BUILDERS, repo_id, snapshot_dir, write_snapshot
from mirage_safety.training.collator import IGNORE_INDEX, ChatCollator
from realdata_fixtures import build_mis
from repo_copy import REPO, commit, copy_worktree, run

FAMILY_NAMES = list(BUILDERS)
TOKENS_PER_IMAGE = 4  # every tiny snapshot turns an image into 4 placeholder tokens


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A Hugging Face hub cache holding the three tiny snapshots: (cache, {family: commit})."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    commits = {name: write_snapshot(name, cache)[1] for name in FAMILY_NAMES}
    return cache, commits


@pytest.fixture(scope="session")
def dvc_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DVC cache for the three family repos: the data stages (same code, params and
    fixture) run once and are restored from DVC's run-cache in the other two."""
    return tmp_path_factory.mktemp("dvc-cache")


@pytest.fixture(scope="session")
def mis_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mis(tmp_path_factory.mktemp("mis-release") / "mis")


def _hf_env(cache: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "MLFLOW_", "MIRAGE_"))
    }
    env.update(
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _load(cache: Path, name: str, commit_id: str):
    from mirage_safety.models.loading import ModelSource, load_pretrained

    # huggingface_hub reads HF_HUB_CACHE at import; pass the snapshot path directly
    return load_pretrained(ModelSource(str(snapshot_dir(cache, name, commit_id))), dtype="float32")


@pytest.mark.slow
def test_snapshots_are_reproducible_and_resolve_offline(hub, tmp_path):
    cache, commits = hub
    # same family and seed -> the same bytes -> the same commit, on any machine
    assert write_snapshot("qwen2_vl", tmp_path / "again")[1] == commits["qwen2_vl"]
    assert write_snapshot("qwen2_vl", tmp_path / "seed1", seed=1)[1] != commits["qwen2_vl"]
    snap = cache / "models--mirage-tiny--gemma-3" / "snapshots" / commits["gemma3"]
    assert snap == snapshot_dir(cache, "gemma3", commits["gemma3"])  # the Hub cache layout
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        "chat_template.jinja",
    } <= {p.name for p in snap.iterdir()}
    # `mirage base` pins `main` to the snapshot's commit offline, as it would online
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "base": {
                    "source": "hub",
                    "hub": {"model_id": "mirage-tiny/internvl3", "revision": "main"},
                }
            }
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirage_safety.cli",
            "base",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "base"),
            "--metrics",
            str(tmp_path / "metrics"),
            "--no-mlflow",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=_hf_env(cache),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    pin = json.loads((tmp_path / "base" / "pin.json").read_text())
    assert pin["commit"] == commits["internvl"]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_collator_masks_all_but_the_answer_for_each_family(name, hub, mis_dir, tmp_path):
    from mirage_safety.config import HubDataConfig
    from mirage_safety.data.importers import load_mis

    cache, commits = hub
    family = FAMILIES[name]
    model, processor = _load(cache, name, commits[name])
    assert model.config.model_type in family.model_types
    dataset = load_mis(HubDataConfig(local_dir=str(mis_dir)), progress=False)
    recs = dataset.train[:2]
    batch = ChatCollator(processor, root=dataset.root)(recs)
    tok = processor.tokenizer
    image_ids = {tok.convert_tokens_to_ids(t) for t in family.image_tokens}
    placeholder = tok.convert_tokens_to_ids(family.image_tokens[0])
    end_of_turn = {"qwen2_vl": "<|im_end|>", "internvl": "<|im_end|>", "gemma3": "<end_of_turn>"}[
        name
    ]
    for b, rec in enumerate(recs):
        ids, labels = batch["input_ids"][b], batch["labels"][b]
        answer = rec["conversations"][-1]["value"].strip()
        assert tok.decode(ids[labels != IGNORE_INDEX]) == answer + end_of_turn
        assert not any(int(i) in image_ids for i in ids[labels != IGNORE_INDEX])
        assert int((ids == placeholder).sum()) == 2 * TOKENS_PER_IMAGE  # two images
    if family.token_type_ids:  # Gemma 3 attends bidirectionally within an image
        assert int(batch["token_type_ids"].sum()) == 2 * 2 * TOKENS_PER_IMAGE

    # train.preprocess once: the samples' cached tensors pad into the very same batch
    from mirage_safety.training.preprocess import PaddingCollator, build
    from mirage_safety.training.sft import Row

    rows = [Row(r, dataset.root) for r in recs]
    cached = build(rows, ChatCollator(processor), [0] * len(rows), cache_dir=tmp_path)
    again = PaddingCollator(tok.pad_token_id)([cached[i] for i in range(len(rows))])
    assert again.keys() == batch.keys()
    for key in batch:
        assert again[key].dtype == batch[key].dtype and torch.equal(again[key], batch[key]), key

    from mirage_safety.models.loading import apply_lora, freeze_vision_tower

    frozen, trainable = freeze_vision_tower(model)
    assert frozen > 0 and trainable > 0
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    vision = [
        n
        for n in grads
        if any(k in n.split(".") for k in family.vision_keys)
        and not any(k in n.split(".") for k in family.projector_keys)
    ]
    assert vision and not any(grads[n] for n in vision)
    projector = [n for n in grads if any(k in n.split(".") for k in family.projector_keys)]
    assert projector and all(grads[n] for n in projector)

    lora_model = apply_lora(
        _load(cache, name, commits[name])[0],
        r=4,
        alpha=8,
        dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    wrapped = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    assert wrapped and all("lora_" in n for n in wrapped)
    assert not any(k in n.split(".") for n in wrapped for k in family.vision_keys)


QUERY = """
import sys, mlflow, pandas as pd
mlflow.set_tracking_uri("sqlite:///mlflow.db")
images = sys.argv[1:3]
for uri in sys.argv[3:]:
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(pd.DataFrame({"question": ["What do the two images show?"],
                                      "images": [images]}))
    print("ANSWER", uri, repr(out["response"][0]))
"""


def _repro(repo: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "repro", "-q"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_through_the_whole_pipeline(name, hub, mis_dir, dvc_cache, tmp_path):
    cache, commits = hub
    repo = copy_worktree(REPO, tmp_path / "repo")
    (repo / "dvc.lock").unlink(missing_ok=True)
    run(
        [
            str(Path(sys.executable).with_name("dvc")),
            "config",
            "--local",
            "cache.dir",
            str(dvc_cache),
        ],
        repo,
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"].update(source="mis", mis={"local_dir": str(mis_dir)})
    # released labels are kept; no world ground truth to curate or judge with
    params["label"].update(teacher="keep", noise=dict.fromkeys(params["label"]["noise"], 0.0))
    params["curate"]["judge"] = "none"
    params["base"].update(
        source="hub", hub={"model_id": repo_id(FAMILIES[name]), "revision": commits[name]}
    )
    params["train"].update(general_ratio=0.0, max_steps=8, save_steps=4, learning_rate=5e-3)
    params["eval"].update(
        judge="keyword", second_judge="none", splits=["test_easy", "test_hard", "test_real"]
    )
    # random weights trained for 8 steps loop and run on: the gate's absolute degenerate
    # check would (rightly) refuse them; this test is about the plumbing
    params["registry"]["degenerate_tolerance"] = 100.0
    # the MIS test splits are harmful only and these random models have no general ability
    # to measure: a safety-only gate, waived explicitly (and tagged on each version)
    params["eval"]["general"] = {"tasks": {}}
    params["registry"]["allow_safety_only"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit(repo, f"{name} on the MIS layout")
    env = _hf_env(cache)

    _repro(repo, env)  # full fine-tune
    pin = json.loads((repo / "models" / "base" / "pin.json").read_text())
    assert pin["commit"] == commits[name]
    full_meta = json.loads((repo / "models" / "mirage" / "mirage_model.json").read_text())
    assert full_meta["method"] == "full" and full_meta["frozen_params"] > 0
    evals = json.loads((repo / "metrics" / "eval.json").read_text())
    assert set(evals["mirage"]) >= {"test_easy", "test_hard", "test_real"}
    assert evals["mirage"]["test_real"]["n"] == 3

    params["train"]["method"] = "lora"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _repro(repo, env)  # LoRA on the same pinned base; data stages are cached
    assert (repo / "models" / "mirage" / "adapter_model.safetensors").is_file()
    registry = json.loads((repo / "metrics" / "registry.json").read_text())
    assert registry["version"] == 2

    images = [str(mis_dir / p) for p in ("images/1/object1.png", "images/1/object2.png")]
    assert registry["decision"] == "promote"  # so @champion is the LoRA version
    proc = subprocess.run(
        [sys.executable, "-c", QUERY, *images, "models:/mirage/1", "models:/mirage@champion"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    answers = [line for line in proc.stdout.splitlines() if line.startswith("ANSWER")]
    assert len(answers) == 2 and all(
        line.split(" ", 2)[2] not in ("''", '""') for line in answers
    ), proc.stdout
