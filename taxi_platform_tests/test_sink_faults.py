"""Faults injected into the sinks, each with real components: a PostgreSQL backend terminated in its
COPY, a lock held on the month being swapped, a deadlock, a writer killed, a malformed URL, a DuckDB
file held by another process. Every test checks the outcome, and that the month published before is
unchanged (its row count and the md5 of its rows). The tests wait on what the servers show
(pg_stat_activity, pg_locks) and on the warnings the writers log, never on time.

A serialization failure (40001) is not provoked: the writer runs at READ COMMITTED and reads no rows a
concurrent transaction could make it serialize on; it is retried like the deadlock (see `transient` in
io_managers/postgres/connection.py).
"""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from taxi_platform.io_managers.postgres import PostgresIOManager, PostgresWriteError
from taxi_platform.io_managers.warehouse import DuckDBSQL, DuckDBWarehouse, WarehouseLocked
from taxi_platform.profiles import resources_for
from taxi_platform.retrying import RetrySettings
from taxi_platform_tests.helpers import failure_message
from taxi_platform_tests.test_lake import days
from taxi_platform_tests.test_postgres import (
    MONTHS,
    TRIPS_META,
    Gated,
    advisory_lock,
    copying_backends,
    month_counts,
    query,
    read,
    tables_in,
    trips,
    wait_for,
    write,
)
from taxi_platform_tests.test_warehouse import load, store

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set")]
REPOSITORY = Path(__file__).resolve().parents[1]
MARCH = "trips_2020_03"


def quick(**settings) -> RetrySettings:
    """Retry settings without jitter and with short waits, so that each wait is known (from 0.01 s)."""
    return RetrySettings(**({"first_wait": 0.01, "max_wait": 0.1, "jitter": 0} | settings))


class RetryWarnings(logging.Handler):
    """The warnings a writer logs before it tries again; `first` is set at the first."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.first = threading.Event()

    def emit(self, record):
        # A Dagster log's record holds the message as logged apart from the run's prefix.
        self.messages.append(getattr(record, "dagster_meta", {}).get("orig_message", record.getMessage()))
        self.first.set()


def write_logged(manager: PostgresIOManager, month: str, data, warnings: RetryWarnings) -> None:
    """Write a month of postgres/trips as Dagster does, its log's warnings caught by `warnings`."""
    context = dg.build_output_context(
        asset_key=dg.AssetKey(["postgres", "trips"]),
        partition_key=month,
        asset_partitions_def=MONTHS,
        definition_metadata=TRIPS_META,
    )
    context.log.addHandler(warnings)
    manager.handle_output(context, data)


def fingerprint(url: str, schema: str, month: str) -> tuple[int, str]:
    """(rows, md5 of the rows in trip_key order) of a month of the trips table."""
    return query(
        url,
        f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY trip_key), ''))"
        f" FROM \"{schema}\".trips t WHERE to_char(pickup_date, 'YYYY-MM') = %s",
        [month],
    )[0]


class _FirstOpenWaits(pafs.FSSpecHandler):
    """Local files; the first opening of `path` waits for `gate`."""

    def __init__(self, path: str, gate: threading.Event):
        super().__init__(LocalFileSystem())
        self.path, self.gate, self.opens, self.lock = path, gate, 0, threading.Lock()

    def open_input_file(self, path):
        if path == self.path:
            with self.lock:
                self.opens += 1
                first = self.opens == 1
            if first:
                assert self.gate.wait(timeout=300), "the test never opened the gate"
        return super().open_input_file(path)


class GatedDataset:
    """A table as a parquet Dataset that can be scanned again (a retry reads it anew): its first scan
    stops after the first row until `open()` (its writer stays inside the COPY, or the load); later
    scans read straight through."""

    def __init__(self, folder: Path, table: pa.Table):
        folder.mkdir(parents=True, exist_ok=True)
        head, tail = str(folder / "0.parquet"), str(folder / "1.parquet")
        pq.write_table(table.slice(0, 1), head)
        pq.write_table(table.slice(1), tail)
        self.opened = threading.Event()
        files = pafs.PyFileSystem(_FirstOpenWaits(tail, self.opened))
        self.dataset = ds.dataset([head, tail], schema=table.schema, format="parquet", filesystem=files)

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def published_months(postgres_url, pg_schema) -> dict[str, tuple[int, str]]:
    """March and April published; their fingerprints."""
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 500))
    write(manager, "2020-04", trips("2020-04", 40))
    return {month: fingerprint(postgres_url, pg_schema, month) for month in ("2020-03", "2020-04")}


def backend_gone(url: str, pid: int) -> bool:
    return not query(url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])


# a. The backend terminated in the middle of its COPY ----------------------------------------------


@pytest.mark.postgres
def test_a_backend_terminated_during_copy_is_tried_again_and_the_other_month_is_untouched(
    postgres_url, pg_schema, published_months, tmp_path
):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema, retry=quick())
    replacement = trips("2020-03", 300)
    rows, warnings = GatedDataset(tmp_path / "march", replacement), RetryWarnings()
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            done = pool.submit(write_logged, manager, "2020-03", rows.dataset, warnings)
            wait_for(lambda: copying_backends(postgres_url, pg_schema, MARCH), "the COPY")
            [pid] = copying_backends(postgres_url, pg_schema, MARCH)
            assert query(postgres_url, "SELECT pg_terminate_backend(%s)", [pid]) == [(True,)]
            wait_for(lambda: backend_gone(postgres_url, pid), "the backend's end")
        finally:
            rows.open()
        done.result(timeout=120)
    # The backend was gone before the gate opened: its FATAL message was waiting for the client, which
    # reads it on its next write (libpq keeps a write's failure until it has read what the server said).
    assert warnings.messages == [
        f"{pg_schema}.trips 2020-03 (PostgreSQL): try 1 of 5 failed with AdminShutdown: terminating connection"
        " due to administrator command; trying again in 0.01 s"
    ]
    assert read(manager, "2020-03").sort_by("trip_key").equals(replacement)
    assert fingerprint(postgres_url, pg_schema, "2020-04") == published_months["2020-04"]


@pytest.mark.postgres
def test_a_stream_whose_backend_is_terminated_fails_without_a_retry_leaving_the_month(
    postgres_url, pg_schema, published_months
):
    """A RecordBatchReader cannot be read twice: the write fails at once, saying why."""
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema, retry=quick())
    rows, warnings = Gated(trips("2020-03", 300)), RetryWarnings()
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            done = pool.submit(write_logged, manager, "2020-03", rows.reader(), warnings)
            wait_for(lambda: copying_backends(postgres_url, pg_schema, MARCH), "the COPY")
            [pid] = copying_backends(postgres_url, pg_schema, MARCH)
            query(postgres_url, "SELECT pg_terminate_backend(%s)", [pid])
            wait_for(lambda: backend_gone(postgres_url, pid), "the backend's end")
        finally:
            rows.open()
        with pytest.raises(
            PostgresWriteError,
            match=rf"^{pg_schema}\.trips 2020-03: \w+: .*; not tried again: its rows came as a stream,"
            " which cannot be read twice$",
        ):
            done.result(timeout=120)
    assert warnings.messages == []
    assert {m: fingerprint(postgres_url, pg_schema, m) for m in published_months} == published_months


# b. A lock held on the month's partition ----------------------------------------------------------


def hold_the_month(url: str, schema: str) -> psycopg.Connection:
    """Another session, in a transaction holding the March partition as a reader would."""
    holder = psycopg.connect(url)
    holder.execute(f'LOCK TABLE "{schema}".{MARCH} IN ACCESS SHARE MODE')
    return holder


@pytest.mark.postgres
def test_a_swap_that_meets_a_held_lock_times_out_and_succeeds_once_it_is_released(
    postgres_url, pg_schema, published_months
):
    manager = PostgresIOManager(
        url=postgres_url, db_schema=pg_schema, lock_timeout_seconds=0.2, retry=quick(first_wait=0.05)
    )
    replacement, warnings = trips("2020-03", 200), RetryWarnings()
    holder = hold_the_month(postgres_url, pg_schema)
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            done = pool.submit(write_logged, manager, "2020-03", replacement, warnings)
            assert warnings.first.wait(timeout=120), "the writer never tried again"
        finally:
            holder.close()  # its transaction ends: the lock is released
        done.result(timeout=120)
    assert warnings.messages[0].startswith(
        f"{pg_schema}.trips 2020-03 (PostgreSQL): try 1 of 5 failed with LockNotAvailable: canceling statement due"
        " to lock timeout"
    )
    assert read(manager, "2020-03").sort_by("trip_key").equals(replacement)
    assert fingerprint(postgres_url, pg_schema, "2020-04") == published_months["2020-04"]


@pytest.mark.postgres
def test_a_lock_never_released_fails_clearly_after_the_tries_leaving_the_month(
    postgres_url, pg_schema, published_months
):
    manager = PostgresIOManager(
        url=postgres_url, db_schema=pg_schema, lock_timeout_seconds=0.1, retry=quick(tries=3)
    )
    warnings = RetryWarnings()
    holder = hold_the_month(postgres_url, pg_schema)
    try:
        with pytest.raises(
            PostgresWriteError,
            match=rf"^{pg_schema}\.trips 2020-03 \(PostgreSQL\): failed after 3 tries over [0-9.]+ s \(tries 3\); the last:"
            r" LockNotAvailable:"
            " canceling statement due to lock timeout",
        ):
            write_logged(manager, "2020-03", trips("2020-03", 200), warnings)
    finally:
        holder.close()
    assert [m.split(" failed with ")[0] for m in warnings.messages] == [
        f"{pg_schema}.trips 2020-03 (PostgreSQL): try 1 of 3",
        f"{pg_schema}.trips 2020-03 (PostgreSQL): try 2 of 3",
    ]
    assert {m: fingerprint(postgres_url, pg_schema, m) for m in published_months} == published_months
    assert tables_in(postgres_url, pg_schema) == ["trips", MARCH, "trips_2020_04"]  # no staging left


# c. The writer killed ----------------------------------------------------------------------------

KILLED_WRITER = """
import sys
import pyarrow as pa
from taxi_platform_tests.test_postgres import PostgresIOManager, trips, write

def batches():
    yield from trips("2020-03", 5_000).to_batches(max_chunksize=1_000)
    sys.stdin.readline()  # stays inside the COPY until killed

table = trips("2020-03", 0)
manager = PostgresIOManager(url=sys.argv[1], db_schema=sys.argv[2])
write(manager, "2020-03", pa.RecordBatchReader.from_batches(table.schema, batches()))
"""


@pytest.mark.postgres
def test_a_writer_killed_during_copy_leaves_the_previous_month_whole(
    postgres_url, pg_schema, published_months
):
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, postgres_url, pg_schema],
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        stdin=subprocess.PIPE,  # never written: the writer's stream waits on it
    )
    try:
        wait_for(lambda: copying_backends(postgres_url, pg_schema, MARCH), "the COPY", writer)
        assert advisory_lock(postgres_url, f"{pg_schema}.{MARCH}", granted=True)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert {m: fingerprint(postgres_url, pg_schema, m) for m in published_months} == published_months
    assert tables_in(postgres_url, pg_schema) == ["trips", MARCH, "trips_2020_04"]
    # The next writer takes the month over (it waits for the server to end the killed session).
    write(PostgresIOManager(url=postgres_url, db_schema=pg_schema), "2020-03", trips("2020-03", 7))
    assert month_counts(postgres_url, pg_schema, "trips") == {"2020-03": 7, "2020-04": 40}


# d. A deadlock -----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_writer_chosen_as_a_deadlock_victim_is_tried_again_and_succeeds(
    postgres_url, pg_schema, published_months, tmp_path
):
    """The writer holds the month's writer lock in its COPY; another session holds the month's
    partition and waits for that lock; the writer's swap then waits for the partition: a cycle. The
    writer's server finds it (deadlock_timeout 50 ms against the other session's hour) and aborts the
    writer's transaction; the retry waits for the other session's end, then succeeds."""
    separator = "&" if "?" in postgres_url else "?"
    quick_to_see_deadlocks = f"{postgres_url}{separator}options=-c%20deadlock_timeout%3D50ms"
    manager = PostgresIOManager(
        url=quick_to_see_deadlocks, db_schema=pg_schema, lock_timeout_seconds=600, retry=quick()
    )
    replacement = trips("2020-03", 250)
    rows, warnings = GatedDataset(tmp_path / "march", replacement), RetryWarnings()
    month_lock = f"{pg_schema}.{MARCH}"
    other = hold_the_month(postgres_url, pg_schema)
    other.execute("SET deadlock_timeout = '1h'")
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            done = pool.submit(write_logged, manager, "2020-03", rows.dataset, warnings)
            wait_for(lambda: copying_backends(postgres_url, pg_schema, MARCH), "the COPY")
            waited = pool.submit(other.execute, "SELECT pg_advisory_xact_lock(hashtext(%s))", [month_lock])
            wait_for(lambda: advisory_lock(postgres_url, month_lock, granted=False), "the other session wait")
            assert advisory_lock(postgres_url, month_lock, granted=False) == [other.info.backend_pid]
            rows.open()  # the writer goes on to its swap, and into the cycle
            waited.result(timeout=120)  # the writer's transaction was aborted: its lock is the other's
            assert warnings.first.wait(timeout=120), "the writer never tried again"
        finally:
            rows.open()
            other.close()
        done.result(timeout=120)
    [warning] = warnings.messages
    assert warning.startswith(
        f"{pg_schema}.trips 2020-03 (PostgreSQL): try 1 of 5 failed with DeadlockDetected: deadlock"
    )
    assert read(manager, "2020-03").sort_by("trip_key").equals(replacement)
    assert fingerprint(postgres_url, pg_schema, "2020-04") == published_months["2020-04"]


# e. A malformed URL ------------------------------------------------------------------------------

PASSWORD = "p%zzsecret"
MALFORMED_URL = f"postgresql://taxi:{PASSWORD}@127.0.0.1:5432/taxi"


def assert_no_password(*texts: str) -> None:
    for text in texts:
        assert "zzsecret" not in text


@pytest.mark.postgres
def test_a_malformed_url_fails_at_once_and_clearly_without_its_password(caplog):
    manager = PostgresIOManager(
        url=MALFORMED_URL, db_schema="taxi", retry=quick(first_wait=3600, max_wait=3600)
    )
    warnings = RetryWarnings()
    with caplog.at_level(logging.DEBUG), pytest.raises(PostgresWriteError) as raised:
        write_logged(manager, "2020-03", trips("2020-03", 3), warnings)
    assert str(raised.value) == (
        "taxi.trips 2020-03: cannot connect to PostgreSQL: ProgrammingError: invalid percent-encoded token: ***"
    )
    assert warnings.messages == []  # not transient: one try
    assert_no_password("".join(traceback.format_exception(raised.value)), caplog.text)


@pytest.mark.postgres
def test_a_malformed_taxi_postgres_url_fails_the_run_with_no_password_in_its_events_or_logs(
    monkeypatch, tmp_path, caplog, capfd
):
    """The profile's IO manager (TAXI_POSTGRES_URL as an EnvVar) in a real run: the step fails, and
    neither the run's events nor the process's logs hold the password."""
    environ = {"TAXI_POSTGRES_URL": MALFORMED_URL, "TAXI_DATA_DIR": str(tmp_path)}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    @dg.asset(key=["postgres", "trips"], partitions_def=MONTHS, metadata=TRIPS_META, io_manager_key="pg")
    def trips_asset() -> pa.Table:
        return trips("2020-03", 3)

    with dg.DagsterInstance.ephemeral() as instance, caplog.at_level(logging.DEBUG):
        result = dg.materialize(
            [trips_asset],
            partition_key="2020-03",
            resources={"pg": resources_for(environ)["postgres_io_manager"]},
            instance=instance,
            raise_on_error=False,
        )
        events = [dg.serialize_value(record) for record in instance.all_logs(result.run_id)]
    assert not result.success
    assert (
        "taxi.trips 2020-03: cannot connect to PostgreSQL: ProgrammingError: invalid percent-encoded token: ***"
        in failure_message(result)
    )
    assert any("cannot connect to PostgreSQL" in event for event in events)
    out, err = capfd.readouterr()
    assert_no_password(*events, caplog.text, out, err)


@pytest.mark.postgres
def test_a_refused_connection_is_tried_again_then_fails_naming_the_month_without_the_password():
    """No server listens on the socket, whose folder is named like the password: the driver's message
    quotes the path, so the password would leak through it if it were not redacted."""
    manager = PostgresIOManager(
        url="postgresql://taxi:s3cretpw@/taxi?host=/nonexistent/s3cretpw&port=1",
        db_schema="taxi",
        retry=quick(tries=2),
    )
    warnings = RetryWarnings()
    failure = (
        "cannot connect to PostgreSQL: OperationalError: connection is bad: connection to server on socket"
        ' "/nonexistent/***/.s.PGSQL.1" failed: No such file or directory'
    )
    with pytest.raises(PostgresWriteError) as raised:
        write_logged(manager, "2020-03", trips("2020-03", 3), warnings)
    message = str(raised.value).splitlines()[0]
    assert re.fullmatch(
        r"taxi\.trips 2020-03 \(PostgreSQL\): failed after 2 tries over [0-9.]+ s \(tries 2\); the last: "
        + re.escape(failure),
        message,
    ), message
    [warning] = warnings.messages
    assert warning.startswith(f"taxi.trips 2020-03 (PostgreSQL): try 1 of 2 failed with {failure}\n")
    assert warning.endswith("; trying again in 0.01 s")
    assert "s3cretpw" not in "".join(traceback.format_exception(raised.value)) + warning


# f. A DuckDB file held by another process ---------------------------------------------------------

HOLDER = """
import sys
import duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
con.close()
print("released", flush=True)
"""


class LockHolder:
    """Another process holding the DuckDB file until `release()`."""

    def __init__(self, path: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline() == "held\n"

    def release(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "released\n"
        assert self.process.wait(timeout=60) == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def duckdb_retries():
    """The warnings the DuckDB warehouse logs before it tries the file again."""
    warnings, logger = RetryWarnings(), logging.getLogger("taxi_platform.io_managers.warehouse")
    logger.addHandler(warnings)
    yield warnings
    logger.removeHandler(warnings)


def month_of_days(first: date) -> pa.Table:
    return days(*(first + timedelta(days=d) for d in range(28)))


def duckdb_fingerprint(path: Path, month: str) -> tuple[int, str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            "SELECT count(*), md5(coalesce(string_agg(CAST(t AS VARCHAR), '|' ORDER BY n), ''))"
            " FROM taxi.trips t WHERE strftime(day, '%Y-%m') = ?",
            [month],
        ).fetchone()


@pytest.fixture
def duckdb_published(tmp_path) -> dict[str, tuple[int, str]]:
    """March and April in the DuckDB warehouse at tmp_path/w.duckdb; their fingerprints."""
    manager = DuckDBWarehouse(sql=DuckDBSQL(path=str(tmp_path / "w.duckdb")))
    store(manager, month_of_days(date(2020, 3, 1)), "2020-03")
    store(manager, month_of_days(date(2020, 4, 1)), "2020-04")
    return {m: duckdb_fingerprint(tmp_path / "w.duckdb", m) for m in ("2020-03", "2020-04")}


@pytest.mark.fast
def test_a_duckdb_file_held_for_a_while_is_tried_again_then_written(
    tmp_path, duckdb_published, duckdb_retries
):
    path = tmp_path / "w.duckdb"
    # No limit on the tries: the writer waits as long as the file is held, however long that takes here.
    manager = DuckDBWarehouse(sql=DuckDBSQL(path=str(path), retry=quick(tries=None)))
    replacement = days(date(2020, 3, 7), date(2020, 3, 9))
    with ThreadPoolExecutor(max_workers=1) as pool, LockHolder(path) as holder:
        done = pool.submit(store, manager, replacement, "2020-03")
        assert duckdb_retries.first.wait(timeout=120), "the writer never found the file locked"
        assert not done.done()  # it cannot finish while the file is held, nor give up
        holder.release()
        done.result(timeout=120)
    # One warning a try that met the lock, in order, each with the settings' wait after it.
    purpose = f"taxi.trips rows with day in [2020-03-01, 2020-04-01) (the warehouse {path})"
    for n, warning in enumerate(duckdb_retries.messages, start=1):
        assert warning.startswith(f"{purpose}: try {n} failed with IOException: IO Error: Could not set lock")
        assert f"(PID {holder.process.pid})" in warning  # the holder named
        assert warning.endswith(f"; trying again in {min(0.01 * 2 ** (n - 1), 0.1):.2f} s")
    assert load(manager, "2020-03").to_pydict() == replacement.to_pydict()
    assert duckdb_fingerprint(path, "2020-04") == duckdb_published["2020-04"]


@pytest.mark.fast
def test_a_duckdb_file_never_released_fails_clearly_after_the_tries_leaving_the_months(
    tmp_path, duckdb_published, duckdb_retries
):
    path = tmp_path / "w.duckdb"
    manager = DuckDBWarehouse(sql=DuckDBSQL(path=str(path), retry=quick(tries=3)))
    with LockHolder(path) as holder:
        with pytest.raises(WarehouseLocked) as raised:
            store(manager, days(date(2020, 3, 7)), "2020-03")
        holder.release()
    assert str(raised.value).startswith(
        f"taxi.trips rows with day in [2020-03-01, 2020-04-01) (the warehouse {path}): failed after 3 tries"
    )
    assert "(tries 3); the last: IOException: IO Error: Could not set lock on file" in str(raised.value)
    assert f"(PID {holder.process.pid})" in str(raised.value)
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value.__cause__, duckdb.IOException)
    assert len(duckdb_retries.messages) == 2
    assert {m: duckdb_fingerprint(path, m) for m in duckdb_published} == duckdb_published
