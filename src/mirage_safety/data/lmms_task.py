"""The embedded world's general VQA split as an lmms-eval task (``data/lmms_tasks/``).

Real runs measure general ability with lmms-eval's tasks (MMStar, MMMU, MuirBench, ...);
``make run`` measures the embedded world's general split through the very same harness,
so one code path scores both.  The task reads ``general/test.json`` and its images
relative to the data directory (lmms-eval runs there) and scores the project's exact
match in ``utils.py`` (copied from ``lmms_tasks/mirage_world_general_utils.py``).
"""

from __future__ import annotations

from pathlib import Path

from mirage_safety.io import write_text_atomic

TASK = "mirage_world_general"
TASK_DIR = "lmms_tasks"  # under the data directory: eval.general.include_path
_UTILS = Path(__file__).with_name("lmms_tasks") / "mirage_world_general_utils.py"

_YAML = f"""\
# written by `mirage generate`: the embedded world's general VQA split for lmms-eval
# (run with the data directory as the working directory; see mirage_safety.data.lmms_task)
task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: general/test.json
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_messages: !function utils.doc_to_messages
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 96
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


_NO_TASK = """\
No embedded general task: this data is not the embedded world. General ability is measured
by lmms-eval's own tasks (eval.general.tasks, e.g. mmstar, mmmu_val, muirbench).
"""


def write_no_task(data_dir: Path) -> Path:
    """A real source: the task directory (a DVC output) holds only a note saying why."""
    out = data_dir / TASK_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "README.md", _NO_TASK)
    return out


def write_world_general_task(data_dir: Path) -> Path:
    """Write the task (YAML + utils.py) under ``data_dir/lmms_tasks/``; returns its dir."""
    out = data_dir / TASK_DIR / TASK
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{TASK}.yaml", _YAML)
    write_text_atomic(out / "utils.py", _UTILS.read_text())
    return out
