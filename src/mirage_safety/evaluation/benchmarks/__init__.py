"""External safety benchmarks: each read from its published layout (``adapters/``), asked
through the evaluation engine and scored by its own protocol (``protocols.py``)."""
