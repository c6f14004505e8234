"""The marts, computed in the warehouse: DuckDB locally, BigQuery (emulator) on GCP."""

import base64

import duckdb
from dagster_gcp import BigQueryResource

from taxi_platform.io_managers.bigquery import BigQuerySQL, BigQueryWarehouse
from taxi_platform_tests.helpers import green_trip_keys, materializations, materialize

UPSTREAM = (*green_trip_keys(), "warehouse/green_trips", "reference/taxi_zones", "warehouse/taxi_zones")


def materialize_marts(**resources):
    materialize(*UPSTREAM, months=("2020-10", "2020-11"), resources=resources)
    marts = materializations(
        materialize(
            "marts/daily_zone_trips",
            "marts/monthly_summary",
            months=("2020-10", "2020-11"),
            resources=resources,
        )
    )
    return marts[("marts/daily_zone_trips", "2020-10")], marts[("marts/monthly_summary", "2020-11")]


def test_the_marts_in_duckdb(taxi_env):
    daily, monthly = materialize_marts()
    assert daily["trips"] == 49262
    assert monthly["trips"] == 45868 and monthly["dagster/row_count"] == 30
    png = base64.b64decode(monthly["chart"].split("base64,")[1].rstrip(")"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    with duckdb.connect(str(taxi_env / "warehouse.duckdb"), read_only=True) as con:
        top = con.execute(
            "SELECT zone, borough, SUM(trips) FROM taxi.daily_zone_trips"
            " WHERE dataset = 'green' GROUP BY ALL ORDER BY 3 DESC LIMIT 1"
        ).fetchone()
        unmatched = con.execute("SELECT SUM(trips) FROM taxi.daily_zone_trips WHERE zone IS NULL").fetchone()[
            0
        ]
        per_day = con.execute(
            "SELECT SUM(trips) FROM taxi.monthly_summary WHERE pickup_date >= DATE '2020-11-01'"
        ).fetchone()[0]
    assert top[1] in ("Manhattan", "Brooklyn", "Queens", "Bronx") and top[2] > 1000
    assert not unmatched  # every pickup zone of the month is in taxi_zones
    assert per_day == 45868


def test_the_marts_in_bigquery(taxi_env, bigquery_emulator):
    sql = BigQuerySQL(
        bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset="taxi_marts_test"
    )
    try:
        daily, monthly = materialize_marts(warehouse_io_manager=BigQueryWarehouse(sql=sql), warehouse_sql=sql)
        assert daily["trips"] == 49262
        assert monthly["trips"] == 45868 and monthly["dagster/row_count"] == 30
    finally:
        from google.cloud import bigquery

        bigquery.Client(project=bigquery_emulator).delete_dataset(
            "taxi_marts_test", delete_contents=True, not_found_ok=True
        )
