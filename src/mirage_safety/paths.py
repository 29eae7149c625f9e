"""Where the stages read and write, relative to the repository root.

The one place the workspace layout is written in the code: every ``mirage`` command takes
its default paths from here, and ``tests/test_architecture.py`` checks that ``dvc.yaml``
declares each of them as a dependency or an output of the stage whose command uses it.
"""

from __future__ import annotations

DATA = "data"  # generate's output root: mis/, general/, benchmarks/, lmms_tasks/
LABELLED = "data/labelled"
CURATED = "data/curated"
BASE_MODEL = "models/base"
MODEL = "models/mirage"
EVAL = "eval"

METRICS = "metrics"  # base.json and train.json are written here
LABEL_METRICS = "metrics/label.json"
CURATE_METRICS = "metrics/curate.json"
EVAL_METRICS = "metrics/eval.json"
REGISTRY_METRICS = "metrics/registry.json"

PLOTS = "plots"  # train_loss.csv
CURATE_PLOTS = "plots/curate_scores.csv"
EVAL_PLOTS = "plots/eval_rates.csv"

REPORTS = "reports"
# resumable checkpoints, outside DVC outs (removed after a stage succeeds)
BASE_CHECKPOINTS = ".cache/checkpoints/base"
TRAIN_CHECKPOINTS = ".cache/checkpoints/train"
