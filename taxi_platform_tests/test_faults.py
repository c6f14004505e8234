"""Faults end to end: each meets the real source server, lake, PostgreSQL and DuckDB warehouse.

Green 2020-10 is first loaded everywhere. Each fault then strikes a run of the month (or of the
zones); the outcome is a success after retry or a clear error, and what was published (the lake's
files, the Postgres and warehouse rows of the month) is exactly as it was.
"""

import gzip
import threading
from datetime import date, timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest

from taxi_platform import cleaning
from taxi_platform_tests.helpers import (
    course_counts,
    dagster_materialize,
    failure_description,
    failure_message,
    green_trip_keys,
    gzip_csv,
    lake_digests,
    lake_table,
    materializations,
    materialize,
    retries,
    unpublished_files,
)

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

MONTH = "2020-10"
SOURCE = f"releases/green/green_tripdata_{MONTH}.csv.gz"
EVERY_STORE = (*green_trip_keys(), "postgres/green_trips", "warehouse/green_trips")


def published_state(data_dir: Path, url: str, schema: str, month: str = MONTH) -> dict:
    """(rows, sha256 of the rows) of every month each lake table holds, as its readers see it, and
    (rows, md5 of the rows) of the month in Postgres and in the warehouse."""
    start = date.fromisoformat(f"{month}-01")
    end = (start + timedelta(days=31)).replace(day=1)
    files = {key: lake_digests(data_dir, key) for key in green_trip_keys()}
    month_rows = (
        "SELECT count(*), md5(coalesce(string_agg(CAST(t AS {text}), '|' ORDER BY trip_key), ''))"
        f" FROM {{table}} t WHERE pickup_date >= DATE '{start}' AND pickup_date < DATE '{end}'"
    )
    with psycopg.connect(url) as conn:
        postgres = conn.execute(month_rows.format(text="text", table=f'"{schema}".green_trips')).fetchone()
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        warehouse = con.execute(month_rows.format(text="VARCHAR", table="taxi.green_trips")).fetchone()
    return {"lake": files, "postgres": postgres, "warehouse": warehouse}


@pytest.fixture
def loaded(taxi_env, postgres_url, pg_schema):
    """Green 2020-10 published in the lake, Postgres and the warehouse; returns a reader of the state."""
    materialize(*EVERY_STORE, partition=MONTH)

    def state() -> dict:
        return published_state(taxi_env, postgres_url, pg_schema)

    assert state()["postgres"][0] > 1000
    return state


def served_lines(published: Path) -> list[str]:
    return gzip.decompress((published / SOURCE).read_bytes()).decode().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keep", "failed_check"),
    [(lambda rows: [], "has_rows"), (lambda rows: rows[::10], "no_sharp_shrink")],
    ids=["empty", "a-tenth"],
)
def test_a_month_republished_empty_or_shrunk_is_refused_from_the_cli_and_nothing_changes(
    loaded, published, publish, tmp_path, keep, failed_check
):
    header, *rows = served_lines(published)
    publish(SOURCE, gzip_csv("\n".join([header, *keep(rows)]) + "\n"))
    before = loaded()
    done = dagster_materialize(*EVERY_STORE, month=MONTH, home=tmp_path / "home")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"green {MONTH} failed {failed_check}" in output
    assert "the published months are unchanged" in output
    assert loaded() == before


def test_a_shrink_allowed_by_run_config_is_published_everywhere(loaded, published, publish, taxi_env):
    header, *rows = served_lines(published)
    shrunk = publish(SOURCE, gzip_csv("\n".join([header, *rows[::10]]) + "\n"))
    expected = course_counts(shrunk, MONTH)["clean"]  # with pandas, from the file served
    config = {"ops": {"ingest_green_trips": {"config": {"allow_shrink": True}}}}
    result = materialize(*EVERY_STORE, partition=MONTH, run_config=config)
    assert materializations(result)[("clean/green_trips", MONTH)]["dagster/row_count"] == expected
    state = loaded()
    assert state["postgres"][0] == state["warehouse"][0] == expected


def test_a_month_failing_a_check_is_not_published_and_its_sinks_do_not_run(loaded, monkeypatch):
    """A cleaning defect (a clean row kept twice) is caught on the staged files, before publishing."""
    split = cleaning.MonthCleaner.split

    def keeps_a_row_twice(self, batch):
        kept, rejected = split(self, batch)
        return kept.take(list(range(kept.num_rows)) + [0]) if kept.num_rows else kept, rejected

    before = loaded()
    monkeypatch.setattr(cleaning.MonthCleaner, "split", keeps_a_row_twice)
    result = materialize(*EVERY_STORE, partition=MONTH, raise_on_error=False)
    message = failure_message(result)
    assert not result.success and materializations(result) == {}
    assert (
        f"green {MONTH} failed trip_key_unique" in message and f"green {MONTH} failed rows_balance" in message
    )
    failed = {c.check_name for c in result.get_asset_check_evaluations() if not c.passed}
    assert failed == {"trip_key_unique", "rows_balance"}
    assert {e.step_key for e in result.get_step_failure_events()} == {"ingest_green_trips"}
    assert loaded() == before


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("html", "green 2020-10: {url} returned an HTML page, not the data file"),
        ("html_as_data", "green 2020-10: {url} returned an HTML page, not the data file"),
        ("truncated", "green 2020-10 ({url}): cannot read the csv file: Truncated compressed stream"),
    ],
    ids=["html", "html_as_data", "truncated"],
)
def test_a_source_answer_that_cannot_heal_fails_at_once_and_nothing_changes(
    loaded, source_server, fault, error
):
    before = loaded()
    source_server.fail(f"/{SOURCE}", fault)
    result = materialize(*EVERY_STORE, partition=MONTH, raise_on_error=False)
    assert not result.success and retries(result) == []
    assert failure_description(result) == error.format(url=f"{source_server.url}/{SOURCE}")
    assert loaded() == before


def test_a_file_with_a_changed_header_fails_naming_the_columns_and_nothing_changes(
    loaded, published, publish
):
    header, *rows = served_lines(published)
    publish(SOURCE, gzip_csv("\n".join([header.replace("tip_amount", "tip"), *rows]) + "\n"))
    before = loaded()
    result = materialize(*EVERY_STORE, partition=MONTH, raise_on_error=False)
    assert not result.success and retries(result) == []
    assert "missing columns ['tip_amount']" in failure_message(result)
    assert loaded() == before


@pytest.mark.parametrize("faults", [("cut",), ("drop", "500", "cut")], ids=["reset", "reset-5xx-reset"])
def test_a_connection_broken_mid_file_heals_in_the_download(loaded, source_server, faults):
    before = loaded()
    source_server.fail(f"/{SOURCE}", *faults)
    result = materialize(*EVERY_STORE, partition=MONTH)
    assert result.success and retries(result) == []
    assert loaded() == before  # the same file again: the same data


@pytest.mark.slow
def test_a_source_down_for_a_minute_heals_by_itself_from_the_cli(
    loaded, published, source_server, taxi_env, postgres_url, pg_schema, tmp_path
):
    november = "releases/green/green_tripdata_2020-11.csv.gz"
    before = loaded()
    source_server.outage(f"/{november}", seconds=60)
    done = dagster_materialize(*EVERY_STORE, month="2020-11", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    # This test's requests only (the fixture starts each test with none): tried again and again.
    assert len([r for r in source_server.requests if r[1] == f"/{november}"]) > 2
    loaded_november = published_state(taxi_env, postgres_url, pg_schema, "2020-11")
    expected = course_counts(published / november, "2020-11")["clean"]  # with pandas, from the file served
    assert loaded_november["postgres"][0] == loaded_november["warehouse"][0] == expected
    after = loaded()
    # October as it was in every lake table, November's added.
    assert all(after["lake"][key].items() >= months.items() for key, months in before["lake"].items())
    assert (after["postgres"], after["warehouse"]) == (before["postgres"], before["warehouse"])


def test_two_runs_writing_one_month_at_once_leave_it_whole(loaded, taxi_env):
    before = loaded()
    results = []

    def run():
        results.append(materialize(*green_trip_keys(), partition=MONTH, raise_on_error=False))

    writers = [threading.Thread(target=run) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert any(result.success for result in results)
    for lost in (result for result in results if not result.success):  # staged against a replaced month
        assert f"partitions {MONTH} were published by another run" in failure_message(lost)
    assert loaded() == before  # the same month, once: no row lost, none twice
    for key in green_trip_keys():
        assert unpublished_files(taxi_env, key) == []


def test_a_bad_zones_file_is_refused_and_the_previous_zones_stay(
    taxi_env, published, publish, postgres_url, pg_schema
):
    materialize("reference/taxi_zones", "postgres/taxi_zones")
    lake_before = lake_table(taxi_env, "reference/taxi_zones")
    with psycopg.connect(postgres_url) as conn:
        postgres_before = conn.execute(f'SELECT * FROM "{pg_schema}".taxi_zones ORDER BY 1').fetchall()
    lines = (published / "misc/taxi_zone_lookup.csv").read_text().splitlines()
    publish("misc/taxi_zone_lookup.csv", "\n".join([*lines, lines[7]]).encode())  # a LocationID twice
    result = materialize("reference/taxi_zones", "postgres/taxi_zones", raise_on_error=False)
    assert not result.success and retries(result) == []
    assert "LocationID repeated: [7]" in failure_message(result)
    assert lake_table(taxi_env, "reference/taxi_zones").equals(lake_before)
    with psycopg.connect(postgres_url) as conn:
        assert (
            conn.execute(f'SELECT * FROM "{pg_schema}".taxi_zones ORDER BY 1').fetchall() == postgres_before
        )
