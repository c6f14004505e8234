"""Asset factories, one module per layer; each builds a dataset's assets from its spec."""

from contextlib import contextmanager

import dagster as dg

from taxi_platform.reading import UnreadableFile
from taxi_platform.source import SourceError, SourceUnavailable


def by_month(context: dg.AssetExecutionContext, value) -> dict:
    """An input loaded for the run's partitions, as {month: table}, for one month or a range."""
    return value if isinstance(value, dict) else {context.partition_key: value}


@contextmanager
def permanent_errors_not_retried():
    """Fail the step without the retry policy when retrying cannot help: a month not published, an
    HTML page or a file that cannot be read as declared. A source still unavailable after the
    download's own tries is left to the step's retry policy."""
    try:
        yield
    except SourceUnavailable:
        raise
    except (SourceError, UnreadableFile) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error


def build_sink_asset(spec, layer: str, description: str, **options) -> dg.AssetsDefinition:
    """`<layer>/<dataset>_trips`: the clean months, handed to the layer's IO manager to store."""

    @dg.asset(
        key=[layer, spec.table],
        ins={"clean": dg.AssetIn(key=["clean", spec.table])},
        description=description,
        partitions_def=spec.partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(spec.months_per_run),
        tags={"dataset": spec.name},
        **options,
    )
    def sink(context: dg.AssetExecutionContext, clean) -> dict:
        months = by_month(context, clean)
        for month, table in months.items():
            context.add_asset_metadata({"dagster/row_count": table.num_rows}, partition_key=month)
        return months

    return sink
