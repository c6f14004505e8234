"""The Postgres IO manager and postgres/* assets against a real PostgreSQL server."""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import dagster as dg
import psycopg
import pyarrow as pa
import pytest

from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.postgres import UNIQUE_KEY, PostgresIOManager
from taxi_platform_tests.helpers import green_trip_keys, materializations, materialize

GREEN_TO_POSTGRES = (*green_trip_keys(), "postgres/green_trips")
MONTHS = dg.MonthlyPartitionsDefinition(start_date="2020-01", fmt="%Y-%m", end_offset=0)
TRIPS_META = {PARTITION_COLUMN: "pickup_date", UNIQUE_KEY: "trip_key"}


def query(url: str, statement: str, params=()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params).fetchall()


def month_counts(url: str, schema: str, table: str = "green_trips") -> dict[str, int]:
    rows = query(
        url,
        f"SELECT to_char(pickup_date, 'YYYY-MM'), count(*), count(DISTINCT trip_key)"
        f' FROM "{schema}"."{table}" GROUP BY 1 ORDER BY 1',
    )
    assert all(total == distinct for _, total, distinct in rows), "duplicate trip_key"
    return {month: total for month, total, _ in rows}


def test_a_month_lands_with_the_clean_row_count_and_reruns_never_duplicate(taxi_env, postgres_url, pg_schema):
    for _ in range(3):
        result = materialize(*GREEN_TO_POSTGRES, partition="2020-10")
        meta = materializations(result)
        clean_rows = meta[("clean/green_trips", "2020-10")]["dagster/row_count"]
        assert month_counts(postgres_url, pg_schema) == {"2020-10": clean_rows} == {"2020-10": 49262}
    written = meta[("postgres/green_trips", "2020-10")]
    assert written["dagster/row_count"] == 49262
    assert written["dagster/table_name"] == f"{pg_schema}.green_trips"
    types = dict(
        query(
            postgres_url,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s",
            [pg_schema],
        )
    )
    assert types["lpep_pickup_datetime"] == "timestamp without time zone"
    assert types["vendor_id"] == types["passenger_count"] == "bigint"
    assert types["pickup_date"] == "date" and types["store_and_fwd_flag"] == "text"


def test_a_backfill_in_one_run_and_a_month_replaced_alone(taxi_env, postgres_url, pg_schema):
    result = materialize(*GREEN_TO_POSTGRES, months=("2020-10", "2020-12"))
    assert month_counts(postgres_url, pg_schema) == {"2020-10": 49262, "2020-11": 45868, "2020-12": 44228}
    assert materializations(result)[("postgres/green_trips", "2020-11")]["dagster/row_count"] == 45868

    def fingerprint(month):
        return query(
            postgres_url,
            f'SELECT sum(trip_key::numeric), min(xmin::text) FROM "{pg_schema}".green_trips'
            " WHERE to_char(pickup_date, 'YYYY-MM') = %s",
            [month],
        )[0]

    before = {m: fingerprint(m) for m in ("2020-10", "2020-12")}
    relaxed = {"ops": {"clean_green_trips": {"config": {"relax_positive": ["passenger_count"]}}}}
    materialize(*GREEN_TO_POSTGRES, partition="2020-11", run_config=relaxed)
    counts = month_counts(postgres_url, pg_schema)
    assert counts["2020-11"] > 45868
    assert (counts["2020-10"], counts["2020-12"]) == (49262, 44228)
    assert {m: fingerprint(m) for m in ("2020-10", "2020-12")} == before


def test_taxi_zones_land_whole(taxi_env, postgres_url, pg_schema):
    for _ in range(2):
        materialize("reference/taxi_zones", "postgres/taxi_zones")
    assert query(
        postgres_url, f'SELECT count(*), count(DISTINCT location_id) FROM "{pg_schema}".taxi_zones'
    ) == [(265, 265)]
    assert query(
        postgres_url, f'SELECT zone, service_zone FROM "{pg_schema}".taxi_zones WHERE location_id = 265'
    ) == [("NA", "N/A")]


def trips(month: str, n: int, extra: dict | None = None) -> pa.Table:
    start = datetime.fromisoformat(f"{month}-01")
    first_key = int(month.replace("-", "")) * 10**7
    return pa.table(
        {
            "trip_key": pa.array(range(first_key, first_key + n), pa.int64()),
            "pickup_date": pa.array([start.date()] * n, pa.date32()),
            "pickup_at": pa.array([start] * n, pa.timestamp("us")),
            "note": pa.array(["", None, 'quote " and, comma'] * (n // 3) + [None] * (n % 3), pa.string()),
            **(extra or {}),
        }
    )


def write(
    manager: PostgresIOManager, month: str, table: pa.Table, metadata=TRIPS_META, key=("postgres", "trips")
):
    context = dg.build_output_context(
        asset_key=dg.AssetKey(list(key)),
        partition_key=month,
        asset_partitions_def=MONTHS,
        definition_metadata=metadata,
    )
    manager.handle_output(context, table)


def read(manager: PostgresIOManager, month: str, metadata=TRIPS_META) -> pa.Table:
    upstream = dg.build_output_context(
        asset_key=dg.AssetKey(["postgres", "trips"]), definition_metadata=metadata
    )
    context = dg.build_input_context(
        asset_key=dg.AssetKey(["postgres", "trips"]),
        partition_key=month,
        asset_partitions_def=MONTHS,
        upstream_output=upstream,
    )
    return manager.load_input(context)


def test_load_input_reads_back_exactly_what_was_written(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    table = trips("2020-03", 9)
    write(manager, "2020-03", table)
    write(manager, "2020-04", trips("2020-04", 5))
    assert read(manager, "2020-03").sort_by("trip_key").equals(table.sort_by("trip_key"))


def test_schema_drift_adds_new_columns_by_policy_or_fails_clearly(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 6))
    write(manager, "2020-04", trips("2020-04", 6, {"tip": pa.array([1.5] * 6)}))
    assert read(manager, "2020-03")["tip"].null_count == 6
    assert read(manager, "2020-04")["tip"].to_pylist() == [1.5] * 6

    strict = PostgresIOManager(url=postgres_url, db_schema=pg_schema, on_new_column="fail")
    with pytest.raises(ValueError, match=r"new columns \['fee'\]"):
        write(strict, "2020-05", trips("2020-05", 3, {"fee": pa.array([1.0] * 3)}))
    with pytest.raises(ValueError, match=r"changed types .*'tip': \('double precision', 'text'\)"):
        write(manager, "2020-05", trips("2020-05", 3, {"tip": pa.array(["a"] * 3)}))
    assert query(postgres_url, f'SELECT count(*) FROM "{pg_schema}".trips') == [(12,)]


def test_a_table_name_cannot_inject_sql(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 3))
    hostile = {**TRIPS_META, "postgres/table": 'x"; DROP TABLE "' + pg_schema + '".trips; --'}
    write(manager, "2020-03", trips("2020-03", 3), metadata=hostile)
    hostile_schema = PostgresIOManager(url=postgres_url, db_schema=pg_schema + "; DROP SCHEMA public")
    try:
        write(hostile_schema, "2020-03", trips("2020-03", 3))
        tables = query(
            postgres_url,
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname LIKE %s AND c.relkind IN ('r', 'p')"
            " AND NOT c.relispartition ORDER BY 1, 2",
            [pg_schema + "%"],
        )
        assert tables == [
            (pg_schema, "trips"),
            (pg_schema, hostile["postgres/table"]),
            (pg_schema + "; DROP SCHEMA public", "trips"),
        ]
        assert query(postgres_url, f'SELECT count(*) FROM "{pg_schema}".trips') == [(3,)]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}; DROP SCHEMA public" CASCADE')


KILLED_WRITER = """
import sys
import dagster as dg
from taxi_platform_tests.test_postgres import PostgresIOManager, trips, write
manager = PostgresIOManager(url=sys.argv[1], db_schema=sys.argv[2])
write(manager, "2020-03", trips("2020-03", 3_000_000))
"""


def test_a_writer_killed_during_copy_leaves_the_previous_month_whole(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 1000))
    write(manager, "2020-04", trips("2020-04", 10))
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, postgres_url, pg_schema],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 120
    while not query(
        postgres_url,
        "SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND state = 'active'",
        [f'COPY "{pg_schema}"%'],
    ):
        assert writer.poll() is None and time.monotonic() < deadline, "the writer never reached COPY"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the COPY of 3 million rows
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 1000, "2020-04": 10}


def test_months_are_partitions_and_rows_outside_their_month_are_refused(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 4))
    write(manager, "2020-04", trips("2020-04", 2))
    partitions = query(
        postgres_url,
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY 1",
        [f'"{pg_schema}".trips'],
    )
    assert partitions == [
        ("trips_2020_03", "FOR VALUES FROM ('2020-03-01') TO ('2020-04-01')"),
        ("trips_2020_04", "FOR VALUES FROM ('2020-04-01') TO ('2020-05-01')"),
    ]
    stray = trips("2020-03", 3).set_column(
        1, "pickup_date", pa.array([datetime(2020, 4, 1).date()] * 3, pa.date32())
    )
    with pytest.raises(
        ValueError,
        match=r"trips: partition 2020-03 holds rows with pickup_date outside "
        r"\[2020-03-01, 2020-04-01\)",
    ):
        write(manager, "2020-03", stray)
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 4, "2020-04": 2}


def test_writers_of_different_months_run_at_once_and_a_months_writers_wait_in_turn(postgres_url, pg_schema):
    """Each writer holds its month's lock; creating the table, or swapping partitions in, must not
    make two writers fail or deadlock."""
    from concurrent.futures import ThreadPoolExecutor

    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    jobs = [
        ("2020-01", 10),
        ("2020-03", 200_000),
        ("2020-04", 200_000),
        ("2020-03", 150_000),
        ("2020-04", 100_000),
    ]
    with ThreadPoolExecutor(max_workers=5) as pool:
        for future in [pool.submit(write, manager, month, trips(month, n)) for month, n in jobs]:
            future.result(timeout=120)
    counts = month_counts(postgres_url, pg_schema, "trips")
    assert counts["2020-01"] == 10
    assert counts["2020-03"] in (200_000, 150_000) and counts["2020-04"] in (200_000, 100_000)


def test_an_unpartitioned_table_in_the_way_is_a_clear_error(postgres_url, pg_schema):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"; CREATE TABLE "{pg_schema}".trips (trip_key bigint)')
    with pytest.raises(ValueError, match=r"trips exists but is not partitioned by pickup_date"):
        write(PostgresIOManager(url=postgres_url, db_schema=pg_schema), "2020-03", trips("2020-03", 3))


def test_a_stream_of_batches_is_written_whole(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 5))
    table = trips("2020-03", 7)
    write(
        manager, "2020-03", pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=3))
    )
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 7}
