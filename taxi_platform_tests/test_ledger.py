"""The load ledger (`load_audit`): a row per published month per sink, in the same transaction as its
data, and a row per failed attempt that leaves the published row and data alone."""

import duckdb
import psycopg
import pyarrow as pa
import pytest

from taxi_platform.io_managers.postgres import PostgresIOManager, PostgresWriteError
from taxi_platform.ledger import LEDGER_SCHEMA, Audited
from taxi_platform.profiles import code_version
from taxi_platform_tests.helpers import (
    dagster_materialize,
    green_trip_keys,
    materializations,
    materialize,
    sha256_of,
)
from taxi_platform_tests.test_postgres import trips, write

pytestmark = pytest.mark.postgres

MONTH = "2020-10"


def ledger(url: str, schema: str) -> list[dict]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(f'SELECT * FROM "{schema}".load_audit ORDER BY outcome DESC').fetchall()


def test_a_loaded_month_has_its_source_file_counts_checks_and_code_in_both_ledgers(
    taxi_env, published, postgres_url, pg_schema
):
    result = materialize(*green_trip_keys(), "postgres/green_trips", "warehouse/green_trips", partition=MONTH)
    clean = materializations(result)[("clean/green_trips", MONTH)]
    served = published / f"releases/green/green_tripdata_{MONTH}.csv.gz"
    # The auditor's question, in one query: which source file and which code made what Postgres holds.
    with psycopg.connect(postgres_url) as conn:
        answer = conn.execute(
            f'SELECT source_url, source_sha256, rows_loaded, code_version FROM "{pg_schema}".load_audit'
            " WHERE asset_key = 'postgres/green_trips' AND partition_key = %s AND outcome = 'published'"
            " ORDER BY published_at DESC LIMIT 1",
            [MONTH],
        ).fetchone()
        held = conn.execute(f'SELECT count(*) FROM "{pg_schema}".green_trips_2020_10').fetchone()[0]
    assert answer[1:] == (sha256_of(served), held, code_version())
    assert answer[0].endswith(f"/releases/green/green_tripdata_{MONTH}.csv.gz")
    (row,) = ledger(postgres_url, pg_schema)
    assert row["rows_clean"] == held == clean["dagster/row_count"]
    assert (row["rows_raw"], row["rows_rejected"]) == (clean["raw_rows"], clean["rejected_rows"])
    assert row["checks"].startswith("has_rows=passed, no_sharp_shrink=passed")
    assert row["run_id"] == result.run_id and row["started_at"] <= row["published_at"]
    with duckdb.connect(str(taxi_env / "warehouse.duckdb"), read_only=True) as con:
        warehouse = con.execute(
            "SELECT asset_key, partition_key, source_sha256, rows_loaded, outcome FROM taxi.load_audit"
        ).fetchall()
    assert warehouse == [("warehouse/green_trips", MONTH, sha256_of(served), held, "published")]


def test_a_failed_write_adds_a_failure_row_and_leaves_the_published_row_and_data(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    source = {"source_url": "https://example.test/trips_2020-03.parquet", "source_sha256": "ab" * 32}
    write(manager, "2020-03", Audited(trips("2020-03", 4), source))
    twice = pa.concat_tables([trips("2020-03", 2), trips("2020-03", 1)])  # a repeated trip_key
    with pytest.raises(PostgresWriteError, match="UniqueViolation"):
        write(manager, "2020-03", Audited(twice, source | {"source_sha256": "cd" * 32}))
    published, failed = ledger(postgres_url, pg_schema)
    assert (published["outcome"], published["rows_loaded"], published["source_sha256"]) == (
        "published",
        4,
        "ab" * 32,
    )
    assert (failed["outcome"], failed["rows_loaded"], failed["published_at"]) == ("failed", None, None)
    assert failed["source_sha256"] == "cd" * 32 and "UniqueViolation" in failed["error"]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{pg_schema}".trips').fetchone()[0] == 4


def test_a_write_without_provenance_keeps_no_ledger(postgres_url, pg_schema):
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", trips("2020-03", 3))
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", [f'"{pg_schema}".load_audit']).fetchone() == (None,)


@pytest.mark.slow
def test_a_month_loaded_from_the_cli_answers_the_ledger_query(
    taxi_env, published, postgres_url, pg_schema, tmp_path
):
    done = dagster_materialize(
        *green_trip_keys(), "postgres/green_trips", month=MONTH, home=tmp_path / "home"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with psycopg.connect(postgres_url) as conn:
        answer = conn.execute(
            f'SELECT source_sha256, rows_loaded FROM "{pg_schema}".load_audit WHERE partition_key = %s',
            [MONTH],
        ).fetchall()
        held = conn.execute(f'SELECT count(*) FROM "{pg_schema}".green_trips_2020_10').fetchone()[0]
    assert answer == [(sha256_of(published / f"releases/green/green_tripdata_{MONTH}.csv.gz"), held)]


def test_a_ledger_table_of_an_earlier_version_gains_the_new_columns(postgres_url, pg_schema):
    """A ledger table made before `code_version` was one of its columns: the next audited write adds
    the column, and the earlier row reads it as null."""
    earlier = [field for field in LEDGER_SCHEMA if field.name != "code_version"]
    types = {pa.string(): "text", pa.int64(): "bigint", pa.timestamp("us", tz="UTC"): "timestamptz"}
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
        conn.execute(
            f'CREATE TABLE "{pg_schema}".load_audit ('
            + ", ".join(f'"{field.name}" {types[field.type]}' for field in earlier)
            + ")"
        )
        conn.execute(
            f"INSERT INTO \"{pg_schema}\".load_audit (asset_key, outcome) VALUES ('postgres/earlier', 'published')"
        )
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    write(manager, "2020-03", Audited(trips("2020-03", 4), {"code_version": "0.1.0+abc"}))
    rows = ledger(postgres_url, pg_schema)
    assert sorted((row["asset_key"], row["code_version"], row["rows_loaded"]) for row in rows) == [
        ("postgres/earlier", None, None),
        ("postgres/trips", "0.1.0+abc", 4),
    ]
    assert list(rows[0]) == [field.name for field in earlier] + ["code_version"]
