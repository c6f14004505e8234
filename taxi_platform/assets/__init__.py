"""Asset factories, one module per layer; each builds a dataset's assets from its spec."""

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, TypedDict, Unpack

import dagster as dg

from taxi_platform.datasets import DatasetSpec
from taxi_platform.sources.landing import OutsideLanding
from taxi_platform.sources.public import SourceError, SourceUnavailable
from taxi_platform.sources.reading import UnreadableFile

# A source still unavailable after the download's own tries (minutes of them) is tried again by the
# step, after 30 s, 60 s and 120 s (each +/- half).
SOURCE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class AssetOptions(TypedDict, total=False):
    """`dg.asset` arguments shared by a layer's assets. Typed: unpacking an untyped dict into
    `dg.asset` matches both of its overloads, and the asset's type would be lost."""

    group_name: str
    io_manager_key: str
    kinds: set[str]
    owners: list[str]
    code_version: str
    pool: str
    metadata: Mapping[str, Any]
    automation_condition: dg.AutomationCondition
    partitions_def: dg.PartitionsDefinition
    backfill_policy: dg.BackfillPolicy


def by_month(context: dg.AssetExecutionContext, value) -> dict:
    """An input loaded for the run's partitions, as {month: table}, for one month or a range."""
    return value if isinstance(value, dict) else {context.partition_key: value}


@contextmanager
def permanent_errors_not_retried():
    """Fail the step without the retry policy when retrying cannot help: a month not published, an
    HTML page, a file that cannot be read as declared, or a landed path outside the landing folder. A source still unavailable after the
    download's own tries is left to the step's retry policy."""
    try:
        yield
    except SourceUnavailable:
        raise
    except (SourceError, UnreadableFile, OutsideLanding) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error


def build_sink_asset(
    spec: DatasetSpec, layer: str, description: str, **options: Unpack[AssetOptions]
) -> dg.AssetsDefinition:
    """`<layer>/<dataset>_trips`: the clean months, handed to the layer's IO manager to store."""

    @dg.asset(
        key=[layer, spec.table],
        ins={"clean": dg.AssetIn(key=["clean", spec.table])},
        description=description,
        tags={"dataset": spec.name},
        **(
            options
            | AssetOptions(
                partitions_def=spec.partitions_def,
                backfill_policy=dg.BackfillPolicy.multi_run(spec.months_per_run),
            )
        ),
    )
    def sink(context: dg.AssetExecutionContext, clean) -> dict:
        """The stored months, read by the IO manager as it writes them."""
        months = by_month(context, clean)
        for month, rows in months.items():
            context.add_asset_metadata({"dagster/row_count": rows.count_rows()}, partition_key=month)
        return months

    return sink
