"""Every month a version: a wrong month rolled back in the lake and every sink, and rolled back again.

Green 2020-10 is published (version 1), then republished with every amount doubled, which passes every
check (version 2); `rollback_month` puts it back. Each state is read from the stores themselves: the
lake's tables through their readers (rows and sha256 of the rows), PostgreSQL and the DuckDB warehouse
(rows and md5 of the rows), and the PostgreSQL ledger.
"""

import csv
import io

import dagster as dg
import psycopg
import pytest

from taxi_platform.definitions import defs
from taxi_platform_tests.helpers import gzip_csv, materialize
from taxi_platform_tests.test_faults import EVERY_STORE, MONTH, SOURCE, published_state, served_lines

pytestmark = [pytest.mark.faults, pytest.mark.postgres]
AMOUNTS = (
    "fare_amount",
    "extra",
    "mta_tax",
    "tip_amount",
    "tolls_amount",
    "improvement_surcharge",
    "total_amount",
)


def doubled(lines: list[str]) -> bytes:
    """The month's CSV with every amount doubled: the same rows, and every check passes."""
    rows = list(csv.reader(lines))
    header, body = rows[0], rows[1:]
    columns = [header.index(name) for name in AMOUNTS]
    for row in body:
        for i in columns:
            if row[i]:
                row[i] = repr(2 * float(row[i]))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *body])
    return gzip_csv(out.getvalue())


def roll_back(**config) -> dg.ExecuteInProcessResult:
    job = defs().resolve_job_def("rollback_month")
    return job.execute_in_process(
        run_config={"ops": {"rollback_month_op": {"config": {"dataset": "green", "month": MONTH, **config}}}}
    )


def ledger(url: str, schema: str) -> list[tuple]:
    """(asset, operation, restored run, lake version) of the month's published ledger rows, oldest first."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            f'SELECT asset_key, operation, restored_run_id, lake_version FROM "{schema}".load_audit'
            " WHERE partition_key = %s AND outcome = 'published' ORDER BY published_at",
            [MONTH],
        ).fetchall()


def test_a_wrong_month_is_rolled_back_everywhere_and_the_rollback_rolled_back(
    taxi_env, published, publish, postgres_url, pg_schema
):
    def state():
        return published_state(taxi_env, postgres_url, pg_schema)

    first = materialize(*EVERY_STORE, partition=MONTH)
    version_1 = state()
    publish(SOURCE, doubled(served_lines(published)))
    materialize(*EVERY_STORE, partition=MONTH)
    version_2 = state()
    assert version_2["postgres"][0] == version_1["postgres"][0]  # the same trips, other amounts
    assert version_2["postgres"][1] != version_1["postgres"][1]
    assert version_2["warehouse"] != version_1["warehouse"]
    assert version_2["lake"]["clean/green_trips"] != version_1["lake"]["clean/green_trips"]

    result = roll_back()
    assert result.success
    assert state() == version_1
    first_run = first.run_id
    rolled = [row for row in ledger(postgres_url, pg_schema) if row[1] == "rollback"]
    assert rolled and rolled[-1][:3] == ("postgres/green_trips", "rollback", first_run)
    restored = {
        (event.materialization.asset_key.to_user_string(), event.materialization.partition)
        for event in result.get_asset_materialization_events()
    }
    assert restored == {(key, MONTH) for key in EVERY_STORE}

    assert roll_back().success  # the version before the rollback: version 2 again
    assert state() == version_2
    loads = ledger(postgres_url, pg_schema)
    assert [row[1] for row in loads] == ["load", "load", "rollback", "rollback"]
    assert loads[-1][3] > loads[-2][3] > loads[1][3] > loads[0][3]  # every load a newer lake version


def test_a_rollback_to_a_run_that_published_nothing_fails_naming_the_kept_runs(
    taxi_env, postgres_url, pg_schema
):
    materialize(*EVERY_STORE, partition=MONTH)
    before = published_state(taxi_env, postgres_url, pg_schema)
    job = defs().resolve_job_def("rollback_month")
    result = job.execute_in_process(
        run_config={
            "ops": {"rollback_month_op": {"config": {"dataset": "green", "month": MONTH, "to_run": "nope"}}}
        },
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert (
        f"green {MONTH}: run nope published no kept version (kept: "
        in failure.step_failure_data.error.message
    )
    assert published_state(taxi_env, postgres_url, pg_schema) == before
