"""marts/daily_zone_trips and marts/monthly_summary: SQL in the warehouse, joined with the zones."""

import base64
import io

import dagster as dg
import pyarrow as pa

from taxi_platform.datasets import DATASETS
from taxi_platform.io_managers.warehouse import PARTITION_COLUMN, WarehouseIOManager

MONTHS = dg.MonthlyPartitionsDefinition(
    start_date=min(spec.first_month for spec in DATASETS.values()), fmt="%Y-%m"
)
COMMON = dict(
    group_name="marts",
    kinds={"duckdb", "bigquery", "sql"},
    owners=["team:analytics"],
    code_version="1",
    pool="warehouse_loads",
)


@dg.asset(
    key=["marts", "daily_zone_trips"],
    deps=[["warehouse", spec.table] for spec in DATASETS.values()] + [["warehouse", "taxi_zones"]],
    description="Per day, pickup zone and dataset: trips, revenue, average distance and duration, "
    "with the zone's borough and name. Rebuilt in the warehouse from every dataset loaded there.",
    **COMMON,
)
def daily_zone_trips(
    context: dg.AssetExecutionContext, warehouse_io_manager: dg.ResourceParam[WarehouseIOManager]
) -> dg.MaterializeResult:
    warehouse = warehouse_io_manager
    loaded = [spec for spec in DATASETS.values() if spec.table in warehouse.tables()]
    if not loaded:
        raise dg.Failure("No trips in the warehouse yet: materialize a warehouse/<dataset>_trips month.")
    per_dataset = [_daily_zone_sql(warehouse, spec) for spec in loaded]
    warehouse.execute(
        f"CREATE OR REPLACE TABLE {warehouse.ref('daily_zone_trips')} AS\n"
        + "\nUNION ALL\n".join(per_dataset)
    )
    totals = warehouse.execute(
        f"SELECT dataset, CAST(SUM(trips) AS {warehouse.int_type}) AS trips"
        f" FROM {warehouse.ref('daily_zone_trips')} GROUP BY dataset"
    ).to_pylist()
    return dg.MaterializeResult(
        metadata={
            "dagster/table_name": warehouse.table_id("daily_zone_trips"),
            "dagster/row_count": warehouse.execute(
                f"SELECT COUNT(*) AS n FROM {warehouse.ref('daily_zone_trips')}"
            )["n"][0].as_py(),
            **{f"trips_{row['dataset']}": row["trips"] for row in totals},
        }
    )


def _daily_zone_sql(warehouse: WarehouseIOManager, spec) -> str:
    null = f"CAST(NULL AS {warehouse.float_type})"
    revenue = f"SUM(t.{spec.revenue})" if spec.revenue else null
    distance = f"AVG(t.{spec.distance})" if spec.distance else null
    seconds = warehouse.seconds_between(f"t.{spec.pickup}", f"t.{spec.dropoff}")
    return (
        f"SELECT '{spec.name}' AS dataset, t.pickup_date, t.pu_location_id, z.borough, z.zone,"
        f" COUNT(*) AS trips, {revenue} AS revenue, {distance} AS avg_distance,"
        f" AVG({seconds}) / 60 AS avg_duration_minutes"
        f" FROM {warehouse.ref(spec.table)} AS t"
        f" LEFT JOIN {warehouse.ref('taxi_zones')} AS z ON z.location_id = t.pu_location_id"
        f" GROUP BY t.pickup_date, t.pu_location_id, z.borough, z.zone"
    )


@dg.asset(
    key=["marts", "monthly_summary"],
    deps=[["marts", "daily_zone_trips"]],
    description="Per day of the month and dataset: trips and revenue; its materialization carries a "
    "chart of trips per day by dataset.",
    partitions_def=MONTHS,
    io_manager_key="warehouse_io_manager",
    metadata={PARTITION_COLUMN: "pickup_date"},
    **COMMON,
)
def monthly_summary(
    context: dg.AssetExecutionContext, warehouse_io_manager: dg.ResourceParam[WarehouseIOManager]
) -> pa.Table:
    window = context.partition_time_window
    start, end = window.start.date().isoformat(), window.end.date().isoformat()
    summary = warehouse_io_manager.execute(
        f"SELECT pickup_date, dataset, CAST(SUM(trips) AS {warehouse_io_manager.int_type}) AS trips,"
        f" SUM(revenue) AS revenue"
        f" FROM {warehouse_io_manager.ref('daily_zone_trips')}"
        f" WHERE pickup_date >= DATE '{start}' AND pickup_date < DATE '{end}'"
        f" GROUP BY pickup_date, dataset ORDER BY pickup_date, dataset"
    )
    context.add_output_metadata(
        {
            "dagster/row_count": summary.num_rows,
            "trips": sum(summary["trips"].to_pylist()),
            "chart": dg.MetadataValue.md(
                f"![trips per day](data:image/png;base64,{_chart(summary, context.partition_key)})"
            ),
        }
    )
    return summary


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
    axes.legend()
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()
