"""One module per external benchmark, each reading the benchmark's published layout.

Every module defines ``NAME`` (the key under ``eval.benchmarks``) and
``load(root: Path, *, check_images: bool = True) -> list[BenchSample]`` which raises
:class:`~mirage_safety.data.schema.DataValidationError` (file, record, field) and returns
nothing when any record is bad (see :mod:`..sample`)."""
