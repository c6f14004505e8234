"""reference/taxi_zones: the TLC's taxi zone lookup."""

import tempfile
from pathlib import Path

import dagster as dg
import pyarrow as pa

from taxi_platform.assets import SOURCE_RETRY, permanent_errors_not_retried
from taxi_platform.executors import queue_tags
from taxi_platform.metadata import column_schema
from taxi_platform.sources.public import TaxiSource
from taxi_platform.sources.reading import read_zones

ZONES = dg.AssetKey(["reference", "taxi_zones"])


@dg.asset(
    key=ZONES,
    description="The 265 TLC taxi zones: location_id, borough, zone, service_zone. "
    '"NA" and "N/A" are kept as the source writes them.',
    group_name="reference",
    io_manager_key="lake_io_manager",
    kinds={"parquet"},
    owners=["team:data-platform"],
    code_version="1",
    retry_policy=SOURCE_RETRY,
    op_tags=queue_tags("ingest"),
)
def taxi_zones(context: dg.AssetExecutionContext, taxi_source: TaxiSource) -> pa.Table:
    url = taxi_source.zones_url()
    with permanent_errors_not_retried(), tempfile.TemporaryDirectory(prefix="taxi-") as folder:
        download = taxi_source.download(url, Path(folder) / "taxi_zone_lookup.csv", "taxi zones")
        table = read_zones(download.path, f"taxi zones ({url})")
    context.add_output_metadata(
        {
            **download.metadata,
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema),
        }
    )
    return table
