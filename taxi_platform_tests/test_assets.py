"""Raw and clean green months from the real files, materialized as Dagster runs them."""

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from taxi_platform.datasets import DATASETS
from taxi_platform.definitions import defs
from taxi_platform_tests.helpers import (
    course_counts,
    failure_message,
    green_trip_keys,
    gzip_csv,
    materializations,
    materialize,
)

CLEAN_CHECKS = {"rows_balance", "rules_hold", "trip_key_unique", "pickups_in_month", "schema_as_declared"}


def lake_files(data_dir: Path, key: str) -> dict[str, int]:
    """{relative path: rows} of every parquet file an asset has in the lake."""
    folder = data_dir / "lake" / key
    return {
        str(p.relative_to(folder)): pq.read_metadata(p).num_rows for p in sorted(folder.rglob("*.parquet"))
    }


def test_a_release_month_lands_raw_and_clean_with_the_course_figures(taxi_env, sample_data, manifest):
    result = materialize(*green_trip_keys(), partition="2020-10")
    expected = course_counts(sample_data / "releases/green/green_tripdata_2020-10.csv.gz", "2020-10")
    meta = materializations(result)
    raw, clean = meta[("raw/green_trips", "2020-10")], meta[("clean/green_trips", "2020-10")]
    rejected = meta[("clean/green_trips_rejected", "2020-10")]

    assert raw["dagster/row_count"] == expected["raw"] == 95120
    assert raw["source_sha256"] == manifest["releases/green/green_tripdata_2020-10.csv.gz"]["sha256"]
    assert raw["source_kind"] == "releases"
    assert clean["dagster/row_count"] == expected["clean"]
    assert clean["rejected_pickup_outside_month"] == expected["pickup_outside_month"]
    assert clean["dagster/row_count"] + rejected["dagster/row_count"] == expected["raw"]
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == dict.fromkeys(
        CLEAN_CHECKS, True
    )

    days = lake_files(taxi_env, "clean/green_trips")
    assert len(days) == 31 and all(
        p.startswith("pickup_date=2020-10-") and p.endswith("/2020-10.parquet") for p in days
    )
    assert sum(days.values()) == expected["clean"]
    assert lake_files(taxi_env, "raw/green_trips") == {"2020-10.parquet": 95120}
    assert lake_files(taxi_env, "clean/green_trips_rejected") == {
        "2020-10.parquet": rejected["dagster/row_count"]
    }


def test_rerunning_a_month_replaces_exactly_that_month(taxi_env):
    materialize(*green_trip_keys(), partition="2020-10")
    first = lake_files(taxi_env, "clean/green_trips")
    clean_dir = taxi_env / "lake/clean/green_trips"
    stale = clean_dir / "pickup_date=2020-10-13/part-0.parquet"  # left by an older writer
    stale.write_bytes(b"stale")
    neighbour = clean_dir / "pickup_date=2020-11-02/2020-11.parquet"
    neighbour.parent.mkdir()
    neighbour.write_bytes(b"another month's file")

    for _ in range(2):
        materialize(*green_trip_keys(), partition="2020-10")
    assert not stale.exists()
    assert neighbour.read_bytes() == b"another month's file"
    neighbour.unlink()
    assert lake_files(taxi_env, "clean/green_trips") == first
    assert not list(taxi_env.rglob("*.tmp"))


def test_a_single_run_backfill_of_three_months(taxi_env, sample_data):
    result = materialize(*green_trip_keys(), months=("2020-10", "2020-12"))
    meta = materializations(result)
    for month in ("2020-10", "2020-11", "2020-12"):
        expected = course_counts(sample_data / f"releases/green/green_tripdata_{month}.csv.gz", month)
        assert meta[("raw/green_trips", month)]["dagster/row_count"] == expected["raw"]
        assert meta[("clean/green_trips", month)]["dagster/row_count"] == expected["clean"]
        files = {
            p: n
            for p, n in lake_files(taxi_env, "clean/green_trips").items()
            if p.endswith(f"{month}.parquet")
        }
        assert sum(files.values()) == expected["clean"]
        assert all(p.startswith(f"pickup_date={month}-") for p in files)
    assert sorted(lake_files(taxi_env, "raw/green_trips")) == [
        "2020-10.parquet",
        "2020-11.parquet",
        "2020-12.parquet",
    ]


def test_a_tlc_parquet_month(taxi_env, sample_data):
    result = materialize(*green_trip_keys(), partition="2024-01")
    expected = course_counts(sample_data / "trip-data/green_tripdata_2024-01.parquet", "2024-01")
    meta = materializations(result)
    assert meta[("raw/green_trips", "2024-01")]["source_kind"] == "tlc"
    assert meta[("raw/green_trips", "2024-01")]["dagster/row_count"] == expected["raw"] == 56551
    assert meta[("clean/green_trips", "2024-01")]["dagster/row_count"] == expected["clean"]
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_the_rules_can_be_relaxed_by_run_config(taxi_env, sample_data):
    config = {"ops": {"clean_green_trips": {"config": {"relax_positive": ["passenger_count"]}}}}
    result = materialize(*green_trip_keys(), partition="2020-10", run_config=config)
    clean = materializations(result)[("clean/green_trips", "2020-10")]
    df = pd.read_csv(sample_data / "releases/green/green_tripdata_2020-10.csv.gz", low_memory=False)
    pickup = pd.to_datetime(df["lpep_pickup_datetime"])
    kept = df[(pickup >= "2020-10-01") & (pickup < "2020-11-01") & (df["trip_distance"] > 0)]
    assert clean["rejected_passenger_count_not_positive"] == 0
    assert clean["dagster/row_count"] == len(kept.drop_duplicates())
    assert clean["relaxed_rules"] == "passenger_count"
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_a_month_not_published_fails_at_once_naming_the_month(taxi_env):
    started = time.monotonic()
    result = materialize(*green_trip_keys(), partition="2019-03", raise_on_error=False)
    assert not result.success
    assert "green 2019-03 is not published" in failure_message(result)
    assert time.monotonic() - started < 20  # no step retries after a 404


def test_schema_drift_fails_with_file_month_and_columns_and_keeps_what_is_stored(taxi_env, overlay):
    materialize(*green_trip_keys(), partition="2020-10")
    before = lake_files(taxi_env, "clean/green_trips")
    drifted = overlay / "releases/green/green_tripdata_2019-05.csv.gz"
    drifted.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,PULocationID,"
        "DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,tip_amount,tolls_amount,"
        "ehail_fee,improvement_surcharge,total_amount,payment_type,congestion_surcharge,surprise"
    )
    drifted.write_bytes(
        gzip_csv(
            header + "\n2,2019-05-01 00:10:00,2019-05-01 00:20:00,N,1,7,7,1,1.0,5,0,0,0,0,,0.3,5.3,1,0,x\n"
        )
    )

    result = materialize(*green_trip_keys(), partition="2019-05", raise_on_error=False)
    message = failure_message(result)
    assert not result.success
    assert "green 2019-05" in message and "green_tripdata_2019-05.csv.gz" in message
    assert "missing columns ['trip_type']" in message and "unexpected columns ['surprise']" in message
    assert lake_files(taxi_env, "clean/green_trips") == before


def test_a_truncated_file_fails_clearly_and_the_stored_month_survives(taxi_env, source_server):
    materialize(*green_trip_keys(), partition="2020-10")
    before = lake_files(taxi_env, "raw/green_trips")
    source_server.fail("/releases/green/green_tripdata_2020-10.csv.gz", "truncated")
    result = materialize(*green_trip_keys(), partition="2020-10", raise_on_error=False)
    message = failure_message(result)
    assert "green 2020-10" in message and "green_tripdata_2020-10.csv.gz" in message
    assert "Truncated" in message or "truncated" in message
    assert lake_files(taxi_env, "raw/green_trips") == before


def test_taxi_zones_keep_na_as_text(taxi_env):
    result = materialize("reference/taxi_zones")
    assert materializations(result)[("reference/taxi_zones", None)]["dagster/row_count"] == 265
    zones = pq.read_table(taxi_env / "lake/reference/taxi_zones.parquet").to_pylist()
    assert zones[-1] == {"location_id": 265, "borough": "Unknown", "zone": "NA", "service_zone": "N/A"}
    assert zones[0] == {"location_id": 1, "borough": "EWR", "zone": "Newark Airport", "service_zone": "EWR"}


def dagster_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    dagster = Path(sys.executable).parent / "dagster"
    return subprocess.run([str(dagster), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_dagster_cli_materializes_a_month(taxi_env, tmp_path):
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
    assert lake_files(taxi_env, "raw/green_trips") == {"2020-10.parquet": 95120}
    assert sum(lake_files(taxi_env, "clean/green_trips").values()) == 49262
    assert lake_files(taxi_env, "clean/green_trips_rejected") == {"2020-10.parquet": 95120 - 49262}


def test_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = dagster_cli("definitions", "validate", "-m", "taxi_platform.definitions", env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def run_clean_checks(month: str) -> dict[str, bool]:
    """Run only the checks of clean/green_trips for a month, as the UI's "Execute checks" does."""
    definitions = defs()
    job = dg.define_asset_job(
        "green_checks",
        selection=dg.AssetSelection.checks_for_assets(dg.AssetKey(["clean", "green_trips"])),
        partitions_def=DATASETS["green"].partitions_def,
    )
    definitions = dg.Definitions.merge(definitions, dg.Definitions(jobs=[job]))
    result = definitions.resolve_job_def("green_checks").execute_in_process(
        tags={"dagster/partition": month}, raise_on_error=False
    )
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations() if e.partition == month}


def test_the_checks_judge_what_is_stored(taxi_env):
    materialize(*green_trip_keys(), partition="2020-10")
    assert run_clean_checks("2020-10") == dict.fromkeys(CLEAN_CHECKS, True)

    day = taxi_env / "lake/clean/green_trips/pickup_date=2020-10-05/2020-10.parquet"
    stored = pq.read_table(day)
    bad_row = stored.slice(0, 1).set_column(
        stored.schema.get_field_index("passenger_count"), "passenger_count", pa.array([0], pa.int64())
    )
    pq.write_table(pa.concat_tables([stored, stored.slice(0, 1), bad_row]), day)
    assert run_clean_checks("2020-10") == {
        "rows_balance": False,
        "rules_hold": False,
        "trip_key_unique": False,
        "pickups_in_month": True,
        "schema_as_declared": True,
    }
    for file in day.parent.parent.glob("pickup_date=2020-10-*/2020-10.parquet"):
        pq.write_table(pq.read_table(file).drop_columns(["tip_amount"]), file)
    assert run_clean_checks("2020-10")["schema_as_declared"] is False


def test_a_bad_row_deep_in_a_file_fails_without_retries_and_the_stored_month_survives(
    taxi_env, overlay, sample_data, monkeypatch
):
    """The file is parsed as the lake writes it; a bad row many batches in still leaves the month whole."""
    from taxi_platform import reading

    monkeypatch.setattr(reading, "BATCH_BYTES", 64 << 10)  # about 400 rows a batch
    published = overlay / "releases/green/green_tripdata_2019-08.csv.gz"
    published.parent.mkdir(parents=True, exist_ok=True)
    lines = gzip.decompress((sample_data / "releases/green/green_tripdata_2020-10.csv.gz").read_bytes())
    header, *rows = lines.decode().splitlines()[:20_001]
    rows = [row.replace("2020-10-", "2019-08-") for row in rows]
    published.write_bytes(gzip_csv("\n".join([header, *rows]) + "\n"))
    materialize("raw/green_trips", partition="2019-08")
    before = lake_files(taxi_env, "raw/green_trips")
    assert before == {"2019-08.parquet": 20_000}

    column = header.split(",").index("passenger_count")
    bad = rows[-1].split(",")
    bad[column] = "1.5"
    published.write_bytes(gzip_csv("\n".join([header, *rows[:-1], ",".join(bad)]) + "\n"))
    started = time.monotonic()
    result = materialize("raw/green_trips", partition="2019-08", raise_on_error=False)
    message = failure_message(result)
    assert not result.success and time.monotonic() - started < 25  # the retry policy waits 30 s first
    assert "green 2019-08" in message and "green_tripdata_2019-08.csv.gz" in message and "1.5" in message
    assert lake_files(taxi_env, "raw/green_trips") == before
    assert not list((taxi_env / "lake/raw/green_trips").glob("*.tmp"))
