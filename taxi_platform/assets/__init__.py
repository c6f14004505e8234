"""Asset factories, one module per layer; each builds a dataset's assets from its spec."""

import dagster as dg


def by_month(context: dg.AssetExecutionContext, value) -> dict:
    """An input loaded for the run's partitions, as {month: table}, for one month or a range."""
    return value if isinstance(value, dict) else {context.partition_key: value}
