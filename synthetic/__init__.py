"""Synthetic TLC months and a source server for them: what the tests and the benchmarks both use.

`synthetic.months` writes seeded months of the real schemas and quirks; `synthetic.source_server` serves
them over HTTP laid out like the public sources, with faults on demand.
"""
