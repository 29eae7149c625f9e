"""External safety benchmarks: each one module in ``catalog/`` (its published layout, its
authors' judge, its protocol), listed in ``registry.py``; asked through the evaluation
engine (``run.py``), judged (``judges.py``) and scored by its own protocol."""
