"""Benchmarks for vmemfs against the tools a user would otherwise pick (not part of the tests).

Run everything with ``.venv/bin/python -m bench.run_all``; each part also runs alone,
e.g. ``.venv/bin/python -m bench.index_bench --size small``.
"""
