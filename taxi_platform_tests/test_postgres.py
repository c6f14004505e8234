"""The Postgres IO manager and postgres/* assets against a real PostgreSQL server."""

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg
import pyarrow as pa
import pytest

from taxi_platform.definitions import defs
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.postgres import (
    TABLE,
    UNIQUE_KEY,
    PostgresIOManager,
    PostgresWriteError,
    pg_type,
)
from taxi_platform_tests.helpers import (
    course_counts,
    green_trip_keys,
    load_input,
    materializations,
    materialize,
)
from taxi_platform_tests.test_warehouse import clean_counts, release, served_zones

# pgserver (the embedded server, imported by the IO manager when it has no URL) asks platformdirs for a
# runtime folder at import, which a root shell without a login session lacks.
pytestmark = pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set")
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


def relaxed_passenger_count(published: Path, month: str) -> int:
    """Clean rows of the month with the passenger_count rule relaxed, with pandas: pickups in the month,
    trip_distance > 0, exact copies dropped."""
    df = pd.read_csv(release(published, month), low_memory=False)
    pickup = pd.to_datetime(df["lpep_pickup_datetime"])
    start = pd.Timestamp(f"{month}-01")
    keep = (pickup >= start) & (pickup < start + pd.offsets.MonthBegin(1)) & (df["trip_distance"] > 0)
    return len(df[keep].drop_duplicates())


@pytest.mark.postgres
def test_a_month_lands_with_the_clean_row_count_and_reruns_never_duplicate(
    taxi_env, published, postgres_url, pg_schema
):
    expected = course_counts(release(published, "2020-10"), "2020-10")["clean"]
    for _ in range(3):
        result = materialize(*GREEN_TO_POSTGRES, partition="2020-10")
        meta = materializations(result)
        assert meta[("clean/green_trips", "2020-10")]["dagster/row_count"] == expected
        assert month_counts(postgres_url, pg_schema) == {"2020-10": expected}
    written = meta[("postgres/green_trips", "2020-10")]
    assert written["dagster/row_count"] == expected
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


@pytest.mark.postgres
def test_a_backfill_in_one_run_and_a_month_replaced_alone(taxi_env, published, postgres_url, pg_schema):
    expected = clean_counts(published, "2020-10", "2020-11", "2020-12")
    result = materialize(*GREEN_TO_POSTGRES, months=("2020-10", "2020-12"))
    assert month_counts(postgres_url, pg_schema) == expected
    assert (
        materializations(result)[("postgres/green_trips", "2020-11")]["dagster/row_count"]
        == expected["2020-11"]
    )

    def fingerprint(month):
        return query(
            postgres_url,
            f'SELECT sum(trip_key::numeric), min(xmin::text) FROM "{pg_schema}".green_trips'
            " WHERE to_char(pickup_date, 'YYYY-MM') = %s",
            [month],
        )[0]

    before = {m: fingerprint(m) for m in ("2020-10", "2020-12")}
    cleaning = defs().resolve_assets_def(dg.AssetKey(["clean", "green_trips"])).node_def.name
    relaxed = {"ops": {cleaning: {"config": {"relax_positive": ["passenger_count"]}}}}
    materialize(*GREEN_TO_POSTGRES, partition="2020-11", run_config=relaxed)
    assert relaxed_passenger_count(published, "2020-11") > expected["2020-11"]  # the rule matters here
    assert month_counts(postgres_url, pg_schema) == {
        **expected,
        "2020-11": relaxed_passenger_count(published, "2020-11"),
    }
    assert {m: fingerprint(m) for m in ("2020-10", "2020-12")} == before  # the other months untouched


@pytest.mark.postgres
def test_taxi_zones_land_whole(taxi_env, published, postgres_url, pg_schema):
    for _ in range(2):
        materialize("reference/taxi_zones", "postgres/taxi_zones")
    stored = query(
        postgres_url,
        f'SELECT location_id, borough, zone, service_zone FROM "{pg_schema}".taxi_zones ORDER BY 1',
    )
    assert stored == served_zones(published)
    assert stored[-1] == (265, "Unknown", "NA", "N/A")  # "NA" a name, not a missing value


# The IO manager on its own ------------------------------------------------------------------------


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
    manager: PostgresIOManager,
    month: str | None,
    table,
    metadata=TRIPS_META,
    key=("postgres", "trips"),
    key_range: dg.PartitionKeyRange | None = None,
):
    with dg.build_output_context(
        asset_key=dg.AssetKey(list(key)),
        partition_key=month,
        asset_partition_key_range=key_range,
        asset_partitions_def=MONTHS if month or key_range else None,
        definition_metadata=metadata,
    ) as context:
        manager.handle_output(context, table)


def read(
    manager: PostgresIOManager,
    month: str | None,
    metadata=TRIPS_META,
    key=("postgres", "trips"),
    key_range: dg.PartitionKeyRange | None = None,
):
    return load_input(manager, key, MONTHS, month, key_range, metadata)


def tables_in(url: str, schema: str) -> list[str]:
    return [
        name
        for (name,) in query(
            url,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1",
            [schema],
        )
    ]


@pytest.mark.postgres
def test_load_input_reads_back_exactly_what_was_written(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    table = trips("2020-03", 9)
    write(manager, "2020-03", table)
    write(manager, "2020-04", trips("2020-04", 5))
    assert read(manager, "2020-03").sort_by("trip_key").equals(table.sort_by("trip_key"))
    months = read(manager, None, key_range=dg.PartitionKeyRange("2020-03", "2020-05"))
    assert {month: t.num_rows for month, t in months.items()} == {"2020-03": 9, "2020-04": 5, "2020-05": 0}
    assert months["2020-05"].schema == table.schema  # a month never written: no rows, the table's types


@pytest.mark.postgres
def test_a_range_is_written_in_one_transaction_and_must_give_every_month(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    write(manager, None, {"2020-03": trips("2020-03", 3), "2020-04": trips("2020-04", 4)}, key_range=months)
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 3, "2020-04": 4}
    with pytest.raises(
        ValueError,
        match=rf"^{pg_schema}\.trips: a run over \['2020-03', '2020-04'\] must output one value a partition$",
    ):
        write(manager, None, {"2020-03": trips("2020-03", 5)}, key_range=months)
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 3, "2020-04": 4}


@pytest.mark.postgres
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


@pytest.mark.postgres
def test_a_column_of_a_type_postgres_is_not_given_fails_and_creates_nothing(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    with pytest.raises(TypeError, match=r"^no PostgreSQL type for arrow type binary$"):
        write(manager, "2020-03", trips("2020-03", 3, {"blob": pa.array([b"x"] * 3)}))
    assert tables_in(postgres_url, pg_schema) == []
    assert [pg_type(t) for t in (pa.int32(), pa.float32(), pa.timestamp("us", tz="UTC"))] == [
        "integer",
        "real",
        "timestamp with time zone",
    ]


@pytest.mark.postgres
def test_a_table_name_too_long_for_its_partitions_is_refused(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    name = "t" * 48  # t..._2020_03_new_key would be 64 bytes: PostgreSQL keeps 63
    with pytest.raises(ValueError, match=rf"^table name '{name}' is too long to name its partitions$"):
        write(manager, "2020-03", trips("2020-03", 3), metadata={**TRIPS_META, TABLE: name})
    assert tables_in(postgres_url, pg_schema) == []  # the parent created in the same transaction is gone
    write(manager, "2020-03", trips("2020-03", 3), metadata={**TRIPS_META, TABLE: name[:-1]})
    assert tables_in(postgres_url, pg_schema) == [name[:-1], f"{name[:-1]}_2020_03"]


@pytest.mark.postgres
def test_a_repeated_unique_key_fails_and_leaves_the_month_as_it_was(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 4))
    twice = pa.concat_tables([trips("2020-03", 2), trips("2020-03", 1)])
    with pytest.raises(
        PostgresWriteError,
        match=rf'^{pg_schema}\.trips 2020-03: UniqueViolation: .*"trips_2020_03_new_key"',
    ) as raised:
        write(manager, "2020-03", twice)
    assert isinstance(raised.value.__cause__, psycopg.errors.UniqueViolation)  # not transient: one try
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 4}


@pytest.mark.postgres
def test_without_a_unique_key_a_month_may_repeat_a_key(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    by_day = {PARTITION_COLUMN: "pickup_date"}
    twice = pa.concat_tables([trips("2020-03", 2), trips("2020-03", 1)])
    for _ in range(2):
        write(manager, "2020-03", twice, metadata=by_day)
    assert query(postgres_url, f'SELECT count(*), count(DISTINCT trip_key) FROM "{pg_schema}".trips') == [
        (3, 2)
    ]
    assert query(postgres_url, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", [pg_schema]) == []


@pytest.mark.postgres
def test_an_unpartitioned_table_is_replaced_whole_with_its_unique_key(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    zones = pa.table({"location_id": pa.array([1, 2, 3], pa.int64()), "zone": ["a", "b", ""]})
    meta, key = {UNIQUE_KEY: "location_id"}, ("postgres", "zones")
    write(manager, None, zones, metadata=meta, key=key)
    write(manager, None, zones.slice(1), metadata=meta, key=key)
    assert read(manager, None, metadata=meta, key=key).sort_by("location_id").equals(zones.slice(1))
    assert query(
        postgres_url,
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'zones'",
        [pg_schema],
    ) == [("zones_location_id_key",)]
    with pytest.raises(
        PostgresWriteError, match=rf"^{pg_schema}\.zones: UniqueViolation: .*zones_location_id_key"
    ):
        write(manager, None, pa.concat_tables([zones, zones.slice(2)]), metadata=meta, key=key)
    assert query(postgres_url, f'SELECT location_id FROM "{pg_schema}".zones ORDER BY 1') == [(2,), (3,)]


@pytest.mark.postgres
def test_text_that_reads_like_a_null_reads_back_as_text(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    words = pa.table(
        {
            "location_id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "zone": ["NA", "N/A", "NULL", None, "", "nan"],
            "fare": pa.array([1.5, None, 0.0, 2.0, None, 3.0]),
        }
    )
    write(manager, None, words, metadata={}, key=("postgres", "zones"))
    assert query(postgres_url, f'SELECT zone, fare FROM "{pg_schema}".zones ORDER BY location_id') == [
        ("NA", 1.5),
        ("N/A", None),
        ("NULL", 0.0),
        (None, 2.0),
        ("", None),
        ("nan", 3.0),
    ]
    assert read(manager, None, metadata={}, key=("postgres", "zones")).sort_by("location_id").equals(words)


@pytest.mark.postgres
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


def copying_backends(url: str, schema: str, partition: str) -> list[int]:
    """The backends running a COPY into the partition's staging table."""
    return [
        pid
        for (pid,) in query(
            url,
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
            [f'COPY "{schema}"."{partition}_new"%'],
        )
    ]


def advisory_lock(url: str, name: str, granted: bool) -> list[int]:
    """The backends holding (granted) or waiting for (not granted) the writers' lock of `name`."""
    return [
        pid
        for (pid,) in query(
            url,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = %s AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = (hashtext(%s)::bigint >> 32) & 4294967295"
            " AND objid::bigint = hashtext(%s)::bigint & 4294967295",
            [granted, name, name],
        )
    ]


def wait_for(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll the server until `condition()` holds (a deadline only against a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"the writer exited before {what}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


@pytest.mark.postgres
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


class Gated:
    """A month's rows as a stream that stops after its first batch until `open()`: its writer stays
    inside the COPY, holding the month's lock."""

    def __init__(self, table: pa.Table):
        self.table, self.opened = table, threading.Event()

    def reader(self) -> pa.RecordBatchReader:
        def batches():
            first, *rest = self.table.to_batches(max_chunksize=max(1, self.table.num_rows // 4))
            yield first
            assert self.opened.wait(timeout=300), "the test never opened the gate"
            yield from rest

        return pa.RecordBatchReader.from_batches(self.table.schema, batches())

    def open(self) -> None:
        self.opened.set()


@pytest.mark.postgres
def test_writers_of_different_months_run_at_once_and_a_months_writers_wait_in_turn(postgres_url, pg_schema):
    """Each writer holds its month's lock: a second writer of that month waits (seen in pg_locks) while
    a writer of another month stages and swaps its month in; the second writer then replaces the
    first's month."""
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-01", trips("2020-01", 10))  # the table exists: no writer creates it below
    march_lock = f"{pg_schema}.trips_2020_03"
    first = Gated(trips("2020-03", 200))
    with ThreadPoolExecutor(max_workers=3) as pool:
        try:
            first_done = pool.submit(write, manager, "2020-03", first.reader())
            wait_for(lambda: copying_backends(postgres_url, pg_schema, "trips_2020_03"), "the first COPY")
            [holder] = advisory_lock(postgres_url, march_lock, granted=True)

            second_done = pool.submit(write, manager, "2020-03", trips("2020-03", 150))
            wait_for(lambda: advisory_lock(postgres_url, march_lock, granted=False), "the second writer wait")
            [waiter] = advisory_lock(postgres_url, march_lock, granted=False)
            assert waiter != holder

            # Another month's writer goes through while March's first writer is still inside its COPY.
            pool.submit(write, manager, "2020-04", trips("2020-04", 100)).result(timeout=120)
            assert month_counts(postgres_url, pg_schema, "trips") == {"2020-01": 10, "2020-04": 100}
            assert not first_done.done() and not second_done.done()
            assert advisory_lock(postgres_url, march_lock, granted=False) == [waiter]
        finally:
            first.open()
        first_done.result(timeout=120)
        second_done.result(timeout=120)
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-01": 10, "2020-03": 150, "2020-04": 100}


@pytest.mark.postgres
def test_an_unpartitioned_table_in_the_way_is_a_clear_error(postgres_url, pg_schema):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"; CREATE TABLE "{pg_schema}".trips (trip_key bigint)')
    with pytest.raises(ValueError, match=r"trips exists but is not partitioned by pickup_date"):
        write(PostgresIOManager(url=postgres_url, db_schema=pg_schema), "2020-03", trips("2020-03", 3))


@pytest.mark.postgres
def test_a_stream_of_batches_is_written_whole(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 5))
    table = trips("2020-03", 7)
    write(
        manager, "2020-03", pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=3))
    )
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 7}


@pytest.mark.fast
def test_no_url_and_no_embedded_folder_is_a_clear_error():
    manager = PostgresIOManager(url="", embedded_dir="")
    with pytest.raises(ValueError, match=r"^no PostgreSQL URL and no folder for the embedded server$"):
        write(manager, "2020-03", trips("2020-03", 3))


@pytest.mark.postgres
def test_the_embedded_server_of_the_local_profile(tmp_path):
    from pgserver.postgres_server import get_server

    folder = tmp_path / "pg" / "data"  # its parent made by the IO manager
    manager = PostgresIOManager(embedded_dir=str(folder), db_schema="taxi")
    try:
        write(manager, "2020-03", trips("2020-03", 6))
        assert read(manager, "2020-03").num_rows == 6
        with manager.connect() as conn:
            assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (str(folder),)
    finally:
        server = get_server(folder)  # the handle the IO manager started (it leaves it running)
        server.cleanup_mode = "stop"
        server.cleanup()
