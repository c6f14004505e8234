"""The marts, computed in the warehouse (DuckDB locally, the BigQuery emulator on GCP), against the same
figures computed with pandas from the served synthetic files."""

import base64
import io
from pathlib import Path

import duckdb
import matplotlib.image
import pandas as pd
import pyarrow as pa
import pytest
from dagster_gcp import BigQueryResource

from taxi_platform.charts import trips_per_day
from taxi_platform.datasets import DATASETS
from taxi_platform.dbt_runner import DbtWarehouseCli
from taxi_platform.io_managers.bigquery import BigQuerySQL, BigQueryWarehouse
from taxi_platform_tests.helpers import course_month, green_trip_keys, materializations, materialize
from taxi_platform_tests.test_warehouse import release

UPSTREAM = (*green_trip_keys(), "warehouse/green_trips", "reference/taxi_zones", "warehouse/taxi_zones")
MODELS = tuple(f"staging/stg_{name}_trips" for name in DATASETS) + (
    "marts/daily_zone_trips",
    "marts/monthly_summary",
)
MONTHS = ("2020-10", "2020-11")
DAILY_COLUMNS = [
    "pickup_date",
    "dataset",
    "pu_location_id",
    "borough",
    "zone",
    "trips",
    "revenue",
    "avg_distance",
    "avg_duration_minutes",
]


def expected_daily(published: Path, month: str) -> pd.DataFrame:
    """marts/daily_zone_trips of the month, with pandas: the month's clean rows (the course's way) by
    pickup day and pickup zone, joined to the served zone lookup."""
    _, clean, _ = course_month(release(published, month), month)
    pickup = pd.to_datetime(clean["lpep_pickup_datetime"])
    trips = pd.DataFrame(
        {
            "pickup_date": pickup.dt.date,
            "pu_location_id": clean["PULocationID"].astype("int64"),
            "total_amount": clean["total_amount"],
            "trip_distance": clean["trip_distance"],
            "minutes": (pd.to_datetime(clean["lpep_dropoff_datetime"]) - pickup).dt.total_seconds() / 60,
        }
    )
    daily = (
        trips.groupby(["pickup_date", "pu_location_id"])
        .agg(
            trips=("minutes", "size"),
            revenue=("total_amount", "sum"),
            avg_distance=("trip_distance", "mean"),
            avg_duration_minutes=("minutes", "mean"),
        )
        .reset_index()
    )
    zones = pd.read_csv(published / "misc" / "taxi_zone_lookup.csv", keep_default_na=False).rename(
        columns={"LocationID": "pu_location_id", "Borough": "borough", "Zone": "zone"}
    )
    daily = daily.merge(zones[["pu_location_id", "borough", "zone"]], on="pu_location_id", how="left")
    return daily.assign(dataset="green")[DAILY_COLUMNS]


def by_day_and_zone(rows) -> dict[tuple, tuple]:
    """{(day, dataset, zone id): (borough, zone, trips, revenue to the cent)}, and the averages apart."""
    return {
        (r["pickup_date"], r["dataset"], r["pu_location_id"]): (
            r["borough"],
            r["zone"],
            r["trips"],
            round(r["revenue"], 2),
        )
        for r in rows
    }


def averages(rows) -> dict[tuple, tuple]:
    return {
        (r["pickup_date"], r["pu_location_id"]): (r["avg_distance"], r["avg_duration_minutes"]) for r in rows
    }


def top_zone(rows) -> tuple[str, str, int]:
    """The month's busiest pickup zone (borough, zone, trips); there must be exactly one."""
    totals: dict[tuple[str, str], int] = {}
    for r in rows:
        totals[(r["borough"], r["zone"])] = totals.get((r["borough"], r["zone"]), 0) + r["trips"]
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    assert ranked[0][1] > ranked[1][1], "two zones tie for the most trips"
    return (*ranked[0][0], ranked[0][1])


def expected_summary(daily: pd.DataFrame) -> pa.Table:
    """marts/monthly_summary of a month from its expected daily rows: trips and revenue per day."""
    summary = daily.groupby(["pickup_date", "dataset"]).agg(
        trips=("trips", "sum"), revenue=("revenue", "sum")
    )
    return pa.Table.from_pandas(summary.reset_index(), preserve_index=False)


def chart_png(metadata: dict) -> bytes:
    return base64.b64decode(metadata["chart"].split("base64,")[1].rstrip(")"))


def materialize_marts(**resources):
    materialize(*UPSTREAM, months=(MONTHS[0], MONTHS[-1]), resources=resources)
    materialize("core/dim_zones", "core/dim_payment_types", resources=resources)
    return materializations(materialize(*MODELS, months=(MONTHS[0], MONTHS[-1]), resources=resources))


def check_marts(published: Path, marts: dict, daily_rows: dict[str, list[dict]], summary_rows: list[dict]):
    """The stored marts and their metadata against the pandas figures.

    `daily_rows`: {month: the stored daily_zone_trips rows of the month}; `summary_rows`: every stored
    monthly_summary row."""
    for month in MONTHS:
        expected = expected_daily(published, month)
        expected_rows = expected.to_dict("records")
        stored = daily_rows[month]
        assert by_day_and_zone(stored) == by_day_and_zone(expected_rows)
        got, want = averages(stored), averages(expected_rows)
        assert got.keys() == want.keys()
        for key, (distance, minutes) in want.items():
            assert got[key] == (pytest.approx(distance, rel=1e-9), pytest.approx(minutes, rel=1e-9))
        assert top_zone(stored) == top_zone(expected_rows)
        assert not any(r["zone"] is None for r in stored)  # every pickup zone is in taxi_zones

        daily_meta = marts[("marts/daily_zone_trips", month)]
        assert daily_meta["trips"] == int(expected["trips"].sum())
        assert daily_meta["dagster/row_count"] == len(expected)

        summary = expected_summary(expected)
        summary_meta = marts[("marts/monthly_summary", month)]
        assert summary_meta["trips"] == int(expected["trips"].sum())
        assert summary_meta["dagster/row_count"] == summary.num_rows
        stored_summary = {
            (r["pickup_date"], r["dataset"]): (r["trips"], round(r["revenue"], 2))
            for r in summary_rows
            if r["pickup_date"].strftime("%Y-%m") == month
        }
        assert stored_summary == {
            (r["pickup_date"], r["dataset"]): (r["trips"], round(r["revenue"], 2))
            for r in summary.to_pylist()
        }
        # The chart: a PNG of exactly the pandas series (the product's drawing of them, byte for byte).
        png = chart_png(summary_meta)
        assert png == base64.b64decode(trips_per_day(summary.to_pylist(), month))
        one_day_off = summary.set_column(
            2, "trips", pa.array([n + (i == 3) for i, n in enumerate(summary["trips"].to_pylist())])
        )
        assert png != base64.b64decode(
            trips_per_day(one_day_off.to_pylist(), month)
        )  # the comparison sees one trip
        assert matplotlib.image.imread(io.BytesIO(png), format="png").shape[2] == 4  # decodes: RGBA


@pytest.mark.slow
def test_the_marts_in_duckdb(taxi_env, published):
    marts = materialize_marts()
    with duckdb.connect(str(taxi_env / "warehouse.duckdb"), read_only=True) as con:
        daily = {
            month: con.execute(
                "SELECT * FROM taxi.daily_zone_trips WHERE strftime(pickup_date, '%Y-%m') = ?", [month]
            )
            .to_arrow_table()
            .to_pylist()
            for month in MONTHS
        }
        summary = con.execute("SELECT * FROM taxi.monthly_summary").to_arrow_table().to_pylist()
    assert daily[MONTHS[0]] and [c for c in daily[MONTHS[0]][0]] == DAILY_COLUMNS
    check_marts(published, marts, daily, summary)


@pytest.mark.emulators
def test_the_marts_in_bigquery(taxi_env, published, bigquery_emulator):
    from google.cloud import bigquery

    sql = BigQuerySQL(
        bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset="taxi_marts_test"
    )
    try:
        marts = materialize_marts(
            warehouse_io_manager=BigQueryWarehouse(sql=sql),
            warehouse_sql=sql,
            dbt=DbtWarehouseCli(target="gcp", warehouse=sql),
        )
        daily = {
            month: sql.execute(
                f"SELECT * FROM {sql.ref('daily_zone_trips')} WHERE FORMAT_DATE('%Y-%m', pickup_date) = '{month}'"
            ).to_pylist()
            for month in MONTHS
        }
        summary = sql.execute(f"SELECT * FROM {sql.ref('monthly_summary')}").to_pylist()
        check_marts(published, marts, daily, summary)
    finally:
        bigquery.Client(project=bigquery_emulator).delete_dataset(
            "taxi_marts_test", delete_contents=True, not_found_ok=True
        )
