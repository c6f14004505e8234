"""The two marts moved into dbt (`marts/daily_zone_trips`, `marts/monthly_summary`) against the Python
SQL marts they replaced, on the same DuckDB warehouse; and the whole dbt build (fct_trips too) apart.

    python -m benchmarks.marts --rows 1400000 --months 1     # one month
    python -m benchmarks.marts --rows 100000 --months 12     # a 12-month backfill: one run, one dbt build

The warehouse holds synthetic yellow months in the clean schema (`synthetic.months.synthetic_yellow`) and the zones;
the dimensions are built beforehand. Each way then runs in a child process of its own from a copy of
that warehouse (wall time with interpreter and Dagster start-up, peak RSS), as one Dagster run over
the months:
- `python-sql`: the platform's former marts (taxi_platform/assets/marts.py until issue 21), kept here
  as the baseline: the aggregation as SQL in DuckDB, the month's rows stored by the warehouse IO manager;
- `dbt-marts`: the staging views and the two marts through dbt (dbt's start-up included);
- `dbt-all`: every monthly model (staging, fct_trips_pending, fct_trips, fct_fhv_trips, the three marts).
"""

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import ROOT, child_env, report_result, run_child

MARTS = ("marts/daily_zone_trips", "marts/monthly_summary")
STAGING = tuple(f"staging/stg_{name}_trips" for name in ("yellow", "green", "fhv", "fhvhv"))
MONTHLY = (
    *STAGING,
    "core/fct_trips_pending",
    "core/fct_trips",
    "core/fct_fhv_trips",
    "marts/fct_monthly_zone_revenue",
    *MARTS,
)
WAYS = {"python-sql": MARTS, "dbt-marts": (*STAGING, *MARTS), "dbt-all": MONTHLY}
# The columns the former marts summed and averaged (the dataset specs held them then).
REVENUE_AND_DISTANCE = {
    "yellow": ("total_amount", "trip_distance"),
    "green": ("total_amount", "trip_distance"),
    "fhvhv": ("base_passenger_fare", "trip_miles"),
}
DIMENSIONS = ("core/dim_zones", "core/dim_payment_types")  # built before any way, untimed
FIRST_MONTH = "2021-01"


def months(count: int) -> list[str]:
    year, month = map(int, FIRST_MONTH.split("-"))
    return [f"{year + (month - 1 + i) // 12}-{(month - 1 + i) % 12 + 1:02d}" for i in range(count)]


def prepare(data_dir: Path, rows: int, count: int) -> None:
    """A warehouse of `count` yellow months of `rows` trips each and the zones (the dimensions are built
    by a `dimensions` worker)."""
    import io

    import duckdb
    import pyarrow.csv as pacsv

    from synthetic.months import ZONES_CSV, synthetic_yellow

    data_dir.mkdir(parents=True)
    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
        con.execute("CREATE SCHEMA taxi")
        zones = pacsv.read_csv(io.BytesIO(ZONES_CSV.encode()))
        zones = zones.rename_columns(["location_id", "borough", "zone", "service_zone"])
        con.register("zones", zones)
        con.execute("CREATE TABLE taxi.taxi_zones AS SELECT * FROM zones")
        for i, month in enumerate(months(count)):
            con.register("trips", synthetic_yellow(rows, seed=2021 + i, month=month))
            verb = "CREATE TABLE taxi.yellow_trips AS" if i == 0 else "INSERT INTO taxi.yellow_trips"
            con.execute(f"{verb} SELECT * FROM trips")
            con.unregister("trips")


def python_sql_marts():
    """The former Python marts (issue 21 moved them into dbt), for DuckDB: the baseline."""
    import dagster as dg
    import pyarrow as pa

    from taxi_platform.assets.models import MONTHS
    from taxi_platform.charts import trips_per_day
    from taxi_platform.datasets import DATASETS, PICKUP_DATE
    from taxi_platform.io_managers import PARTITION_COLUMN
    from taxi_platform.io_managers.warehouse import WarehouseSQL

    common = dict(
        group_name="marts",
        io_manager_key="warehouse_io_manager",
        partitions_def=MONTHS,
        backfill_policy=dg.BackfillPolicy.multi_run(12),
        metadata={PARTITION_COLUMN: PICKUP_DATE},
    )

    @dg.asset(key=["marts", "daily_zone_trips"], **common)  # type: ignore[arg-type]
    def daily_zone_trips(context: dg.AssetExecutionContext, warehouse_sql: WarehouseSQL) -> dict:
        loaded = [spec for spec in DATASETS.values() if spec.table in warehouse_sql.tables()]
        out = {}
        for month in context.partition_keys:
            window = MONTHS.time_window_for_partition_key(month)
            start, end = window.start.date().isoformat(), window.end.date().isoformat()
            selects = []
            for spec in loaded:
                fare, miles = REVENUE_AND_DISTANCE.get(spec.name, (None, None))
                revenue = f"SUM(t.{fare})" if fare else "CAST(NULL AS DOUBLE)"
                distance = f"AVG(t.{miles})" if miles else "CAST(NULL AS DOUBLE)"
                selects.append(
                    f"SELECT t.pickup_date, '{spec.name}' AS dataset, t.pu_location_id, z.borough, z.zone,"
                    f" COUNT(*) AS trips, {revenue} AS revenue, {distance} AS avg_distance,"
                    f" AVG(date_diff('second', t.{spec.pickup}, t.{spec.dropoff})) / 60 AS avg_duration_minutes"
                    f" FROM {warehouse_sql.ref(spec.table)} AS t"
                    f" LEFT JOIN {warehouse_sql.ref('taxi_zones')} AS z ON z.location_id = t.pu_location_id"
                    f" WHERE t.pickup_date >= DATE '{start}' AND t.pickup_date < DATE '{end}'"
                    f" GROUP BY t.pickup_date, t.pu_location_id, z.borough, z.zone"
                )
            out[month] = warehouse_sql.execute("\nUNION ALL\n".join(selects))
            context.add_asset_metadata({"dagster/row_count": out[month].num_rows}, partition_key=month)
        return out

    @dg.asset(
        key=["marts", "monthly_summary"],
        ins={"daily": dg.AssetIn(key=["marts", "daily_zone_trips"])},
        **common,
    )  # type: ignore[arg-type]
    def monthly_summary(context: dg.AssetExecutionContext, daily) -> dict:
        out = {}
        for month, table in (daily if isinstance(daily, dict) else {context.partition_key: daily}).items():
            summary: pa.Table = (
                table.group_by(["pickup_date", "dataset"])
                .aggregate([("trips", "sum"), ("revenue", "sum")])
                .rename_columns(["pickup_date", "dataset", "trips", "revenue"])
            )
            png = trips_per_day(summary.to_pylist(), month)
            context.add_asset_metadata(
                {"chart": dg.MetadataValue.md(f"![chart](data:image/png;base64,{png})")}, partition_key=month
            )
            out[month] = summary
        return out

    return [daily_zone_trips, monthly_summary]


def worker(way: str, first: str, last: str) -> None:
    """One way's run over the months (in a child process, TAXI_DATA_DIR its warehouse's folder)."""
    import dagster as dg

    from taxi_platform.definitions import defs

    definitions = defs()
    assets = python_sql_marts() if way == "python-sql" else definitions.assets
    keys = [dg.AssetKey.from_user_string(key) for key in WAYS.get(way, DIMENSIONS)]
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    tags = {} if way == "dimensions" else tags
    result = dg.materialize(
        assets, selection=dg.AssetSelection.assets(*keys), resources=definitions.resources, tags=tags
    )
    report_result({"success": result.success})


def daily_rows(data_dir: Path) -> tuple[int, int]:
    """(rows, trips) of daily_zone_trips: every way must agree."""
    import duckdb

    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        rows, trips = con.execute("SELECT count(*), sum(trips) FROM taxi.daily_zone_trips").fetchone()
    return rows, int(trips)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_400_000, help="trips a month")
    parser.add_argument("--months", type=int, default=1)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/taxi_platform_bench/marts"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = months(args.months)
    if args.worker:
        worker(args.worker, chosen[0], chosen[-1])
        return {}
    base = args.work / "base"
    shutil.rmtree(args.work, ignore_errors=True)
    prepare(base, args.rows, args.months)
    env = child_env(TAXI_DATA_DIR=str(base), TAXI_PROFILE="local")
    run_child([sys.executable, "-m", "benchmarks.marts", "--worker", "dimensions"], env)
    figures: dict = {"rows_per_month": args.rows, "months": args.months, "ways": {}}
    for way in args.ways.split(","):
        data_dir = args.work / way
        shutil.copytree(base, data_dir)
        command = [sys.executable, "-m", "benchmarks.marts", "--worker", way, "--rows", str(args.rows)]
        command += ["--months", str(args.months)]
        measured = run_child(command, child_env(TAXI_DATA_DIR=str(data_dir), TAXI_PROFILE="local"))
        rows, trips = daily_rows(data_dir)
        assert measured["success"] and trips == args.rows * args.months, (way, measured, trips)
        figures["ways"][way] = {**measured, "daily_rows": rows, "trips": trips}
        print(
            f"{way:>11}: {measured['seconds']:7.2f} s, {measured['peak_rss'] / 2**20:,.0f} MiB peak, "
            f"{rows:,} daily rows, {trips:,} trips",
            flush=True,
        )
    ways = figures["ways"]
    if {"python-sql", "dbt-marts"} <= ways.keys():
        ratio = ways["dbt-marts"]["seconds"] / ways["python-sql"]["seconds"]
        figures["dbt_marts_over_python_sql"] = ratio
        print(f"dbt marts / Python SQL marts: {ratio:.2f}x (goal for the 12-month backfill: at most 1.5x)")
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.results / f"marts-{stamp}.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
