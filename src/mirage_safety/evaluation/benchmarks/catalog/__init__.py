"""One module per external benchmark: everything specific to it.

A benchmark module (listed in :mod:`..registry`) defines:

- ``NAME``: the benchmark's key (under ``eval.benchmarks``, or an entry's ``adapter``),
  equal to the module's own name;
- ``load(root: Path, *, check_images: bool = True) -> list[BenchSample]``: its published
  layout read into samples (:mod:`..sample`); it raises
  :class:`~mirage_safety.data.schema.DataValidationError` (file, record, field) and returns
  nothing when any record is bad;
- its authors' judge, when it has one: prompt templates, ``request_<name>`` builders and
  strict ``parse_<name>`` parsers, built from :mod:`..judging`'s helpers;
- ``PROTOCOL``: its :class:`~..protocols.Protocol` (``name=NAME``): the judges it accepts,
  its metric function and headline figures, the stages of its own judge
  (``stages``, the judgements above), its over-refusal metric if it measures one.

A module whose name starts with an underscore is a helper shared by benchmark modules
(:mod:`._world`), not a benchmark.
"""
