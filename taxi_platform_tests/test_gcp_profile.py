"""The gcp profile end to end: the lake in a Cloud Storage bucket, the warehouse in BigQuery.

Real google-cloud-storage and google-cloud-bigquery clients against emulators the tests start.
"""

import pytest
from google.cloud import bigquery

from taxi_platform_tests.helpers import green_trip_keys, lake_files, materializations, materialize
from taxi_platform_tests.test_warehouse import clean_counts

pytestmark = pytest.mark.emulators
TO_WAREHOUSE = (*green_trip_keys(), "warehouse/green_trips")


@pytest.fixture
def gcp(taxi_env, gcs, bigquery_emulator, monkeypatch):
    dataset = f"taxi_{gcs.prefix}"
    monkeypatch.setenv("TAXI_PROFILE", "gcp")
    monkeypatch.setenv("TAXI_GCS_BUCKET", gcs.emulator.bucket)
    monkeypatch.setenv("TAXI_GCS_PREFIX", gcs.prefix)
    monkeypatch.setenv("TAXI_GCP_PROJECT", bigquery_emulator)
    monkeypatch.setenv("TAXI_WAREHOUSE_DATASET", dataset)
    client = bigquery.Client(project=bigquery_emulator)
    yield gcs, client, f"{bigquery_emulator}.{dataset}"
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def warehouse_counts(client, dataset) -> dict[str, int]:
    rows = client.query(
        f"SELECT FORMAT_DATE('%Y-%m', pickup_date) AS month, COUNT(*) AS n,"
        f" COUNT(DISTINCT trip_key) AS distinct_keys FROM `{dataset}.green_trips` GROUP BY month"
    ).result()
    rows = list(rows)
    assert all(r.n == r.distinct_keys for r in rows), "duplicate trip_key"
    return {r.month: r.n for r in sorted(rows, key=lambda r: r.month)}


def clean_rows_in_bucket(gcs, month) -> int:
    days = lake_files(gcs.lake().lake, "clean/green_trips")
    return sum(rows for day, rows in days.items() if day.startswith(f"pickup_date={month}-"))


def test_a_backfill_lands_in_the_bucket_and_bigquery_with_the_local_counts(gcp, published):
    local_counts = clean_counts(published, "2020-10", "2020-11", "2020-12")
    gcs, client, dataset = gcp
    result = materialize(*TO_WAREHOUSE, months=("2020-10", "2020-12"))
    assert warehouse_counts(client, dataset) == local_counts
    assert lake_files(gcs.lake().lake, "raw/green_trips").keys() == local_counts.keys()
    assert {m: clean_rows_in_bucket(gcs, m) for m in local_counts} == local_counts
    meta = materializations(result)
    clean = meta[("clean/green_trips", "2020-11")]
    assert clean["lake_uri"] == f"gs://{gcs.emulator.bucket}/{gcs.prefix}/clean/green_trips"
    assert clean["console_url"].endswith(
        f"/storage/browser/{gcs.emulator.bucket}/{gcs.prefix}/clean/green_trips"
    )
    warehouse = meta[("warehouse/green_trips", "2020-11")]
    assert warehouse["dagster/table_name"] == f"{dataset}.green_trips"
    assert warehouse["dagster/row_count"] == local_counts["2020-11"]
    assert "console.cloud.google.com/bigquery" in warehouse["console_url"]


def test_rerunning_a_month_leaves_no_duplicates(gcp, published):
    gcs, client, dataset = gcp
    materialize(*TO_WAREHOUSE, months=("2020-10", "2020-11"))
    days = lake_files(gcs.lake().lake, "clean/green_trips")
    materialize(*TO_WAREHOUSE, partition="2020-11")
    assert lake_files(gcs.lake().lake, "clean/green_trips") == days
    assert warehouse_counts(client, dataset) == clean_counts(published, "2020-10", "2020-11")
