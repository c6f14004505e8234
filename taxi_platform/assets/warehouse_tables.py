"""warehouse/<dataset>_trips and warehouse/taxi_zones: the clean months in DuckDB or BigQuery."""

from datetime import UTC, datetime

import dagster as dg
import pyarrow.dataset as ds

from taxi_platform.assets import SINK_OPTIONS, AssetOptions, build_sink_asset, provenance
from taxi_platform.assets.zones import ZONES
from taxi_platform.datasets import NEW_YORK, PICKUP_DATE, DatasetSpec
from taxi_platform.executors import queue_tags
from taxi_platform.io_managers import PARTITION_COLUMN, TIME_ZONE
from taxi_platform.io_managers.warehouse import CLUSTER_BY, LAKE_TABLE
from taxi_platform.ledger import Audited
from taxi_platform.metadata import CLEAN_DESCRIPTIONS, column_schema

WAREHOUSE_OPTIONS = SINK_OPTIONS | AssetOptions(
    group_name="warehouse",
    io_manager_key="warehouse_io_manager",
    kinds={"duckdb", "bigquery"},
    code_version="1",
    pool="warehouse_loads",
    op_tags=queue_tags("warehouse"),
)


def build_warehouse_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    options = WAREHOUSE_OPTIONS | AssetOptions(
        metadata={
            PARTITION_COLUMN: PICKUP_DATE,
            TIME_ZONE: NEW_YORK,  # the TLC's times are New York's, without a zone
            CLUSTER_BY: ["pu_location_id", "do_location_id"],
            LAKE_TABLE: spec.clean_key.to_user_string(),
            "dagster/column_schema": column_schema(spec.clean_schema, CLEAN_DESCRIPTIONS),
        }
    )
    return build_sink_asset(
        spec,
        spec.warehouse_key,
        f"The clean {spec.name} trips in the warehouse (DuckDB locally, BigQuery on GCP): partitioned "
        "by pickup_date, clustered by pickup and dropoff zone. Replacing a month is atomic.",
        **options,
    )


@dg.asset(
    key=["warehouse", "taxi_zones"],
    ins={"zones": dg.AssetIn(key=ZONES)},
    description="The taxi zones in the warehouse, for joins in the marts.",
    **WAREHOUSE_OPTIONS,
)
def warehouse_taxi_zones(context: dg.AssetExecutionContext, zones: ds.Dataset) -> Audited:
    context.add_output_metadata({"dagster/row_count": zones.count_rows()})
    return Audited(zones, provenance(context.instance, ZONES, ZONES, None, datetime.now(UTC)))
