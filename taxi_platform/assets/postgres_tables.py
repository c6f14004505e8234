"""postgres/<dataset>_trips and postgres/taxi_zones: the clean months and the zones in PostgreSQL."""

from datetime import UTC, datetime

import dagster as dg
import pyarrow.dataset as ds

from taxi_platform.assets import SINK_OPTIONS, AssetOptions, build_sink_asset, provenance
from taxi_platform.assets.zones import ZONES
from taxi_platform.datasets import PICKUP_DATE, TRIP_KEY, DatasetSpec
from taxi_platform.executors import queue_tags
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.postgres import UNIQUE_KEY
from taxi_platform.ledger import Audited

POSTGRES_OPTIONS = SINK_OPTIONS | AssetOptions(
    group_name="postgres",
    io_manager_key="postgres_io_manager",
    kinds={"postgres"},
    code_version="2",  # 2: months as PostgreSQL partitions
    op_tags=queue_tags("postgres"),
)


def writer_pool(table: str) -> str:
    """One pool per table (limit 1, dagster.yaml): one writer per table at once; the IO manager's
    advisory lock per table also guards writers outside Dagster."""
    return f"postgres_writers_{table}"


def build_postgres_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    options = POSTGRES_OPTIONS | AssetOptions(
        metadata={PARTITION_COLUMN: PICKUP_DATE, UNIQUE_KEY: TRIP_KEY}, pool=writer_pool(spec.table)
    )
    return build_sink_asset(
        spec,
        spec.postgres_key,
        f"The clean {spec.name} trips in PostgreSQL, one row per trip, unique on trip_key. "
        "Writing a month replaces exactly that month, in one transaction.",
        **options,
    )


@dg.asset(
    key=["postgres", "taxi_zones"],
    ins={"zones": dg.AssetIn(key=ZONES)},
    description="The taxi zones in PostgreSQL, replaced whole on each run.",
    **(POSTGRES_OPTIONS | AssetOptions(pool=writer_pool("taxi_zones"))),
)
def postgres_taxi_zones(context: dg.AssetExecutionContext, zones: ds.Dataset) -> Audited:
    context.add_output_metadata({"dagster/row_count": zones.count_rows()})
    return Audited(zones, provenance(context.instance, ZONES, ZONES, None, datetime.now(UTC)))
