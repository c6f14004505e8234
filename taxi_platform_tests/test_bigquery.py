"""The BigQuery warehouse through the real google-cloud-bigquery client, against the emulator."""

import dagster as dg
import pytest
from dagster_gcp import BigQueryResource
from google.cloud import bigquery

from taxi_platform.definitions import defs
from taxi_platform.io_managers.bigquery import BigQuerySQL, BigQueryWarehouse, lake_table_definition
from taxi_platform_tests.helpers import green_trip_keys, materializations

CLEAN_COUNTS = {"2020-10": 49262, "2020-11": 45868, "2020-12": 44228}


@pytest.fixture
def dataset(bigquery_emulator, request):
    name = f"taxi_{request.node.name[-20:].replace('-', '_')}"
    yield name
    bigquery.Client(project=bigquery_emulator).delete_dataset(name, delete_contents=True, not_found_ok=True)


def materialize_to_bigquery(project, dataset, *, partition=None, months=None):
    definitions = defs()
    sql = BigQuerySQL(bigquery=BigQueryResource(project=project, location="US"), dataset=dataset)
    warehouse = BigQueryWarehouse(sql=sql)
    tags = (
        {"dagster/asset_partition_range_start": months[0], "dagster/asset_partition_range_end": months[1]}
        if months
        else {}
    )
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        selection=dg.AssetSelection.assets(
            *(dg.AssetKey.from_user_string(k) for k in (*green_trip_keys(), "warehouse/green_trips"))
        ),
        resources={**definitions.resources, "warehouse_io_manager": warehouse, "warehouse_sql": sql},
        partition_key=partition,
        tags=tags,
    )


def month_counts(project, dataset) -> dict[str, int]:
    rows = (
        bigquery.Client(project=project)
        .query(
            f"SELECT FORMAT_DATE('%Y-%m', pickup_date) AS month, COUNT(*) AS n, COUNT(DISTINCT trip_key) AS distinct_keys"
            f" FROM `{project}.{dataset}.green_trips` GROUP BY month ORDER BY month"
        )
        .result()
    )
    rows = list(rows)
    assert all(r.n == r.distinct_keys for r in rows), "duplicate trip_key"
    return {r.month: r.n for r in rows}


def test_a_backfill_in_one_run_then_reruns_never_duplicate(taxi_env, bigquery_emulator, dataset):
    project = bigquery_emulator
    result = materialize_to_bigquery(project, dataset, months=("2020-10", "2020-12"))
    assert month_counts(project, dataset) == CLEAN_COUNTS
    meta = materializations(result)[("warehouse/green_trips", "2020-12")]
    assert meta["dagster/table_name"] == f"{project}.{dataset}.green_trips"
    assert meta["dagster/row_count"] == CLEAN_COUNTS["2020-12"]
    for _ in range(2):
        materialize_to_bigquery(project, dataset, partition="2020-11")
    assert month_counts(project, dataset) == CLEAN_COUNTS


def test_the_table_is_partitioned_clustered_and_typed(taxi_env, bigquery_emulator, dataset):
    project = bigquery_emulator
    materialize_to_bigquery(project, dataset, partition="2020-10")
    table = bigquery.Client(project=project).get_table(f"{project}.{dataset}.green_trips")
    assert table.time_partitioning.field == "pickup_date"
    assert table.clustering_fields == ["pu_location_id", "do_location_id"]
    fields = {f.name: f for f in table.schema}
    assert fields["lpep_pickup_datetime"].field_type == "DATETIME"
    assert "stored as DATETIME" in fields["lpep_pickup_datetime"].description
    assert fields["pickup_date"].field_type == "DATE"
    assert fields["vendor_id"].field_type in ("INTEGER", "INT64")  # BigQuery answers the legacy name
    rows = list(
        bigquery.Client(project=project)
        .query(
            f"SELECT COUNT(*) AS n, MIN(lpep_pickup_datetime) AS first, MAX(lpep_pickup_datetime) AS last"
            f" FROM `{project}.{dataset}.green_trips` WHERE pickup_date >= '2020-10-01' AND pickup_date < '2020-11-01'"
        )
        .result()
    )
    assert rows[0].n == CLEAN_COUNTS["2020-10"]
    assert rows[0].first.month == rows[0].last.month == 10


def test_the_lake_external_table(bigquery_emulator, dataset):
    """The emulator accepts the table but keeps no external configuration and cannot read it: the
    definition sent is checked as the JSON BigQuery receives, and creating it twice is idempotent."""
    prefix = "gs://taxi-lake/prod/clean/green_trips"
    sent = lake_table_definition(f"{bigquery_emulator}.{dataset}.green_trips_lake", prefix, "pickup_date")
    assert sent.to_api_repr()["externalDataConfiguration"] == {
        "sourceFormat": "PARQUET",
        "sourceUris": [f"{prefix}/*.parquet"],
        "hivePartitioningOptions": {"mode": "CUSTOM", "sourceUriPrefix": f"{prefix}/{{pickup_date:DATE}}"},
    }
    sql = BigQuerySQL(bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset=dataset)
    warehouse = BigQueryWarehouse(sql=sql, lake_root="gs://taxi-lake/prod")
    bigquery.Client(project=bigquery_emulator).create_dataset(dataset, exists_ok=True)
    for _ in range(2):
        warehouse._create_lake_table("green_trips_lake", prefix, "pickup_date")
    assert bigquery.Client(project=bigquery_emulator).get_table(f"{dataset}.green_trips_lake")
