"""The local warehouse (embedded DuckDB): the synthetic green months end to end, and the IO manager on
its own (schema drift, its errors). A file locked by another process: test_sink_faults."""

import logging
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.warehouse import LAKE_TABLE, DuckDBSQL, DuckDBWarehouse
from taxi_platform.lake.lake_io_manager import LakeIOManager
from taxi_platform.lake.resource import Lake
from taxi_platform.ledger import LEDGER_SCHEMA, Audited
from taxi_platform.retrying import RetrySettings
from taxi_platform_tests.helpers import (
    course_counts,
    green_trip_keys,
    load_input,
    materializations,
    materialize,
)
from taxi_platform_tests.test_lake import MONTHS, days, write

pytestmark = pytest.mark.fast

GREEN_TO_WAREHOUSE = (*green_trip_keys(), "warehouse/green_trips")


def release(published: Path, month: str) -> Path:
    """The served CSV.gz release of a synthetic green month."""
    return published / "releases" / "green" / f"green_tripdata_{month}.csv.gz"


def clean_counts(published: Path, *months: str) -> dict[str, int]:
    """{month: clean rows} of the served months, computed the course's way with pandas."""
    return {month: course_counts(release(published, month), month)["clean"] for month in months}


def served_zones(published: Path) -> list[tuple]:
    """The served zone lookup's rows, read by pandas ("NA" and "N/A" are names, not missing)."""
    zones = pd.read_csv(published / "misc" / "taxi_zone_lookup.csv", keep_default_na=False)
    return sorted(zones[["LocationID", "Borough", "Zone", "service_zone"]].itertuples(index=False, name=None))


def warehouse(data_dir, sql: str, params=()):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def month_counts(data_dir) -> dict[str, int]:
    rows = warehouse(
        data_dir,
        "SELECT strftime(pickup_date, '%Y-%m'), count(*), count(DISTINCT trip_key)"
        " FROM taxi.green_trips GROUP BY 1 ORDER BY 1",
    )
    assert all(total == distinct for _, total, distinct in rows), "duplicate trip_key"
    return {month: total for month, total, _ in rows}


def test_a_three_month_backfill_then_a_rerun_of_one_month(taxi_env, published):
    expected = clean_counts(published, "2020-10", "2020-11", "2020-12")
    result = materialize(*GREEN_TO_WAREHOUSE, months=("2020-10", "2020-12"))
    assert month_counts(taxi_env) == expected
    meta = materializations(result)[("warehouse/green_trips", "2020-11")]
    assert meta["dagster/row_count"] == expected["2020-11"]
    assert meta["dagster/table_name"] == "taxi.green_trips"
    for _ in range(2):
        materialize(*GREEN_TO_WAREHOUSE, partition="2020-11")
    assert month_counts(taxi_env) == expected


def test_the_table_types_and_describes_its_columns(taxi_env, published):
    materialize(*GREEN_TO_WAREHOUSE, partition="2020-10")
    columns = dict(
        warehouse(
            taxi_env,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'taxi' AND table_name = 'green_trips'",
        )
    )
    assert columns["lpep_pickup_datetime"] == "TIMESTAMP"  # DuckDB's DATETIME: no time zone
    assert columns["pickup_date"] == "DATE" and columns["vendor_id"] == "BIGINT"
    comments = dict(
        warehouse(
            taxi_env, "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'green_trips'"
        )
    )
    assert comments["lpep_pickup_datetime"].endswith(
        "America/New_York local time, stored as DATETIME (no time zone)."
    )
    assert "hash of every trip column" in comments["trip_key"]
    expected = clean_counts(published, "2020-10")["2020-10"]
    assert warehouse(taxi_env, "SELECT count(*) FROM taxi.green_trips_lake") == [(expected,)]  # the lake view


def test_a_query_by_month_returns_that_month_only(taxi_env, published):
    materialize(*GREEN_TO_WAREHOUSE, months=("2020-10", "2020-11"))
    rows = warehouse(
        taxi_env,
        "SELECT count(*), min(lpep_pickup_datetime), max(lpep_pickup_datetime)"
        " FROM taxi.green_trips WHERE pickup_date >= DATE '2020-11-01'"
        " AND pickup_date < DATE '2020-12-01'",
    )
    count, first, last = rows[0]
    assert count == clean_counts(published, "2020-11")["2020-11"]
    assert first.strftime("%Y-%m") == last.strftime("%Y-%m") == "2020-11"


def test_zones_land_whole(taxi_env, published):
    for _ in range(2):
        materialize("reference/taxi_zones", "warehouse/taxi_zones")
    stored = warehouse(
        taxi_env, "SELECT location_id, borough, zone, service_zone FROM taxi.taxi_zones ORDER BY 1"
    )
    assert stored == served_zones(published)
    assert len(stored) == 265


def test_the_lake_table_queries_the_lake_files_where_they_lie(tmp_path):
    lake = LakeIOManager(lake=Lake(root=str(tmp_path / "lake")))
    warehouse = DuckDBWarehouse(
        sql=DuckDBSQL(path=str(tmp_path / "w.duckdb")), lake_root=str(tmp_path / "lake")
    )
    for month, table in {
        "2020-03": days(date(2020, 3, 1), date(2020, 3, 2)),
        "2020-04": days(date(2020, 4, 9)),
    }.items():
        write(lake, table, month)
        with dg.build_output_context(
            asset_key=dg.AssetKey(["warehouse", "trips"]),
            partition_key=month,
            asset_partitions_def=MONTHS,
            definition_metadata={PARTITION_COLUMN: "day", LAKE_TABLE: "clean/trips"},
        ) as context:
            warehouse.handle_output(context, table)
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert (
            con.execute("SELECT day, count(*) FROM taxi.trips_lake GROUP BY day ORDER BY day").fetchall()
            == con.execute("SELECT day, count(*) FROM taxi.trips GROUP BY day ORDER BY day").fetchall()
            == [(date(2020, 3, 1), 1), (date(2020, 3, 2), 1), (date(2020, 4, 9), 1)]
        )


# The IO manager on its own ------------------------------------------------------------------------

BY_DAY = {PARTITION_COLUMN: "day"}


def store(manager, obj, month=None, key=("warehouse", "trips"), metadata=None, key_range=None):
    with dg.build_output_context(
        asset_key=dg.AssetKey(list(key)),
        partition_key=month,
        asset_partition_key_range=key_range,
        asset_partitions_def=MONTHS if month or key_range else None,
        definition_metadata=BY_DAY if metadata is None else metadata,
    ) as context:
        manager.handle_output(context, obj)


def load(manager, month=None, key=("warehouse", "trips"), key_range=None):
    return load_input(manager, key, MONTHS, month, key_range, BY_DAY)


def duckdb_warehouse(tmp_path, **options) -> DuckDBWarehouse:
    return DuckDBWarehouse(sql=DuckDBSQL(path=str(tmp_path / "w.duckdb"), **options))


def rows(manager: DuckDBWarehouse, sql: str) -> list[tuple]:
    with manager.sql.connect() as con:
        return con.execute(sql).fetchall()


def test_a_new_column_is_added_and_the_earlier_rows_read_it_as_null(tmp_path):
    manager = duckdb_warehouse(tmp_path)
    store(manager, days(date(2020, 3, 1), date(2020, 3, 2)), "2020-03")
    tipped = days(date(2020, 4, 1)).append_column("tip", pa.array([1.5]))
    store(manager, tipped, "2020-04")
    assert load(manager, "2020-03").to_pydict() == {
        "n": [0, 1],
        "day": [date(2020, 3, 1), date(2020, 3, 2)],
        "tip": [None, None],
    }
    assert load(manager, "2020-04").to_pydict() == {"n": [0], "day": [date(2020, 4, 1)], "tip": [1.5]}
    assert rows(
        manager,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'trips'"
        " ORDER BY ordinal_position",
    ) == [("n", "BIGINT"), ("day", "DATE"), ("tip", "DOUBLE")]


def test_a_changed_column_type_fails_naming_it_and_leaves_the_table_as_it_was(tmp_path):
    manager = duckdb_warehouse(tmp_path)
    store(manager, days(date(2020, 3, 1), date(2020, 3, 2)), "2020-03")
    as_text = pa.table({"n": pa.array(["zero"]), "day": pa.array([date(2020, 3, 5)], pa.date32())})
    with pytest.raises(
        ValueError,
        match=r"^taxi\.trips: column types changed \(table, data\): \{'n': \('BIGINT', 'VARCHAR'\)\}$",
    ):
        store(manager, as_text, "2020-03")
    assert load(manager, "2020-03").to_pydict() == {"n": [0, 1], "day": [date(2020, 3, 1), date(2020, 3, 2)]}
    assert rows(manager, "SELECT data_type FROM information_schema.columns WHERE column_name = 'n'") == [
        ("BIGINT",)
    ]


def test_reads_of_a_table_a_month_and_a_range_of_months(tmp_path):
    manager = duckdb_warehouse(tmp_path)
    march, april = days(date(2020, 3, 9)), days(date(2020, 4, 9), date(2020, 4, 10))
    store(manager, {"2020-03": march, "2020-04": april}, key_range=dg.PartitionKeyRange("2020-03", "2020-04"))
    ranged = load(manager, key_range=dg.PartitionKeyRange("2020-03", "2020-04"))
    assert {month: table.to_pydict() for month, table in ranged.items()} == {
        "2020-03": march.to_pydict(),
        "2020-04": april.to_pydict(),
    }
    zones = pa.table({"location_id": [1, 2], "zone": ["a", "NA"]})
    store(manager, zones, key=("warehouse", "zones"), metadata={})
    store(manager, zones.slice(1), key=("warehouse", "zones"), metadata={})  # replaces the whole table
    assert load(manager, key=("warehouse", "zones")).to_pydict() == {"location_id": [2], "zone": ["NA"]}
    assert manager.sql.tables() == {"trips", "zones"}
    assert manager.sql.execute("CREATE VIEW taxi.v AS SELECT 1 AS one").num_rows == 0  # DDL: no rows
    assert manager.sql.execute("SELECT one FROM taxi.v").to_pydict() == {"one": [1]}


def test_a_table_name_that_is_not_an_identifier_is_refused(tmp_path):
    manager = duckdb_warehouse(tmp_path)
    with pytest.raises(
        ValueError, match=r"""^'trips"; DROP TABLE x; --' is not a valid warehouse table name$"""
    ):
        store(manager, days(date(2020, 3, 1)), "2020-03", key=("warehouse", 'trips"; DROP TABLE x; --'))
    with pytest.raises(ValueError, match="is not a valid warehouse table name"):
        manager.sql.ref("1trips")
    assert manager.sql.tables() == set()


def test_a_file_that_is_not_a_duckdb_database_fails_at_once(tmp_path, caplog):
    (tmp_path / "w.duckdb").write_bytes(b"not a database" * 1000)
    manager = duckdb_warehouse(
        tmp_path, retry=RetrySettings(tries=100, first_wait=3600, max_wait=3600)
    )  # a retry would hang
    with (
        caplog.at_level(logging.WARNING, logger="taxi_platform.io_managers.warehouse"),
        pytest.raises(duckdb.IOException, match="not a valid DuckDB database file"),
    ):
        store(manager, days(date(2020, 3, 1)), "2020-03")
    assert caplog.records == []  # not tried again


def test_a_ledger_table_of_an_earlier_version_gains_the_new_columns(tmp_path):
    """A ledger table made before `code_version` was one of its columns: the next audited write adds
    the column, and the earlier row reads it as null."""
    earlier = pa.Table.from_pylist(
        [{"asset_key": "warehouse/earlier", "outcome": "published"}],
        pa.schema([field for field in LEDGER_SCHEMA if field.name != "code_version"]),
    )
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("CREATE SCHEMA taxi")
        con.execute("CREATE TABLE taxi.load_audit AS SELECT * FROM earlier")
    manager = duckdb_warehouse(tmp_path)
    store(
        manager, Audited(days(date(2020, 3, 1), date(2020, 3, 2)), {"code_version": "0.1.0+abc"}), "2020-03"
    )
    assert rows(manager, "SELECT asset_key, code_version, rows_loaded FROM taxi.load_audit ORDER BY 1") == [
        ("warehouse/earlier", None, None),
        ("warehouse/trips", "0.1.0+abc", 2),
    ]
    assert [name for (name,) in rows(manager, "SELECT column_name FROM (DESCRIBE taxi.load_audit)")] == [
        *earlier.column_names,
        "code_version",
    ]
