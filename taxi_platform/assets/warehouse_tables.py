"""warehouse/<dataset>_trips and warehouse/taxi_zones: the clean months in DuckDB or BigQuery."""

from datetime import UTC, datetime

import dagster as dg
import pyarrow.dataset as ds

from taxi_platform.assets import AssetOptions, build_sink_asset, provenance
from taxi_platform.assets.zones import ZONES
from taxi_platform.conditions import SINKS_FOLLOW_UPSTREAM
from taxi_platform.datasets import NEW_YORK, PICKUP_DATE, DatasetSpec
from taxi_platform.io_managers import PARTITION_COLUMN, TIME_ZONE
from taxi_platform.io_managers.warehouse import CLUSTER_BY, LAKE_TABLE
from taxi_platform.ledger import Audited
from taxi_platform.metadata import CLEAN_DESCRIPTIONS, column_schema

COMMON = AssetOptions(
    group_name="warehouse",
    io_manager_key="warehouse_io_manager",
    kinds={"duckdb", "bigquery"},
    owners=["team:data-platform"],
    code_version="1",
    pool="warehouse_loads",
    automation_condition=SINKS_FOLLOW_UPSTREAM,
)


def build_warehouse_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    options = COMMON | AssetOptions(
        metadata={
            PARTITION_COLUMN: PICKUP_DATE,
            TIME_ZONE: NEW_YORK,  # the TLC's times are New York's, without a zone
            CLUSTER_BY: ["pu_location_id", "do_location_id"],
            LAKE_TABLE: f"clean/{spec.table}",
            "dagster/column_schema": column_schema(spec.clean_schema, CLEAN_DESCRIPTIONS),
        }
    )
    return build_sink_asset(
        spec,
        "warehouse",
        f"The clean {spec.name} trips in the warehouse (DuckDB locally, BigQuery on GCP): partitioned "
        "by pickup_date, clustered by pickup and dropoff zone. Replacing a month is atomic.",
        **options,
    )


@dg.asset(
    key=["warehouse", "taxi_zones"],
    ins={"zones": dg.AssetIn(key=ZONES)},
    description="The taxi zones in the warehouse, for joins in the marts.",
    **COMMON,
)
def warehouse_taxi_zones(context: dg.AssetExecutionContext, zones: ds.Dataset) -> Audited:
    context.add_output_metadata({"dagster/row_count": zones.count_rows()})
    return Audited(zones, provenance(context.instance, ZONES, ZONES, None, datetime.now(UTC)))
