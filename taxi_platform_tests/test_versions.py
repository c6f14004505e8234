"""Every month a version: a wrong month rolled back in the lake and every sink, and rolled back again;
the vacuum's retention; an old parquet lake converted.

Green 2020-10 is published with its dbt models (version 1), then republished with every amount doubled,
which passes every check (version 2); `rollback_month` puts it back. Each state is read from the stores
themselves: the lake's tables through their readers (rows and sha256 of the rows), PostgreSQL, the
DuckDB warehouse and its models (rows and md5 of the rows), and the PostgreSQL ledger.
"""

import csv
import io
import re
import threading
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.checks.blocking import CHECKS, SHRINK_GUARD
from taxi_platform.datasets import DATASETS
from taxi_platform.definitions import defs
from taxi_platform.io_managers.postgres import PostgresIOManager
from taxi_platform.io_managers.warehouse import DuckDBSQL, DuckDBWarehouse
from taxi_platform.lake.resource import Lake, version_of
from taxi_platform.ledger import Audited, StaleLakeVersion
from taxi_platform_tests.helpers import (
    green_trip_keys,
    gzip_csv,
    lake_digests,
    lake_files,
    lake_table,
    materialize,
)
from taxi_platform_tests.test_faults import EVERY_STORE, MONTH, SOURCE, published_state, served_lines
from taxi_platform_tests.test_models import DIMENSIONS, MODELS

pytestmark = pytest.mark.postgres
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


# The models built on green trips, each with its month column.
GREEN_MODELS = {
    "fct_trips": "pickup_date",
    "fct_monthly_zone_revenue": "revenue_month",
    "daily_zone_trips": "pickup_date",
    "monthly_summary": "pickup_date",
}


def models_state(data_dir) -> dict[str, tuple]:
    """(rows, md5 of the rows) of the month in each model table of the warehouse, doubles to 9
    decimals (DuckDB adds a month's doubles in no fixed order: their last bits vary between builds)."""
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:

        def digest(table: str, column: str) -> tuple:
            columns = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'taxi' AND table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
            values = ", ".join(f"round({name}, 9)" if kind == "DOUBLE" else name for name, kind in columns)
            return con.execute(
                "SELECT count(*), md5(coalesce(string_agg(row, '|' ORDER BY row), ''))"
                f" FROM (SELECT CAST(({values}) AS VARCHAR) AS row FROM taxi.{table}"
                f" WHERE strftime({column}, '%Y-%m') = ?)",
                [MONTH],
            ).fetchone()

        return {table: digest(table, column) for table, column in GREEN_MODELS.items()}


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, bool]]:
    """{asset: {check: passed}} of a run's check evaluations of the month."""
    found: dict[str, dict[str, bool]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            check = event.asset_check_evaluation_data
            assert check.partition == MONTH
            found.setdefault(check.asset_key.to_user_string(), {})[check.check_name] = check.passed
    return found


def roll_back(raise_on_error: bool = True, **config) -> dg.ExecuteInProcessResult:
    job = defs().resolve_job_def("rollback_month")
    return job.execute_in_process(
        run_config={"ops": {"rollback_month_op": {"config": {"dataset": "green", "month": MONTH, **config}}}},
        raise_on_error=raise_on_error,
    )


def ledger(url: str, schema: str) -> list[tuple]:
    """(asset, operation, restored run, lake version) of the month's published ledger rows, oldest first."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            f'SELECT asset_key, operation, restored_run_id, lake_version FROM "{schema}".load_audit'
            " WHERE partition_key = %s AND outcome = 'published' ORDER BY published_at",
            [MONTH],
        ).fetchall()


@pytest.mark.faults
def test_a_wrong_month_is_rolled_back_everywhere_and_the_rollback_rolled_back(
    taxi_env, published, publish, postgres_url, pg_schema
):
    def state():
        return {**published_state(taxi_env, postgres_url, pg_schema), "models": models_state(taxi_env)}

    materialize("reference/taxi_zones", "warehouse/taxi_zones")
    materialize(*DIMENSIONS)
    first = materialize(*EVERY_STORE, partition=MONTH)
    materialize(*MODELS, partition=MONTH)
    version_1 = state()
    publish(SOURCE, doubled(served_lines(published)))
    materialize(*EVERY_STORE, partition=MONTH)
    materialize(*MODELS, partition=MONTH)
    version_2 = state()
    assert version_2["postgres"][0] == version_1["postgres"][0]  # the same trips, other amounts
    assert version_2["postgres"][1] != version_1["postgres"][1]
    assert version_2["warehouse"] != version_1["warehouse"]
    assert version_2["lake"]["clean/green_trips"] != version_1["lake"]["clean/green_trips"]
    for table, (rows, md5) in version_2["models"].items():
        assert rows == version_1["models"][table][0] > 0, table
        assert md5 != version_1["models"][table][1], table  # every model holds an amount

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
    models = {"staging/stg_green_trips", "core/fct_trips_pending", "core/fct_trips"}
    models |= {
        f"marts/{name}" for name in ("fct_monthly_zone_revenue", "daily_zone_trips", "monthly_summary")
    }
    assert restored == {(key, MONTH) for key in (*EVERY_STORE, *models)}
    judged = checks_of(result)
    # The restored clean month judged by every blocking check but the shrink guard; the models by dbt.
    assert judged.pop("clean/green_trips") == {name: True for name in CHECKS if name != SHRINK_GUARD}
    assert judged and all(all(passed.values()) for passed in judged.values())

    assert roll_back().success  # the version before the rollback: version 2 again
    assert state() == version_2
    loads = ledger(postgres_url, pg_schema)
    assert [row[1] for row in loads] == ["load", "load", "rollback", "rollback"]
    assert loads[-1][3] > loads[-2][3] > loads[1][3] > loads[0][3]  # every load a newer lake version


@pytest.mark.faults
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


@pytest.mark.faults
def test_a_rollback_bypasses_the_shrink_guard_and_no_other_check(
    taxi_env, published, publish, postgres_url, pg_schema
):
    """Version 1 holds a tenth of the month (the first publish: nothing to shrink from), version 2 all
    of it; restoring version 1 shrinks the month, which a rollback may do. Then version 1's clean files
    are damaged at rest (a row written twice): restoring it again fails trip_key_unique and
    rows_balance, and nothing is rolled back."""
    header, *rows = served_lines(published)
    publish(SOURCE, gzip_csv("\n".join([header, *rows[::10]]) + "\n"))
    first = materialize(*EVERY_STORE, partition=MONTH)
    small = published_state(taxi_env, postgres_url, pg_schema)
    publish(SOURCE, gzip_csv("\n".join([header, *rows]) + "\n"))
    materialize(*EVERY_STORE, partition=MONTH)
    result = roll_back()
    assert result.success and published_state(taxi_env, postgres_url, pg_schema) == small
    assert checks_of(result)["clean/green_trips"] == {name: True for name in CHECKS if name != SHRINK_GUARD}

    roll_back()  # the whole month again
    whole = published_state(taxi_env, postgres_url, pg_schema)
    spec = DATASETS["green"]
    lake = Lake(root=str(taxi_env / "lake"))
    (kept,) = [v for v in lake.versions(spec.clean_key, MONTH) if v.run_id == first.run_id]
    _, files = lake.table(spec.clean_key).files("pickup_date >= '2020-10-01'", kept.version)
    damaged = files[0][0].removeprefix("file://")
    table = pq.read_table(damaged)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), damaged)
    failed = roll_back(to_run=first.run_id, raise_on_error=False)
    assert not failed.success
    (failure,) = failed.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert f"green {MONTH}: the version of run {first.run_id} fails rows_balance" in message
    assert "trip_key_unique (1 repeated trip_key values)" in message
    assert "nothing was rolled back, the published month is unchanged" in message
    verdict = checks_of(failed)["clean/green_trips"]
    assert not verdict.pop("rows_balance") and not verdict.pop("trip_key_unique") and all(verdict.values())
    assert published_state(taxi_env, postgres_url, pg_schema) == whole


def test_the_vacuum_job_removes_only_what_retention_allows_and_never_the_current_version(
    taxi_env, monkeypatch
):
    for _ in range(2):
        materialize(*green_trip_keys(), partition=MONTH)
    current = {key: lake_digests(taxi_env, key) for key in green_trip_keys()}
    lake = Lake(root=str(taxi_env / "lake"))
    clean = dg.AssetKey.from_user_string("clean/green_trips")
    first = lake.versions(clean, MONTH)[-1].version

    def vacuum() -> dict:
        result = defs().resolve_job_def("vacuum_lake").execute_in_process()
        (output,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
        return {k: v.value for k, v in output.event_specific_data.metadata.items()}

    kept = vacuum()  # the default retention, 30 days, keeps both versions
    assert kept["files_removed"] == kept["metadata_files_removed"] == 0
    assert lake.read(
        clean, MONTH, DATASETS["green"].partitions_def, "pickup_date", version=first
    ).count_rows()
    monkeypatch.setenv("TAXI_LAKE_RETENTION_DAYS", "0")
    removed = vacuum()
    days = len(lake_files(taxi_env, "clean/green_trips"))
    # The first version's files: a file a day of clean, the month's rejected, raw's file and its index entry.
    assert (
        removed["clean/green_trips"],
        removed["clean/green_trips_rejected"],
        removed["raw/green_trips"],
    ) == (
        days,
        1,
        2,
    )
    assert removed["metadata_files_removed"] > 0  # the first version's manifests, at least
    assert {key: lake_digests(taxi_env, key) for key in green_trip_keys()} == current
    assert [v.version for v in lake.versions(clean, MONTH)] == [lake.versions(clean, MONTH)[0].version]


def test_a_lake_of_the_old_parquet_layout_converts_in_place_once(taxi_env):
    """The layout before the Iceberg tables, written as it was; each month becomes its tables' first
    version, the old files go, and a second conversion finds nothing to do."""
    lake = taxi_env / "lake"
    days = {date(2020, 10, 1): 3, date(2020, 10, 2): 2}
    for day, rows in days.items():
        folder = lake / f"clean/green_trips/pickup_date={day}"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.table({"trip_key": list(range(rows)), "fare": [2.5] * rows}), folder / "2020-10.parquet"
        )
    pq.write_table(
        pa.table({"VendorID": pa.array([1] * 6, pa.int32())}), _made(lake / "raw/green_trips/2020-10.parquet")
    )
    rejected = pa.table({"trip_key": [9], "fare": [0.0], "reject_reason": ["duplicate_row"]})
    pq.write_table(rejected, _made(lake / "clean/green_trips_rejected/2020-10.parquet"))
    pq.write_table(pa.table({"location_id": [1, 2]}), _made(lake / "reference/taxi_zones.parquet"))

    def convert() -> int:
        result = defs().resolve_job_def("convert_lake").execute_in_process()
        (output,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
        return output.event_specific_data.metadata["months_converted"].value

    assert convert() == 1
    assert lake_files(taxi_env, "clean/green_trips") == {f"pickup_date={day}": n for day, n in days.items()}
    assert lake_files(taxi_env, "raw/green_trips") == {"2020-10": 6}
    assert lake_files(taxi_env, "clean/green_trips_rejected") == {"2020-10": 1}
    assert lake_table(taxi_env, "reference/taxi_zones").to_pydict() == {"location_id": [1, 2]}
    clean = lake_table(taxi_env, "clean/green_trips", MONTH, "pickup_date")
    assert sorted(clean["pickup_date"].to_pylist()) == [date(2020, 10, 1)] * 3 + [date(2020, 10, 2)] * 2
    assert (
        not [p for p in lake.rglob("2020-10.parquet")]
        and not (lake / "reference/taxi_zones.parquet").exists()
    )
    assert convert() == 0


def _made(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.faults
def test_a_sink_refuses_a_lake_version_older_than_the_one_it_holds(
    taxi_env, published, publish, postgres_url, pg_schema
):
    """A run that read the lake before another published and loaded a newer version would overwrite
    it: both sinks refuse, name the versions, record the failed attempt, and keep the newer month."""
    materialize(*EVERY_STORE, partition=MONTH)
    publish(SOURCE, doubled(served_lines(published)))
    materialize(*EVERY_STORE, partition=MONTH)
    newer = published_state(taxi_env, postgres_url, pg_schema)
    spec = DATASETS["green"]
    lake = Lake(root=str(taxi_env / "lake"))
    old_version = lake.versions(spec.clean_key, MONTH)[1].version
    stale = lake.read(spec.clean_key, MONTH, spec.partitions_def, "pickup_date", version=old_version)
    definitions = defs()
    managers = {  # as the local profile builds them
        spec.postgres_key: PostgresIOManager(url=postgres_url, db_schema=pg_schema),
        spec.warehouse_key: DuckDBWarehouse(sql=DuckDBSQL(path=str(taxi_env / "warehouse.duckdb"))),
    }
    for key, manager in managers.items():
        asset = definitions.get_assets_def(key)
        with (
            dg.build_output_context(
                asset_key=key,
                partition_key=MONTH,
                asset_partitions_def=spec.partitions_def,
                definition_metadata=asset.specs_by_key[key].metadata,
            ) as context,
            pytest.raises(StaleLakeVersion, match=rf"{MONTH} version {old_version} < \d+"),
        ):
            manager.handle_output(context, Audited(stale, {"lake_version": old_version}))
    assert published_state(taxi_env, postgres_url, pg_schema) == newer
    with psycopg.connect(postgres_url) as conn:
        (failed,) = conn.execute(
            f'SELECT error FROM "{pg_schema}".load_audit WHERE outcome = %s', ["failed"]
        ).fetchone()
    assert failed.startswith("postgres/green_trips: refused to load lake versions older than those it holds")


@pytest.mark.faults
def test_a_newer_version_committed_while_a_postgres_writer_waits_for_the_month_is_not_overwritten(
    taxi_env, postgres_url, pg_schema
):
    """A load of the month passes the first check, then waits for the month's writer lock; meanwhile
    another writer commits a newer version (its ledger row). The waiting load refuses in its own
    transaction, after the lock: the month stays as the winner left it."""
    materialize(*EVERY_STORE, partition=MONTH)
    before = published_state(taxi_env, postgres_url, pg_schema)
    spec = DATASETS["green"]
    lake = Lake(root=str(taxi_env / "lake"))
    current = lake.read(spec.clean_key, MONTH, spec.partitions_def, "pickup_date")
    version = version_of(current)
    asset = defs().get_assets_def(spec.postgres_key)
    manager = PostgresIOManager(url=postgres_url, db_schema=pg_schema)
    outcome: list[BaseException | None] = []

    def load_again() -> None:
        with dg.build_output_context(
            asset_key=spec.postgres_key,
            partition_key=MONTH,
            asset_partitions_def=spec.partitions_def,
            definition_metadata=asset.specs_by_key[spec.postgres_key].metadata,
        ) as context:
            try:
                manager.handle_output(context, Audited(current, {"lake_version": version}))
                outcome.append(None)
            except Exception as error:
                outcome.append(error)

    audit = f'"{pg_schema}".load_audit'
    with psycopg.connect(postgres_url) as winner:
        winner.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"{pg_schema}.green_trips_2020_10"])
        loader = threading.Thread(target=load_again)
        loader.start()
        deadline = time.monotonic() + 60
        while not winner.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()[0]:
            assert loader.is_alive() and time.monotonic() < deadline, "the load never waited for the lock"
            time.sleep(0.1)
        winner.execute(
            f"CREATE TEMP TABLE newer AS SELECT * FROM {audit}"
            " WHERE asset_key = 'postgres/green_trips' AND outcome = 'published' LIMIT 1"
        )
        winner.execute("UPDATE newer SET lake_version = lake_version + 1, run_id = 'the-winner'")
        winner.execute(f"INSERT INTO {audit} SELECT * FROM newer")
    loader.join(timeout=60)
    (error,) = outcome
    assert isinstance(error, StaleLakeVersion)
    assert f"{MONTH} version {version} < {version + 1}" in str(error)
    assert published_state(taxi_env, postgres_url, pg_schema) == before


def test_the_readme_recipe_reads_the_current_and_an_earlier_version_of_a_month(taxi_env, published, publish):
    """The README's Python block, run as written on a lake with two versions of the month (the second
    with every amount doubled)."""
    materialize(*green_trip_keys(), partition=MONTH)
    publish(SOURCE, doubled(served_lines(published)))
    materialize(*green_trip_keys(), partition=MONTH)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "SqlCatalog" in b]
    code = re.sub(r'^LAKE = ".*"', f'LAKE = "{taxi_env / "lake"}"', block, count=1, flags=re.M)
    recipe: dict = {}
    exec(code, recipe)
    spec = DATASETS["green"]
    lake = Lake(root=str(taxi_env / "lake"))
    rows = lake.read(spec.clean_key, MONTH, spec.partitions_def, "pickup_date").count_rows()
    assert len(recipe["current"]) == len(recipe["earlier"]) == recipe["trips"][0] == rows > 0
    fares = (recipe["current"]["fare_amount"].sum(), recipe["earlier"]["fare_amount"].sum())
    assert fares[0] == pytest.approx(2 * fares[1])
