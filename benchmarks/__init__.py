"""Benchmarks of the platform's hot paths, run by hand from the repository root:

    python -m benchmarks.end_to_end      one month, source to PostgreSQL: the platform vs the course
    python -m benchmarks.backfill        a backfill: one process vs two runs at a time
    python -m benchmarks.postgres_load   one clean month into PostgreSQL, three ways

They import the product and the top-level `synthetic` package (`synthetic.months`,
`synthetic.source_server`); what they share is in `benchmarks.common`. See README.md.
"""
