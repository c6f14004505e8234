"""The dbt models on the local warehouse (DuckDB), against figures computed with pandas from the served
synthetic green months: fct_trips after the course's deduplication, the revenue mart to the cent, a
two-month backfill in one run, a rerun replacing its month, a full refresh, a failing test blocking
the publication, and the tables of the Python marts taken over."""

import threading
import time

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from taxi_platform_tests.helpers import (
    course_month,
    dagster_materialize,
    failure_message,
    green_trip_keys,
    materializations,
    materialize,
    release_csv_gz,
)
from taxi_platform_tests.test_warehouse import release

pytestmark = [pytest.mark.slow]

UPSTREAM = (*green_trip_keys(), "warehouse/green_trips", "reference/taxi_zones", "warehouse/taxi_zones")
DIMENSIONS = ("core/dim_zones", "core/dim_payment_types")
MODELS = (
    *(f"staging/stg_{name}_trips" for name in ("yellow", "green", "fhv", "fhvhv")),
    "core/fct_trips_pending",
    "core/fct_trips",
    "core/fct_fhv_trips",
    "marts/fct_monthly_zone_revenue",
    "marts/daily_zone_trips",
    "marts/monthly_summary",
)
MONTHS = ("2020-10", "2020-11")
PICKUP_DATE = 13  # fct_trips' column
TRIP = ["VendorID", "lpep_pickup_datetime", "PULocationID"]  # the course's trip: with service_type
AMOUNTS = {
    "fare_amount": "revenue_monthly_fare",
    "tip_amount": "revenue_monthly_tip_amount",
    "total_amount": "revenue_monthly_total_amount",
    "congestion_surcharge": "revenue_monthly_congestion_surcharge",
}


def with_near_duplicates(published, month: str) -> bytes:
    """The served month plus, for 40 of its trips, a second record of the same trip (vendor, pickup
    second and zone): 30 that end a minute later with a dollar more, 10 that end at the same time and
    differ only in store_and_fwd_flag (so the revenue does not depend on which one is kept)."""
    source = release(published, month)
    table = pacsv.read_csv(source).to_pandas()
    table = table[table["passenger_count"] > 0].head(400)  # rows that pass the cleaning rules
    later = table.iloc[:30].copy()
    later["lpep_dropoff_datetime"] = pd.to_datetime(later["lpep_dropoff_datetime"]) + pd.Timedelta(minutes=1)
    later["total_amount"] += 1
    tied = table.iloc[100:110].copy()
    tied["store_and_fwd_flag"] = tied["store_and_fwd_flag"].map({"N": "Y", "Y": "N"}).fillna("Y")
    original = pacsv.read_csv(source)
    extra = pa.Table.from_pandas(pd.concat([later, tied]), preserve_index=False).cast(original.schema)
    return release_csv_gz(pa.concat_tables([original, extra]))


def expected_trips(source, month: str) -> pd.DataFrame:
    """fct_trips of the month with pandas: the clean rows, one per vendor, pickup second and pickup
    zone, the earliest dropoff kept."""
    _, clean, _ = course_month(source, month)
    ordered = clean.assign(dropoff=pd.to_datetime(clean["lpep_dropoff_datetime"])).sort_values(
        "dropoff", kind="stable"
    )
    return ordered.drop_duplicates(subset=TRIP, keep="first")


def expected_revenue(trips: pd.DataFrame, zones: pd.DataFrame) -> dict[str, tuple]:
    """{pickup zone: (trips, each amount's sum to the cent)}."""
    named = trips.merge(zones, left_on="PULocationID", right_on="LocationID", how="left")
    named["Zone"] = named["Zone"].fillna("Unknown Zone")
    sums = named.groupby("Zone").agg(trips=("Zone", "size"), **{a: (a, "sum") for a in AMOUNTS})
    return {zone: (int(row["trips"]), *(round(row[a], 2) for a in AMOUNTS)) for zone, row in sums.iterrows()}


def query(data_dir, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def stored_revenue(data_dir, month: str) -> dict[str, tuple]:
    columns = ", ".join(f"round({c}, 2)" for c in AMOUNTS.values())
    rows = query(
        data_dir,
        f"SELECT pickup_zone, total_monthly_trips, {columns} FROM taxi.fct_monthly_zone_revenue"
        " WHERE revenue_month = ? AND service_type = 'Green'",
        [pd.Timestamp(f"{month}-01").date()],
    )
    return {zone: tuple(rest) for zone, *rest in rows}


def month_rows(data_dir, table: str, month: str) -> list[tuple]:
    """Every row of the table's month, sorted: to compare a month before and after."""
    rows = query(data_dir, f"SELECT * FROM taxi.{table} WHERE strftime(pickup_date, '%Y-%m') = ?", [month])
    return sorted(rows, key=repr)


def check_results(result) -> dict[str, tuple[bool, dict]]:
    """{check name: (passed, metadata)} of a run's check evaluations."""
    return {
        e.asset_check_evaluation_data.check_name: (
            e.asset_check_evaluation_data.passed,
            {k: v.value for k, v in e.asset_check_evaluation_data.metadata.items()},
        )
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


@pytest.fixture
def loaded(taxi_env, published, publish):
    """Green 2020-10 and 2020-11 (with near duplicates) in the warehouse, with the zones and the
    dimensions; no yellow, fhv or fhvhv month (a partly loaded warehouse)."""
    publish("releases/green/green_tripdata_2020-11.csv.gz", with_near_duplicates(published, "2020-11"))
    materialize(*UPSTREAM, months=(MONTHS[0], MONTHS[-1]))
    materialize(*DIMENSIONS)
    return taxi_env


def test_a_two_month_backfill_in_one_run_matches_pandas_and_a_rerun_replaces_its_month(
    loaded, published, overlay
):
    result = materialize(*MODELS, months=(MONTHS[0], MONTHS[-1]))  # one run, one dbt build
    zones = pd.read_csv(published / "misc" / "taxi_zone_lookup.csv", keep_default_na=False)
    sources = {"2020-10": release(published, "2020-10"), "2020-11": release(overlay, "2020-11")}
    meta = materializations(result)
    for month, source in sources.items():
        trips = expected_trips(source, month)
        stored = query(
            loaded,
            "SELECT count(*), count(DISTINCT trip_id) FROM taxi.fct_trips WHERE strftime(pickup_date, '%Y-%m') = ?",
            [month],
        )
        assert stored == [(len(trips), len(trips))]
        assert meta[("core/fct_trips", month)]["dagster/row_count"] == len(trips)
        assert stored_revenue(loaded, month) == expected_revenue(trips, zones)
        # The mart adds up, zone by zone, to the trips it summarizes.
        assert not query(
            loaded,
            "SELECT r.pickup_zone FROM taxi.fct_monthly_zone_revenue r JOIN (SELECT coalesce(pickup_zone,"
            " 'Unknown Zone') AS zone, sum(total_amount) AS total FROM taxi.fct_trips WHERE strftime("
            "pickup_date, '%Y-%m') = ? GROUP BY 1) t ON t.zone = r.pickup_zone WHERE strftime("
            "r.revenue_month, '%Y-%m') = ? AND abs(t.total - r.revenue_monthly_total_amount) > 0.005",
            [month, month],
        )
    dropped = len(course_month(sources["2020-11"], "2020-11")[1]) - len(
        expected_trips(sources["2020-11"], "2020-11")
    )
    assert dropped == 40  # the near duplicates, beyond the exact copies the cleaning rejects
    checks = check_results(result)
    assert checks and {m["judged"] for _, m in checks.values()} == {"2020-10, 2020-11"}
    assert all(passed for name, (passed, _) in checks.items() if not name.startswith("at_least"))

    def months_of() -> dict:
        """fct_trips' rows and the revenue to the cent (a sum of floats varies in its last bits)."""
        trips = {("fct_trips", m): month_rows(loaded, "fct_trips", m) for m in MONTHS}
        return trips | {("revenue", m): stored_revenue(loaded, m) for m in MONTHS}

    before = months_of()
    materialize(*MODELS, partition="2020-11")
    assert months_of() == before  # the same rows (the tie-break holds), no duplicate

    # The source month loses a day (a republished month): the rerun replaces the whole month.
    with duckdb.connect(str(loaded / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM taxi.green_trips WHERE pickup_date = DATE '2020-11-15'")
    materialize(*MODELS, partition="2020-11")
    after = months_of()
    assert after[("fct_trips", "2020-10")] == before[("fct_trips", "2020-10")]
    kept = [r for r in before[("fct_trips", "2020-11")] if r[PICKUP_DATE].isoformat() != "2020-11-15"]
    assert len(kept) < len(before[("fct_trips", "2020-11")]) and after[("fct_trips", "2020-11")] == kept


def test_a_full_refresh_rebuilds_every_month(loaded):
    """Run config `full_refresh` (after a model's SQL changed): every month rebuilt from the warehouse."""
    materialize(*MODELS, months=(MONTHS[0], MONTHS[-1]))
    before = month_rows(loaded, "fct_trips", "2020-10")
    with duckdb.connect(str(loaded / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM taxi.fct_trips WHERE pickup_date < DATE '2020-11-01'")
    config = {"ops": {"monthly_models": {"config": {"full_refresh": True}}}}
    materialize("core/fct_trips_pending", "core/fct_trips", partition="2020-11", run_config=config)
    assert month_rows(loaded, "fct_trips", "2020-10") == before


def test_a_failing_test_blocks_the_month_and_leaves_the_published_rows(loaded):
    """A trip whose pickup zone is not in dim_zones, injected through the source: fct_trips_pending's
    relationships test fails, a blocking check; fct_trips and the revenue mart keep their month."""
    materialize(*MODELS, months=(MONTHS[0], MONTHS[-1]))
    published = {t: month_rows(loaded, t, "2020-11") for t in ("fct_trips", "fct_trips_pending")}
    revenue = stored_revenue(loaded, "2020-11")
    with duckdb.connect(str(loaded / "warehouse.duckdb")) as con:
        con.execute(
            "INSERT INTO taxi.green_trips SELECT * REPLACE (999 AS pu_location_id, trip_key + 1 AS trip_key)"
            " FROM taxi.green_trips WHERE pickup_date = DATE '2020-11-02' LIMIT 1"
        )
    result = materialize(*MODELS, partition="2020-11", raise_on_error=False)
    assert not result.success
    relationships = "relationships_fct_trips_pending_pickup_location_id__location_id__ref_dim_zones_"
    passed, metadata = check_results(result)[relationships]
    assert not passed and metadata["judged"] == "2020-11"
    assert defs_check_is_blocking("core/fct_trips_pending", relationships)
    built = {key for key, _ in materializations(result)}
    assert "core/fct_trips_pending" in built  # written and audited ...
    assert not {"core/fct_trips", "marts/fct_monthly_zone_revenue"} & built  # ... never published
    assert month_rows(loaded, "fct_trips", "2020-11") == published["fct_trips"]
    assert stored_revenue(loaded, "2020-11") == revenue
    assert len(month_rows(loaded, "fct_trips_pending", "2020-11")) == len(published["fct_trips_pending"]) + 1


def defs_check_is_blocking(asset: str, check: str) -> bool:
    from taxi_platform.definitions import defs

    graph = defs().resolve_asset_graph()
    return graph.get(dg.AssetCheckKey(dg.AssetKey.from_user_string(asset), check)).blocking


OLD_MARTS = {
    "daily_zone_trips": "pickup_date DATE, dataset VARCHAR, pu_location_id BIGINT, borough VARCHAR, zone"
    " VARCHAR, trips BIGINT, revenue DOUBLE, avg_distance DOUBLE, avg_duration_minutes DOUBLE",
    "monthly_summary": "pickup_date DATE, dataset VARCHAR, trips BIGINT, revenue DOUBLE",
}


def test_the_dbt_marts_take_over_the_tables_of_the_python_marts(loaded):
    """A deployment upgraded from the Python marts: their tables (the warehouse IO manager's types)
    hold 2020-09 and a stale 2020-10; dbt replaces 2020-10 in place and keeps 2020-09."""
    with duckdb.connect(str(loaded / "warehouse.duckdb")) as con:
        for table, columns in OLD_MARTS.items():
            con.execute(f"CREATE TABLE taxi.{table} ({columns})")
            names = [c.split()[0] for c in columns.split(", ")]
            values = {"pickup_date": "d", "dataset": "'green'", "trips": "999999"}
            con.execute(
                f"INSERT INTO taxi.{table} SELECT {', '.join(values.get(n, 'NULL') for n in names)}"
                " FROM (VALUES (DATE '2020-09-30'), (DATE '2020-10-01')) AS days(d)"
            )
    materialize(*MODELS, partition="2020-10")
    for table, columns in OLD_MARTS.items():
        described = query(loaded, f"SELECT column_name, column_type FROM (DESCRIBE taxi.{table})")
        assert ", ".join(f"{name} {kind}" for name, kind in described) == columns
        assert query(loaded, f"SELECT pickup_date, trips FROM taxi.{table} WHERE trips = 999999") == [
            (pd.Timestamp("2020-09-30").date(), 999999)
        ]
        assert (
            query(loaded, f"SELECT count(*) FROM taxi.{table} WHERE pickup_date >= DATE '2020-10-01'")[0][0]
            > 28
        )


@pytest.mark.emulators
def test_the_models_build_in_bigquery_and_a_rerun_overwrites_its_month_partition(
    taxi_env, published, bigquery_emulator
):
    """The same project on the BigQuery emulator (dbt-bigquery through BIGQUERY_EMULATOR_HOST): every
    model for two months in one run, then 2020-11 again, as the incremental insert_overwrite of its
    month's partition (the statement dbt ran is read back)."""
    from dagster_gcp import BigQueryResource
    from google.cloud import bigquery

    from taxi_platform.dbt_runner import TRANSFORM, DbtWarehouseCli
    from taxi_platform.io_managers.bigquery import BigQuerySQL, BigQueryWarehouse

    sql = BigQuerySQL(bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset="taxi_dbt")
    resources = {
        "warehouse_io_manager": BigQueryWarehouse(sql=sql),
        "warehouse_sql": sql,
        "dbt": DbtWarehouseCli(target="gcp", warehouse=sql),
    }
    try:
        materialize(*UPSTREAM, months=(MONTHS[0], MONTHS[-1]), resources=resources)
        materialize(*DIMENSIONS, resources=resources)
        materialize(*MODELS, months=(MONTHS[0], MONTHS[-1]), resources=resources)
        materialize(*MODELS, partition="2020-11", resources=resources)
        counts = sql.execute(
            f"SELECT FORMAT_DATE('%Y-%m', pickup_date) AS month, COUNT(*) AS n, COUNT(DISTINCT trip_id) AS ids"
            f" FROM {sql.ref('fct_trips')} GROUP BY 1 ORDER BY 1"
        ).to_pylist()
        expected = [len(expected_trips(release(published, m), m)) for m in MONTHS]
        assert counts == [{"month": m, "n": n, "ids": n} for m, n in zip(MONTHS, expected, strict=True)]
        revenue = sql.execute(
            f"SELECT SUM(total_monthly_trips) AS trips FROM {sql.ref('fct_monthly_zone_revenue')}"
        ).to_pylist()
        assert revenue == [{"trips": sum(expected)}]
    finally:
        bigquery.Client(project=bigquery_emulator).delete_dataset(
            "taxi_dbt", delete_contents=True, not_found_ok=True
        )
    ran = max(
        TRANSFORM.project_dir.glob("target/*/run/taxi_transform/models/core/fct_trips.sql"),
        key=lambda p: p.stat().st_mtime,
    )
    statement = " ".join(ran.read_text().split()).lower()
    assert "merge into `taxi-test-project`.`taxi_dbt`.`fct_trips`" in statement
    assert (
        "when not matched by source and date_trunc(dbt_internal_dest.pickup_date, month) in ( date"
        " '2020-11-01' ) then delete when not matched then insert" in statement
    )


@pytest.mark.faults
def test_dbt_waits_out_a_duckdb_file_held_by_another_process(loaded):
    """dbt-duckdb's connect retries are the warehouse's lock retry tries: with one try a held file
    fails the run; with the default, dbt waits until the other process lets go, then builds."""
    from taxi_platform.dbt_runner import DbtWarehouseCli
    from taxi_platform.io_managers.warehouse import DuckDBSQL
    from taxi_platform.retrying import RetrySettings
    from taxi_platform_tests.test_sink_faults import LockHolder

    path = loaded / "warehouse.duckdb"
    once = DbtWarehouseCli(target="local", warehouse=DuckDBSQL(path=str(path), retry=RetrySettings(tries=1)))
    with LockHolder(path):
        result = materialize(
            "core/fct_trips_pending", partition="2020-10", resources={"dbt": once}, raise_on_error=False
        )
    assert not result.success and "lock" in failure_message(result).lower()

    with LockHolder(path) as holder:
        threading.Timer(8, holder.release).start()
        started = time.monotonic()
        result = materialize("staging/stg_green_trips", "core/fct_trips_pending", partition="2020-10")
    assert result.success and time.monotonic() - started > 8
    assert query(loaded, "SELECT count(*) FROM taxi.fct_trips_pending")[0][0] > 0


def test_two_cli_materializations_give_fct_trips_and_the_revenue_mart(taxi_env, published, tmp_path):
    """From a clean DAGSTER_HOME, as an operator: green 2020-10 through the warehouse with the zones,
    then the dbt models; fct_trips matches pandas and the revenue mart adds up to it zone by zone."""
    home = tmp_path / "home"
    loads = dagster_materialize(*UPSTREAM, month="2020-10", home=home)
    assert loads.returncode == 0, loads.stderr[-3000:]
    models = dagster_materialize(*DIMENSIONS, *MODELS, month="2020-10", home=home)
    assert models.returncode == 0, models.stderr[-3000:]
    trips = expected_trips(release(published, "2020-10"), "2020-10")
    assert query(taxi_env, "SELECT count(*) FROM taxi.fct_trips WHERE service_type = 'Green'") == [
        (len(trips),)
    ]
    assert not query(
        taxi_env,
        "SELECT * FROM (SELECT coalesce(pickup_zone, 'Unknown Zone') AS zone, sum(total_amount) AS total"
        " FROM taxi.fct_trips GROUP BY 1) t FULL JOIN taxi.fct_monthly_zone_revenue r ON r.pickup_zone = t.zone"
        " WHERE r.pickup_zone IS NULL OR t.zone IS NULL OR abs(t.total - r.revenue_monthly_total_amount) > 0.005",
    )
