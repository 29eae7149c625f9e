"""A fake DVC pipeline in a throwaway git repo: stages that record when they ran, fail on
demand and write their outputs, for the flow and infrastructure tests."""

from __future__ import annotations

import sys
from pathlib import Path

from repo_copy import commit, git_init, run

STAGE_SCRIPT = '''\
"""Fake pipeline stage: records start/end, can fail once, writes its outputs."""
import json, os, sys, time
from pathlib import Path

name = sys.argv[1]
parent = os.environ.get("MIRAGE_PARENT_RUN_ID")
pipeline = os.environ.get("MIRAGE_PIPELINE_ID")
timeline = os.environ.get("FAKE_TIMELINE")


def mark(what):
    if timeline:
        with open(timeline, "a") as fh:
            fh.write(json.dumps({"stage": name, "what": what, "t": time.time(),
                                 "pipeline": pipeline}) + "\\n")


mark("start")
for marker, code, message in ((f"fail-once-{name}", 1, "ConnectionError: judge down"),
                              (f"fail-config-{name}", 2, "error: train.epochs: bad")):
    if Path(marker).exists():
        Path(marker).unlink()
        print(message, file=sys.stderr)
        sys.exit(code)
time.sleep(float(os.environ.get("FAKE_STAGE_SLEEP", "0")))
Path("out").mkdir(exist_ok=True)
Path("metrics").mkdir(exist_ok=True)
# an output carries its inputs, so a change propagates downstream the way real data does
upstream = {"label": "generate", "curate": "label", "base": "generate", "train": "base",
            "evaluate": "train", "register": "evaluate"}
inputs = [Path("params.yaml")] + ([Path(f"out/{upstream[name]}.txt")] if name in upstream
                                  else []) + ([Path("train_input.txt")] if name == "train"
                                              else [])
Path(f"out/{name}.txt").write_text(name + "".join(p.read_text() for p in inputs))
if name == "evaluate":
    summary = {"test_easy": {"asr": 0.5, "rsr": 90.0, "rr": 5.0, "hr": 4.5},
               "test_benign": {"over_refusal": 3.0}, "general": {"accuracy": 61.0}}
    base = {"test_easy": {"asr": 80.0, "rsr": 5.0, "rr": 10.0, "hr": 5.0},
            "test_benign": {"over_refusal": 2.0}, "general": {"accuracy": 60.0}}
    Path("metrics/eval.json").write_text(json.dumps(
        {"base": base, "mirage": summary, "agreement": {"mirage": 0.97}}))
if name == "register":
    Path("metrics/registry.json").write_text(json.dumps({
        "model_name": "mirage", "version": 1, "decision": "promote", "alias": "champion",
        "reasons": ["asr 0.50 <= 80.00"], "compared_to": "base", "champion_version": 1,
        "parent_run_id": parent, "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
        "profile_env": os.environ.get("MIRAGE_PROFILE")}))
mark("end")
'''

DVC_YAML = """\
stages:
  generate:
    cmd: python stage.py generate
    params: [profile, data]
    outs: [out/generate.txt]
  label:
    cmd: python stage.py label
    deps: [out/generate.txt]
    outs: [out/label.txt]
  curate:
    cmd: python stage.py curate
    deps: [out/label.txt]
    outs: [out/curate.txt]
  base:
    cmd: python stage.py base
    deps: [out/generate.txt]
    outs: [out/base.txt]
  train:
    cmd: python stage.py train
    deps: [out/base.txt, out/curate.txt, train_input.txt]
    outs: [out/train.txt]
  evaluate:
    cmd: python stage.py evaluate
    deps: [out/train.txt]
    outs: [out/evaluate.txt]
    metrics:
      - metrics/eval.json:
          cache: false
  register:
    cmd: python stage.py register
    deps: [out/evaluate.txt, metrics/eval.json]
    metrics:
      - metrics/registry.json:
          cache: false
"""

PARAMS_YAML = """\
# fake pipeline params (a valid mirage params file)
profile: default
data:
  seed: 1
tracking:
  tracking_uri: sqlite:///mlflow.db
  experiment: mirage
profiles:
  smoke:
    data:
      world:
        n_train: 10
"""


def make_fake_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    git_init(repo)
    (repo / "stage.py").write_text(STAGE_SCRIPT)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text(PARAMS_YAML)
    (repo / "train_input.txt").write_text("v1\n")
    (repo / ".gitignore").write_text("/out\n/metrics\nmlflow.db\nmlruns/\n")
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "config", "core.autostage", "true"], repo)
    commit(repo, "fake pipeline")
    return repo
