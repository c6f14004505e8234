"""Asset factories, one module per layer; each builds a dataset's assets from its spec."""

from collections.abc import Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

import dagster as dg

from taxi_platform.checks.blocking import CHECK_OUTCOMES
from taxi_platform.conditions import SINKS_FOLLOW_UPSTREAM
from taxi_platform.datasets import DatasetSpec
from taxi_platform.lake.resource import version_of
from taxi_platform.ledger import Audited
from taxi_platform.profiles import code_version
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
    op_tags: Mapping[str, Any]
    metadata: Mapping[str, Any]
    automation_condition: dg.AutomationCondition
    partitions_def: dg.PartitionsDefinition
    backfill_policy: dg.BackfillPolicy


# What every store of the clean months shares, whatever its layer (each layer adds its own options).
SINK_OPTIONS = AssetOptions(owners=["team:data-platform"], automation_condition=SINKS_FOLLOW_UPSTREAM)


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


def provenance(
    instance: dg.DagsterInstance,
    source_key: dg.AssetKey,
    counts_key: dg.AssetKey,
    partition: str | None,
    started_at: datetime,
) -> dict:
    """What the load ledger says of a sink's rows: the source file (from `source_key`'s latest
    materialization), the row counts and checks (from `counts_key`'s), the code, when it started."""
    source, counts = (_latest_metadata(instance, key, partition) for key in (source_key, counts_key))
    clean_rows = counts.get("dagster/row_count")
    return {
        "source_url": source.get("source_url"),
        "source_sha256": source.get("source_sha256"),
        "source_etag": source.get("source_etag") or None,
        "source_last_modified": source.get("source_last_modified") or None,
        "rows_raw": counts.get("raw_rows", clean_rows),
        "rows_clean": clean_rows,
        "rows_rejected": counts.get("rejected_rows", 0),
        "checks": counts.get(CHECK_OUTCOMES),
        "code_version": code_version(),
        "started_at": started_at,
    }


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    return {name: value.value for name, value in materialization.metadata.items()} if materialization else {}


def build_sink_asset(
    spec: DatasetSpec, key: dg.AssetKey, description: str, **options: Unpack[AssetOptions]
) -> dg.AssetsDefinition:
    """`key` (the spec's `<layer>/<dataset>_trips`): the clean months, handed to the layer's IO manager
    to store."""

    @dg.asset(
        key=key,
        ins={"clean": dg.AssetIn(key=spec.clean_key)},
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
        """The stored months, read by the IO manager as it writes them, with their provenance for
        the load ledger."""
        started_at, audited = datetime.now(UTC), {}
        for month, rows in by_month(context, clean).items():
            context.add_asset_metadata({"dagster/row_count": rows.count_rows()}, partition_key=month)
            known = provenance(context.instance, spec.raw_key, spec.clean_key, month, started_at)
            audited[month] = Audited(rows, known | {"lake_version": version_of(rows), "operation": "load"})
        return audited

    return sink
