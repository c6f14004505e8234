"""A writer killed with SIGKILL while it replaces a published month never leaves a mix: at 20 instants
spread over its staging and its commit, every reader sees exactly the old month or exactly the new
one, and the next writer succeeds. Two writers of one month at once, ten times: the month is always
exactly one of them, in the lake and in the sinks that load it, and the loser says why.

The writer is a child process publishing through the `Lake` resource (the ingest step's own path,
without the download), on a month of 60,000 rows in 12 batches; the kill instants are spread over the
time an unkilled writer takes from its start of staging to its exit.
"""

import hashlib
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import dagster as dg
import duckdb
import psycopg
import pytest

from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.postgres import PostgresIOManager
from taxi_platform.io_managers.warehouse import DuckDBSQL, DuckDBWarehouse, install_iceberg_reader
from taxi_platform.lake.resource import Lake

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.slow]

MONTHS = dg.MonthlyPartitionsDefinition(start_date="2020-01", fmt="%Y-%m")
KEY = dg.AssetKey(["clean", "trips"])
MONTH, ROWS, BATCH = "2020-03", 60_000, 5_000

WRITER = """
import sys
import pyarrow as pa
from datetime import date, timedelta
import dagster as dg
from taxi_platform.lake.resource import Lake
from taxi_platform.lake.tables import PublishConflict

root, variant, rows, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
months = dg.MonthlyPartitionsDefinition(start_date="2020-01", fmt="%Y-%m")
lake = Lake(root=root)
key = dg.AssetKey(["clean", "trips"])
staged = lake.stage(key, months, "day")
print("ready", flush=True)  # imported: staging and the commit begin
writer = staged.writer("2020-03", pa.schema([("n", pa.int64()), ("amount", pa.float64()), ("day", pa.date32())]))
for start in range(0, rows, batch):
    n = pa.array(range(start, start + batch), pa.int64())
    day = pa.array([date(2020, 3, 1) + timedelta(days=i % 31) for i in range(start, start + batch)], pa.date32())
    writer.add(pa.record_batch([n, pa.array([variant * 1.5] * batch), day], names=["n", "amount", "day"]))
writer.close()
print("staged", flush=True)
try:
    lake.publish(key, staged, ["2020-03"], f"writer-{variant}")
except PublishConflict as error:
    staged.discard()
    print(f"conflict: {error}", flush=True)
    sys.exit(3)
print("published", flush=True)
"""


def start_writer(root, variant: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(variant), str(ROWS), str(BATCH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def digest(rows: list[tuple]) -> tuple[int, str]:
    return len(rows), hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()


def expected(variant: int) -> tuple[int, str]:
    return digest([(n, variant * 1.5, date(2020, 3, 1) + timedelta(days=n % 31)) for n in range(ROWS)])


def lake_reader(lake: Lake) -> tuple[int, str]:
    table = lake.read(KEY, MONTH, MONTHS, "day").to_table(columns=["n", "amount", "day"])
    return digest(list(zip(*(table[c].to_pylist() for c in ("n", "amount", "day")), strict=True)))


def duckdb_reader(lake: Lake) -> tuple[int, str]:
    with duckdb.connect() as con:  # the extension installed from its wheel by the warehouse's first view
        return digest(con.execute(f"SELECT n, amount, day FROM iceberg_scan('{lake.path(KEY)}')").fetchall())


def sink_readers(lake: Lake, postgres: PostgresIOManager, url: str, schema: str, warehouse, path) -> dict:
    """Both sinks load the month from the lake as it is now, then give back what they hold."""
    rows = lake.read(KEY, MONTH, MONTHS, "day")
    for key, manager in (
        (dg.AssetKey(["postgres", "trips"]), postgres),
        (dg.AssetKey(["warehouse", "trips"]), warehouse),
    ):
        with dg.build_output_context(
            asset_key=key,
            partition_key=MONTH,
            asset_partitions_def=MONTHS,
            definition_metadata={PARTITION_COLUMN: "day"},
        ) as context:
            manager.handle_output(context, rows)
    with psycopg.connect(url) as conn:
        in_postgres = conn.execute(f'SELECT n, amount, day FROM "{schema}".trips').fetchall()
    with duckdb.connect(str(path), read_only=True) as con:
        in_warehouse = con.execute("SELECT n, amount, day FROM taxi.trips").fetchall()
    return {"postgres": digest(in_postgres), "warehouse": digest(in_warehouse)}


@pytest.fixture
def stores(tmp_path, postgres_url, pg_schema):
    lake = Lake(root=str(tmp_path / "lake"))
    postgres = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    warehouse = DuckDBWarehouse(sql=DuckDBSQL(path=str(tmp_path / "w.duckdb")), lake_root=lake.root)
    with duckdb.connect() as con:  # DuckDB's iceberg reader, as the warehouse installs it
        install_iceberg_reader(con)
    return lake, postgres, warehouse, tmp_path / "w.duckdb"


def test_a_writer_killed_at_any_instant_leaves_the_old_month_or_the_new_one(stores, postgres_url, pg_schema):
    lake, postgres, warehouse, path = stores
    first = start_writer(lake.root, 1)
    assert first.stdout.readline() == "ready\n"
    started = time.monotonic()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    whole = time.monotonic() - started  # one unkilled writer's staging and commit
    old, new = expected(1), expected(2)
    outcomes = []
    for instant in range(1, 21):
        writer = start_writer(lake.root, 2)
        assert writer.stdout.readline() == "ready\n"
        time.sleep(whole * instant / 21)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        seen = {"lake": lake_reader(lake), "duckdb": duckdb_reader(lake)}
        seen |= sink_readers(lake, postgres, postgres_url, pg_schema, warehouse, path)
        month = set(seen.values())
        assert month in ({old}, {new}), (instant, seen)
        outcomes.append("new" if month == {new} else "old")
        if month == {new}:  # the kill came after the commit: put the old month back for the next instant
            again = start_writer(lake.root, 1)
            assert again.wait(timeout=300) == 0, again.stderr.read()
    finisher = start_writer(lake.root, 3)
    assert finisher.wait(timeout=300) == 0, finisher.stderr.read()
    assert lake_reader(lake) == expected(3)
    assert "old" in outcomes  # killed before the commit at least once: nothing of it was seen


def test_two_writers_of_one_month_at_once_ten_times_leave_exactly_one(stores, postgres_url, pg_schema):
    lake, postgres, warehouse, path = stores
    assert start_writer(lake.root, 1).wait(timeout=300) == 0
    for attempt in range(10):
        variants = (2 + 2 * attempt, 3 + 2 * attempt)
        with ThreadPoolExecutor(2) as pool:
            writers = list(pool.map(lambda v: start_writer(lake.root, v), variants))
            codes = [w.wait(timeout=300) for w in writers]
        assert 0 in codes and set(codes) <= {0, 3}, [w.stderr.read() for w in writers]
        for writer, code in zip(writers, codes, strict=True):
            if code == 3:
                assert "were published by another run" in writer.stdout.read()
        month = lake_reader(lake)
        assert month in {expected(v) for v in variants}
        assert sink_readers(lake, postgres, postgres_url, pg_schema, warehouse, path) == {
            "postgres": month,
            "warehouse": month,
        }
