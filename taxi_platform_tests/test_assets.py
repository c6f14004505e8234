"""Raw and clean green months of the synthetic source, materialized as Dagster runs them.

Every expected figure is computed from the served file with pandas, the course's way
(`helpers.course_counts`), never taken from a run.
"""

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from synthetic.months import Quirks, source_table
from taxi_platform.checks.blocking import CHECKS
from taxi_platform.datasets import DATASETS
from taxi_platform_tests.helpers import (
    course_counts,
    course_days,
    failure_message,
    green_trip_keys,
    gzip_csv,
    lake_files,
    lake_table,
    materializations,
    materialize,
    release_csv_gz,
    retries,
    sha256_of,
    unpublished_files,
)

GREEN = DATASETS["green"]
CLEAN_CHECKS = set(CHECKS)
REASONS = [
    "pickup_outside_month",
    "passenger_count_not_positive",
    "trip_distance_not_positive",
    "duplicate_row",
]


def release(root: Path, month: str) -> Path:
    """The month's CSV.gz release under a source folder."""
    return root / f"releases/green/green_tripdata_{month}.csv.gz"


def day_files(source: Path, month: str) -> dict[str, int]:
    """The clean lake's day partitions the month must have, with the course's row counts."""
    return {f"pickup_date={day}": rows for day, rows in course_days(source, month).items()}


@pytest.mark.fast
def test_a_release_month_lands_raw_and_clean_with_the_course_figures(taxi_env, published):
    source = release(published, "2020-10")
    expected = course_counts(source, "2020-10")
    assert all(expected[reason] > 0 for reason in REASONS)  # the month sees every reject reason

    result = materialize(*green_trip_keys(), partition="2020-10")
    meta = materializations(result)
    raw, clean = meta[("raw/green_trips", "2020-10")], meta[("clean/green_trips", "2020-10")]
    rejected = meta[("clean/green_trips_rejected", "2020-10")]
    assert raw["dagster/row_count"] == expected["raw"]
    assert (raw["source_sha256"], raw["source_bytes"]) == (sha256_of(source), source.stat().st_size)
    assert raw["source_kind"] == "releases"
    assert clean["dagster/row_count"] == expected["clean"]
    assert {r: clean[f"rejected_{r}"] for r in REASONS} == {r: expected[r] for r in REASONS}
    assert rejected["dagster/row_count"] == expected["raw"] - expected["clean"]
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == dict.fromkeys(
        CLEAN_CHECKS, True
    )

    assert lake_files(taxi_env, "clean/green_trips") == day_files(source, "2020-10")
    assert lake_files(taxi_env, "raw/green_trips") == {"2020-10": expected["raw"]}
    stored_rejected = lake_table(taxi_env, "clean/green_trips_rejected", "2020-10")
    reasons = pc.value_counts(stored_rejected["reject_reason"]).to_pylist()
    assert {c["values"]: c["counts"] for c in reasons} == {r: expected[r] for r in REASONS}


@pytest.mark.fast
def test_rerunning_a_month_replaces_exactly_that_month(taxi_env, published):
    materialize(*green_trip_keys(), partition="2020-10")
    materialize(*green_trip_keys(), partition="2020-11")
    first = lake_files(taxi_env, "clean/green_trips")
    november = lake_table(taxi_env, "clean/green_trips", "2020-11", "pickup_date")

    for _ in range(2):
        materialize(*green_trip_keys(), partition="2020-10")
    assert lake_files(taxi_env, "clean/green_trips") == first
    assert lake_files(taxi_env, "clean/green_trips") == day_files(
        release(published, "2020-10"), "2020-10"
    ) | day_files(release(published, "2020-11"), "2020-11")
    assert lake_table(taxi_env, "clean/green_trips", "2020-11", "pickup_date").equals(november)
    assert lake_files(taxi_env, "raw/green_trips") == {
        m: course_counts(release(published, m), m)["raw"] for m in ("2020-10", "2020-11")
    }


@pytest.mark.fast
def test_a_single_run_backfill_of_three_months(taxi_env, published):
    result = materialize(*green_trip_keys(), months=("2020-10", "2020-12"))
    meta = materializations(result)
    expected_days = {}
    for month in ("2020-10", "2020-11", "2020-12"):
        expected = course_counts(release(published, month), month)
        assert meta[("raw/green_trips", month)]["dagster/row_count"] == expected["raw"]
        assert meta[("clean/green_trips", month)]["dagster/row_count"] == expected["clean"]
        expected_days.update(day_files(release(published, month), month))
    assert lake_files(taxi_env, "clean/green_trips") == expected_days
    assert sorted(lake_files(taxi_env, "raw/green_trips")) == ["2020-10", "2020-11", "2020-12"]
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == dict.fromkeys(
        CLEAN_CHECKS, True
    )


@pytest.mark.fast
def test_a_tlc_parquet_month(taxi_env, published):
    source = published / "trip-data/green_tripdata_2024-01.parquet"
    result = materialize(*green_trip_keys(), partition="2024-01")
    expected = course_counts(source, "2024-01")
    meta = materializations(result)
    assert meta[("raw/green_trips", "2024-01")]["source_kind"] == "tlc"
    assert meta[("raw/green_trips", "2024-01")]["source_sha256"] == sha256_of(source)
    assert meta[("raw/green_trips", "2024-01")]["dagster/row_count"] == expected["raw"]
    assert meta[("clean/green_trips", "2024-01")]["dagster/row_count"] == expected["clean"]
    assert lake_files(taxi_env, "clean/green_trips") == day_files(source, "2024-01")
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == dict.fromkeys(
        CLEAN_CHECKS, True
    )


@pytest.mark.fast
def test_the_rules_can_be_relaxed_by_run_config(taxi_env, published):
    config = {"ops": {"ingest_green_trips": {"config": {"relax_positive": ["passenger_count"]}}}}
    result = materialize(*green_trip_keys(), partition="2020-10", run_config=config)
    clean = materializations(result)[("clean/green_trips", "2020-10")]
    # Kept: in the month, a positive distance, no copy; passenger_count anything, blank too.
    df = pd.read_csv(release(published, "2020-10"), low_memory=False)
    pickup = pd.to_datetime(df["lpep_pickup_datetime"])
    kept = df[
        (pickup >= "2020-10-01") & (pickup < "2020-11-01") & (df["trip_distance"] > 0)
    ].drop_duplicates()
    assert (kept["passenger_count"] > 0).sum() < len(kept)  # the relaxed rule keeps rows it would reject
    assert clean["dagster/row_count"] == len(kept)
    assert clean["rejected_passenger_count_not_positive"] == 0
    assert clean["relaxed_rules"] == "passenger_count"
    assert lake_table(taxi_env, "clean/green_trips", "2020-10", "pickup_date").num_rows == len(kept)
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == dict.fromkeys(
        CLEAN_CHECKS, True
    )


@pytest.mark.fast
def test_a_month_not_published_fails_at_once_naming_the_month(taxi_env, source_server):
    result = materialize(*green_trip_keys(), partition="2019-03", raise_on_error=False)
    assert not result.success
    assert "green 2019-03 is not published" in failure_message(result)
    # No step retries after a 404: one failure, one request.
    assert len(result.get_step_failure_events()) == 1 and retries(result) == []
    path = "/releases/green/green_tripdata_2019-03.csv.gz"
    assert [r for r in source_server.requests if r[1] == path] == [("GET", path)]


@pytest.mark.fast
def test_schema_drift_fails_with_file_month_and_columns_and_keeps_what_is_stored(taxi_env, publish):
    materialize(*green_trip_keys(), partition="2020-10")
    before = lake_files(taxi_env, "clean/green_trips")
    header = (
        "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,PULocationID,"
        "DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,tip_amount,tolls_amount,"
        "ehail_fee,improvement_surcharge,total_amount,payment_type,congestion_surcharge,surprise"
    )
    row = "2,2019-05-01 00:10:00,2019-05-01 00:20:00,N,1,7,7,1,1.0,5,0,0,0,0,,0.3,5.3,1,0,x"
    publish("releases/green/green_tripdata_2019-05.csv.gz", gzip_csv(f"{header}\n{row}\n"))

    result = materialize(*green_trip_keys(), partition="2019-05", raise_on_error=False)
    message = failure_message(result)
    assert not result.success
    assert "green 2019-05" in message and "green_tripdata_2019-05.csv.gz" in message
    assert "missing columns ['trip_type']" in message and "unexpected columns ['surprise']" in message
    assert retries(result) == []
    assert lake_files(taxi_env, "clean/green_trips") == before


@pytest.mark.fast
def test_a_truncated_file_fails_clearly_and_the_stored_month_survives(taxi_env, source_server):
    materialize(*green_trip_keys(), partition="2020-10")
    before = lake_files(taxi_env, "raw/green_trips")
    source_server.fail("/releases/green/green_tripdata_2020-10.csv.gz", "truncated")
    result = materialize(*green_trip_keys(), partition="2020-10", raise_on_error=False)
    message = failure_message(result)
    assert not result.success
    assert "green 2020-10" in message and "green_tripdata_2020-10.csv.gz" in message
    assert "cannot read the csv file" in message
    assert retries(result) == []
    assert lake_files(taxi_env, "raw/green_trips") == before


@pytest.mark.fast
def test_taxi_zones_keep_na_as_text(taxi_env, published):
    with open(published / "misc/taxi_zone_lookup.csv", newline="") as f:
        served = [
            {"location_id": int(r["LocationID"]), "borough": r["Borough"], "zone": r["Zone"]}
            | {"service_zone": r["service_zone"]}
            for r in csv.DictReader(f)
        ]
    result = materialize("reference/taxi_zones")
    assert materializations(result)[("reference/taxi_zones", None)]["dagster/row_count"] == len(served)
    zones = lake_table(taxi_env, "reference/taxi_zones").to_pylist()
    assert zones == served
    assert zones[-2:] == [
        {"location_id": 264, "borough": "Unknown", "zone": "NV", "service_zone": "N/A"},
        {"location_id": 265, "borough": "Unknown", "zone": "NA", "service_zone": "N/A"},
    ]


def dagster_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    dagster = Path(sys.executable).parent / "dagster"
    return subprocess.run([str(dagster), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_the_dagster_cli_materializes_a_month(taxi_env, published, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    done = dagster_cli(
        "asset",
        "materialize",
        "-m",
        "taxi_platform.definitions",
        "--select",
        ",".join(green_trip_keys()),
        "--partition",
        "2020-10",
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = course_counts(release(published, "2020-10"), "2020-10")
    assert lake_files(taxi_env, "raw/green_trips") == {"2020-10": expected["raw"]}
    assert lake_files(taxi_env, "clean/green_trips") == day_files(release(published, "2020-10"), "2020-10")
    assert lake_files(taxi_env, "clean/green_trips_rejected") == {
        "2020-10": expected["raw"] - expected["clean"]
    }


@pytest.mark.slow
def test_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = dagster_cli("definitions", "validate", "-m", "taxi_platform.definitions", env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.fast
def test_a_month_without_a_clean_row_fails_has_rows_and_is_not_published(taxi_env, publish):
    """Every row breaks a rule: the month is reported with its figures and nothing is published."""
    table = source_table(GREEN, "2019-06", 40, form="csv", quirks=Quirks(out_of_month=0, duplicates=0))
    table = table.set_column(
        table.schema.get_field_index("passenger_count"), "passenger_count", pa.array([0] * 40, pa.int64())
    )
    publish("releases/green/green_tripdata_2019-06.csv.gz", release_csv_gz(table))

    result = materialize(*green_trip_keys(), partition="2019-06", raise_on_error=False)
    assert not result.success and materializations(result) == {}
    assert "green 2019-06 failed has_rows: no clean row (of 40 raw rows)" in failure_message(result)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert {name: c.passed for name, c in checks.items()} == dict.fromkeys(CLEAN_CHECKS, True) | {
        "has_rows": False
    }
    assert checks["has_rows"].metadata["2019-06"].value == "no clean row (of 40 raw rows)"
    assert not list((taxi_env / "lake").rglob("*.parquet"))


@pytest.mark.fast
def test_a_bad_row_deep_in_a_file_fails_without_retries_and_the_stored_month_survives(
    taxi_env, publish, published, monkeypatch
):
    """The file is parsed as the lake writes it; a bad row many batches in still leaves the month whole."""
    from taxi_platform.sources import reading

    monkeypatch.setattr(reading, "BATCH_BYTES", 16 << 10)  # about 100 rows a batch
    text = gzip.decompress(release(published, "2020-10").read_bytes()).decode()
    header, *rows = text.replace("2020-10-", "2019-08-").splitlines()
    assert len(text) > 10 * (16 << 10)  # many batches
    name = "releases/green/green_tripdata_2019-08.csv.gz"
    publish(name, gzip_csv("\n".join([header, *rows]) + "\n"))
    materialize(*green_trip_keys(), partition="2019-08")
    before = lake_files(taxi_env, "raw/green_trips")
    assert before == {"2019-08": len(rows)}

    column = header.split(",").index("passenger_count")
    bad = rows[-1].split(",")
    bad[column] = "1.5"
    publish(name, gzip_csv("\n".join([header, *rows[:-1], ",".join(bad)]) + "\n"))
    result = materialize(*green_trip_keys(), partition="2019-08", raise_on_error=False)
    message = failure_message(result)
    assert not result.success
    assert len(result.get_step_failure_events()) == 1 and retries(result) == []  # the policy waits 30 s
    assert "green 2019-08" in message and "green_tripdata_2019-08.csv.gz" in message and "1.5" in message
    assert lake_files(taxi_env, "raw/green_trips") == before
    for key in green_trip_keys():
        assert unpublished_files(taxi_env, key) == []
