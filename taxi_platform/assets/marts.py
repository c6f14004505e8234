"""marts/daily_zone_trips and marts/monthly_summary: aggregated in the warehouse, one month at a time.

The SQL runs in the warehouse (DuckDB or BigQuery); only the month's aggregate (days x zones x
datasets rows) comes back, and the warehouse IO manager replaces that month atomically.
"""

import base64
import io

import dagster as dg
import pyarrow as pa

from taxi_platform.assets import AssetOptions, by_month
from taxi_platform.conditions import SINKS_FOLLOW_UPSTREAM, follows_any_dataset
from taxi_platform.datasets import DATASETS, NEW_YORK, PICKUP_DATE, DatasetSpec
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.warehouse import WarehouseSQL

MONTHS = dg.MonthlyPartitionsDefinition(
    start_date=min(spec.first_month for spec in DATASETS.values()), fmt="%Y-%m", timezone=NEW_YORK
)
# A month before a dataset's first month simply has none of its trips.
SAME_MONTH = dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True)
COMMON = AssetOptions(
    group_name="marts",
    io_manager_key="warehouse_io_manager",
    partitions_def=MONTHS,
    backfill_policy=dg.BackfillPolicy.multi_run(12),
    metadata={PARTITION_COLUMN: PICKUP_DATE},
    kinds={"duckdb", "bigquery", "sql"},
    owners=["team:analytics"],
    code_version="1",
    pool="warehouse_loads",
)


@dg.asset(
    key=["marts", "daily_zone_trips"],
    deps=[dg.AssetDep(["warehouse", spec.table], partition_mapping=SAME_MONTH) for spec in DATASETS.values()]
    + [["warehouse", "taxi_zones"]],
    description="Per day, pickup zone and dataset: trips, revenue, average distance and duration in "
    "minutes, with the zone's borough and name.",
    **(
        COMMON
        | AssetOptions(automation_condition=follows_any_dataset(required=[["warehouse", "taxi_zones"]]))
    ),
)
def daily_zone_trips(context: dg.AssetExecutionContext, warehouse_sql: WarehouseSQL) -> dict:
    warehouse = warehouse_sql
    tables = warehouse.tables()
    if "taxi_zones" not in tables:
        raise dg.Failure("warehouse/taxi_zones is not materialized: the marts join the zones.")
    loaded = [spec for spec in DATASETS.values() if spec.table in tables]
    months = {}
    for month in context.partition_keys:
        window = MONTHS.time_window_for_partition_key(month)
        start, end = window.start.date().isoformat(), window.end.date().isoformat()
        selects = [_daily_zone_sql(warehouse, spec, start, end) for spec in loaded]
        months[month] = warehouse.execute("\nUNION ALL\n".join(selects)) if selects else _empty()
        trips = months[month]["trips"].to_pylist()
        context.add_asset_metadata(
            {"dagster/row_count": months[month].num_rows, "trips": sum(trips)}, partition_key=month
        )
    return months


def _daily_zone_sql(warehouse: WarehouseSQL, spec: DatasetSpec, start: str, end: str) -> str:
    null = f"CAST(NULL AS {warehouse.float_type})"
    revenue = f"SUM(t.{spec.revenue})" if spec.revenue else null
    distance = f"AVG(t.{spec.distance})" if spec.distance else null
    seconds = warehouse.seconds_between(f"t.{spec.pickup}", f"t.{spec.dropoff}")
    return (
        f"SELECT t.pickup_date, '{spec.name}' AS dataset, t.pu_location_id, z.borough, z.zone,"
        f" COUNT(*) AS trips, {revenue} AS revenue, {distance} AS avg_distance,"
        f" AVG({seconds}) / 60 AS avg_duration_minutes"
        f" FROM {warehouse.ref(spec.table)} AS t"
        f" LEFT JOIN {warehouse.ref('taxi_zones')} AS z ON z.location_id = t.pu_location_id"
        f" WHERE t.pickup_date >= DATE '{start}' AND t.pickup_date < DATE '{end}'"
        f" GROUP BY t.pickup_date, t.pu_location_id, z.borough, z.zone"
    )


def _empty() -> pa.Table:
    return pa.schema(
        [
            ("pickup_date", pa.date32()),
            ("dataset", pa.string()),
            ("pu_location_id", pa.int64()),
            ("borough", pa.string()),
            ("zone", pa.string()),
            ("trips", pa.int64()),
            ("revenue", pa.float64()),
            ("avg_distance", pa.float64()),
            ("avg_duration_minutes", pa.float64()),
        ]
    ).empty_table()


@dg.asset(
    key=["marts", "monthly_summary"],
    ins={"daily": dg.AssetIn(key=["marts", "daily_zone_trips"])},
    description="Per day of the month and dataset: trips and revenue. Each month's materialization "
    "carries a chart of trips per day by dataset.",
    **(COMMON | AssetOptions(automation_condition=SINKS_FOLLOW_UPSTREAM)),
)
def monthly_summary(context: dg.AssetExecutionContext, daily) -> dict:
    months = {}
    for month, table in by_month(context, daily).items():
        summary = (
            table.group_by(["pickup_date", "dataset"])
            .aggregate([("trips", "sum"), ("revenue", "sum")])
            .rename_columns(["pickup_date", "dataset", "trips", "revenue"])
            .sort_by([("pickup_date", "ascending"), ("dataset", "ascending")])
        )
        months[month] = summary
        context.add_asset_metadata(
            {
                "dagster/row_count": summary.num_rows,
                "trips": sum(summary["trips"].to_pylist()),
                "chart": dg.MetadataValue.md(
                    f"![trips per day](data:image/png;base64,{_chart(summary, month)})"
                ),
            },
            partition_key=month,
        )
    return months


def _chart(summary: pa.Table, month: str) -> str:
    """Trips per day by dataset, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.5))
    rows = summary.to_pylist()
    for dataset in sorted({r["dataset"] for r in rows}):
        days = [r for r in rows if r["dataset"] == dataset]
        axes.plot([r["pickup_date"] for r in days], [r["trips"] for r in days], marker="o", label=dataset)
    axes.set_title(f"Trips per day, {month}")
    axes.set_ylabel("trips")
    if rows:
        axes.legend()
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()
