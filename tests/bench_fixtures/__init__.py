"""Builders of external-benchmark fixtures in each benchmark's exact published layout
(file names, keys, image paths), one module per benchmark: ``build(root, *, bad=False)``
writes the fixture under ``root`` (with ``bad=True`` also one invalid record) and returns
what the adapter should read from it."""
