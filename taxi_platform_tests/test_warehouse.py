"""The local warehouse (embedded DuckDB) from the real green months."""

from datetime import date

import dagster as dg
import duckdb

from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.lake import LakeIOManager
from taxi_platform.io_managers.warehouse import LAKE_TABLE, DuckDBSQL, DuckDBWarehouse
from taxi_platform_tests.helpers import green_trip_keys, materializations, materialize
from taxi_platform_tests.test_lake import MONTHS, days, write

GREEN_TO_WAREHOUSE = (*green_trip_keys(), "warehouse/green_trips")
CLEAN_COUNTS = {"2020-10": 49262, "2020-11": 45868, "2020-12": 44228}


def warehouse(data_dir, sql: str, params=()):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def month_counts(data_dir) -> dict[str, int]:
    rows = warehouse(
        data_dir,
        "SELECT strftime(pickup_date, '%Y-%m'), count(*), count(DISTINCT trip_key)"
        " FROM taxi.green_trips GROUP BY 1 ORDER BY 1",
    )
    assert all(total == distinct for _, total, distinct in rows), "duplicate trip_key"
    return {month: total for month, total, _ in rows}


def test_a_three_month_backfill_then_a_rerun_of_one_month(taxi_env):
    result = materialize(*GREEN_TO_WAREHOUSE, months=("2020-10", "2020-12"))
    assert month_counts(taxi_env) == CLEAN_COUNTS
    meta = materializations(result)[("warehouse/green_trips", "2020-11")]
    assert meta["dagster/row_count"] == CLEAN_COUNTS["2020-11"]
    assert meta["dagster/table_name"] == "taxi.green_trips"
    for _ in range(2):
        materialize(*GREEN_TO_WAREHOUSE, partition="2020-11")
    assert month_counts(taxi_env) == CLEAN_COUNTS


def test_the_table_types_and_describes_its_columns(taxi_env):
    materialize(*GREEN_TO_WAREHOUSE, partition="2020-10")
    columns = dict(
        warehouse(
            taxi_env,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'taxi' AND table_name = 'green_trips'",
        )
    )
    assert columns["lpep_pickup_datetime"] == "TIMESTAMP"  # DuckDB's DATETIME: no time zone
    assert columns["pickup_date"] == "DATE" and columns["vendor_id"] == "BIGINT"
    comments = dict(
        warehouse(
            taxi_env, "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'green_trips'"
        )
    )
    assert "stored as DATETIME" in comments["lpep_pickup_datetime"]
    assert "hash of every trip column" in comments["trip_key"]
    assert warehouse(taxi_env, "SELECT count(*) FROM taxi.green_trips_lake") == [(49262,)]  # the lake view


def test_a_query_by_month_returns_that_month_only(taxi_env):
    materialize(*GREEN_TO_WAREHOUSE, months=("2020-10", "2020-11"))
    rows = warehouse(
        taxi_env,
        "SELECT count(*), min(lpep_pickup_datetime), max(lpep_pickup_datetime)"
        " FROM taxi.green_trips WHERE pickup_date >= DATE '2020-11-01'"
        " AND pickup_date < DATE '2020-12-01'",
    )
    count, first, last = rows[0]
    assert count == CLEAN_COUNTS["2020-11"]
    assert first.strftime("%Y-%m") == last.strftime("%Y-%m") == "2020-11"


def test_zones_land_whole(taxi_env):
    for _ in range(2):
        materialize("reference/taxi_zones", "warehouse/taxi_zones")
    assert warehouse(taxi_env, "SELECT count(*), count(DISTINCT location_id) FROM taxi.taxi_zones") == [
        (265, 265)
    ]


def test_the_lake_table_queries_the_lake_files_where_they_lie(tmp_path):
    lake = LakeIOManager(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(
        sql=DuckDBSQL(path=str(tmp_path / "w.duckdb")), lake_root=str(tmp_path / "lake")
    )
    for month, table in {
        "2020-03": days(date(2020, 3, 1), date(2020, 3, 2)),
        "2020-04": days(date(2020, 4, 9)),
    }.items():
        write(lake, table, month)
        context = dg.build_output_context(
            asset_key=dg.AssetKey(["warehouse", "trips"]),
            partition_key=month,
            asset_partitions_def=MONTHS,
            definition_metadata={PARTITION_COLUMN: "day", LAKE_TABLE: "clean/trips"},
        )
        warehouse.handle_output(context, table)
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert (
            con.execute("SELECT day, count(*) FROM taxi.trips_lake GROUP BY day ORDER BY day").fetchall()
            == con.execute("SELECT day, count(*) FROM taxi.trips GROUP BY day ORDER BY day").fetchall()
            == [(date(2020, 3, 1), 1), (date(2020, 3, 2), 1), (date(2020, 4, 9), 1)]
        )
