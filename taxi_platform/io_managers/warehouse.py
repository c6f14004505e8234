"""The warehouse: DuckDB locally, BigQuery on GCP, one contract.

Generic (asset keys, arrow schemas, partition time windows; no taxi knowledge):
- Table: dataset/schema `dataset` (default `taxi`), table = the asset key's last part.
- Definition metadata `PARTITION_COLUMN` (a DATE column) makes the table partitioned by it
  (BigQuery: a native day-partitioned table); `warehouse/cluster_by` lists clustering columns
  (BigQuery: clustering; DuckDB: rows are inserted in that order, which DuckDB's zone maps use).
- Column names are kept as they are. Naive timestamps are stored as DATETIME (DuckDB: TIMESTAMP
  without time zone), and their column description says so, with the zone of definition metadata
  `TIME_ZONE` when the asset names one.
- Replacing a partition, or a single-run backfill's range, is atomic: DuckDB deletes and inserts in
  one transaction; BigQuery loads a staging table (which expires by itself, should the run die),
  then one MERGE deletes the window's rows and inserts the staged ones.
- DuckDB's file has one writing process at a time: a file locked by another process is tried again
  under `retry` (the one retry policy, `taxi_platform.retrying`; a warning each time in the run's
  log); any other error fails at once.
- Schema drift: new columns are added; a changed type fails, naming the columns.
- SQL in the warehouse goes through the `warehouse_sql` resource (`WarehouseSQL`: DuckDBSQL here,
  BigQuerySQL), which the IO manager also stores through, and which gives dbt its connection.
- BigQuery's back end is `taxi_platform.io_managers.bigquery` (imported by the gcp profile only).
- Definition metadata `warehouse/lake_table: "clean/green_trips"` also (re)creates `<table>_lake`
  over that asset's Iceberg table in the lake at `lake_root`: a BigQuery external table, or a
  DuckDB view through DuckDB's `iceberg` extension; the lake's current version queried where it lies.
"""

import re
from abc import ABC, abstractmethod
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from pydantic import Field

from taxi_platform.io_managers import (
    PARTITION_COLUMN,
    TIME_ZONE,
    lake_metadata_file,
    time_window,
    upstream_metadata,
)
from taxi_platform.io_managers.arrow_data import as_dataset
from taxi_platform.ledger import (
    LEDGER_TABLE,
    PUBLISHED,
    LedgerRows,
    LedgerSink,
    missing_columns,
    write_audited,
)
from taxi_platform.retrying import DUCKDB_LOCK, RetriesExhausted, RetrySettings, RunLogged, retried

CLUSTER_BY = "warehouse/cluster_by"
LAKE_TABLE = "warehouse/lake_table"
DATETIME_NOTE = "stored as DATETIME (no time zone)."
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Window:
    """The rows of a partition (or a range of them): partition_column in [start, end)."""

    def __init__(self, column: str, start: datetime, end: datetime):
        self.column, self.start, self.end = column, start.date(), end.date()

    def __str__(self) -> str:
        return f"{self.column} in [{self.start}, {self.end})"


class WarehouseSQL(RunLogged, ABC):
    """SQL in the warehouse's dataset (what Dagster reads of the dbt models), and how dbt connects to it."""

    dataset: str = Field(default="taxi", description="Dataset (BigQuery) or schema (DuckDB).")

    def table_id(self, name: str) -> str:
        return f"{self.dataset}.{name}"

    @abstractmethod
    def ref(self, name: str) -> str:
        """A table's name as SQL of this warehouse."""

    @abstractmethod
    def execute(self, statement: str) -> pa.Table:
        """Run a statement in the warehouse; its rows (none for DDL)."""

    @abstractmethod
    def tables(self) -> set[str]:
        """The names of the tables in the dataset."""

    @abstractmethod
    def dbt_output(self) -> dict:
        """This warehouse as a dbt profile's output (connection and dataset; no credential)."""


class WarehouseIOManager(dg.ConfigurableIOManager, LedgerSink):
    """The contract both back ends keep; subclasses implement `_replace`, `_read` and
    `_create_lake_table` through their `sql` resource."""

    lake_root: str = Field(default="", description="The lake's root, for `<table>_lake` tables.")

    @property
    @abstractmethod
    def warehouse(self) -> WarehouseSQL:
        """The SQL resource the IO manager stores through."""

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        meta = context.definition_metadata
        name = checked_name(context.asset_key.path[-1])
        window = None
        if context.has_asset_partitions:
            span = context.asset_partitions_time_window
            window = Window(meta[PARTITION_COLUMN], span.start, span.end)

        read_at: list[str | None] = []

        def write(rows, ledger: LedgerRows | None) -> tuple[ds.Dataset, dict]:
            read_at.append(lake_metadata_file(rows))
            data = as_dataset(rows)
            ledger_table = None
            if ledger is not None:
                parts = rows if isinstance(rows, dict) else {context.partition_key if window else None: rows}
                ledger_table = ledger({key: as_dataset(part).count_rows() for key, part in parts.items()})
            cluster_by = list(meta.get(CLUSTER_BY) or [])
            descriptions = _descriptions(data.schema, meta)
            return data, self._replace(name, data, window, cluster_by, descriptions, ledger_table)

        data, stored = write_audited(context, obj, self, write)
        if meta.get(LAKE_TABLE) and self.lake_root:
            prefix = f"{self.lake_root.rstrip('/')}/{meta[LAKE_TABLE]}"
            self._create_lake_table(f"{name}_lake", prefix, read_at[-1])
            stored["lake_table"] = self.warehouse.table_id(f"{name}_lake")
        context.add_output_metadata(
            {"dagster/table_name": self.warehouse.table_id(name), "rows_written": data.count_rows(), **stored}
        )

    def load_input(self, context: dg.InputContext):
        meta = upstream_metadata(context)
        name = checked_name(context.asset_key.path[-1])
        if not context.has_asset_partitions:
            return self._read(name, None)
        tables = {}
        for key in context.asset_partition_keys:
            span = time_window(context.asset_partitions_def, key)
            tables[key] = self._read(name, Window(meta[PARTITION_COLUMN], span.start, span.end))
        return tables if len(tables) > 1 else next(iter(tables.values()))

    @abstractmethod
    def _replace(self, name, data: ds.Dataset, window, cluster_by, descriptions, ledger) -> dict:
        """Replace the window's rows (all rows if None) by `data`, and append the `ledger` rows (if
        any) with `append_ledger`; metadata about the table."""

    @abstractmethod
    def _read(self, name: str, window: Window | None) -> pa.Table:
        """The window's rows (all rows if None)."""

    @abstractmethod
    def _create_lake_table(self, name: str, prefix: str, metadata_file: str | None) -> None:
        """(Re)create a table over the lake's Iceberg table at `prefix`; `metadata_file`: the table's
        metadata the loaded rows were read from (None: not read from the lake)."""


class DuckDBSQL(WarehouseSQL):
    """The local warehouse: an embedded DuckDB file."""

    path: str = Field(description="The DuckDB database file.")
    retry: RetrySettings = Field(
        default=DUCKDB_LOCK, description="Tries to open the file while another process holds its lock."
    )
    memory_limit: str = Field(
        default="1GB", description="DuckDB's memory; beyond it, sorts spill to <path>.tmp on disk."
    )

    def ref(self, name: str) -> str:
        return f"{_quote(self.dataset)}.{_quote(checked_name(name))}"

    def dbt_output(self) -> dict:
        """dbt-duckdb waits out another process's lock on the file with as many tries as `connect`
        (its own backoff: 1, 2, 4, ... s; a budget without a count of tries: DUCKDB_LOCK's)."""
        return {
            "type": "duckdb",
            "path": self.path,
            "schema": self.dataset,
            "settings": {"memory_limit": self.memory_limit},
            "retries": {"connect_attempts": self.retry.tries or DUCKDB_LOCK.tries},
        }

    def execute(self, statement: str) -> pa.Table:
        with self.connect() as con:  # DuckDB answers every statement with a result, DDL's without rows
            return con.execute(statement).to_arrow_table()

    def tables(self) -> set[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [self.dataset]
            ).fetchall()
        return {name for (name,) in rows}

    @contextmanager
    def connect(self, purpose: str = "a connection"):
        """One process at a time may hold the file (the warehouse pool keeps a deployment's own runs
        in turn): another process's lock is waited out under `retry`, then WarehouseLocked; any other
        error fails at once. `purpose` (a table and its rows) is named in the warnings and the error."""
        import duckdb

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            con = retried(
                lambda: duckdb.connect(self.path, config={"memory_limit": self.memory_limit}),
                self.retry,
                transient=_locked,
                log=self.log,
                what=purpose,
                where=f"the warehouse {self.path}",
            )
        except RetriesExhausted as exhausted:
            raise WarehouseLocked(str(exhausted)) from exhausted.last
        try:
            yield con
        finally:
            con.close()


def _locked(error: BaseException) -> bool:
    """What is transient for DuckDB: its file locked by another process."""
    import duckdb

    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def _local_parquet(data: ds.Dataset) -> str | None:
    """A DuckDB read_parquet(...) of the dataset's files, when they are local parquet files (the local
    lake's) whose hive partition columns, if any, are dates; else None."""
    parts = data.children if isinstance(data, ds.UnionDataset) else [data]
    if not all(
        isinstance(part, ds.FileSystemDataset)
        and isinstance(part.filesystem, pafs.LocalFileSystem)
        and isinstance(part.format, ds.ParquetFileFormat)
        for part in parts
    ):
        return None
    files = [file for part in parts for file in part.files]
    hive = [field for field in data.schema if files and f"/{field.name}=" in files[0]]
    if any(field.type != pa.date32() for field in hive):
        return None
    listed = ", ".join(map(_literal, files))
    if not hive:
        return f"read_parquet([{listed}], hive_partitioning = false)"
    types = ", ".join(f"{_literal(field.name)}: DATE" for field in hive)
    return f"read_parquet([{listed}], hive_partitioning = true, hive_types = {{{types}}})"


class WarehouseLocked(TimeoutError):
    """The DuckDB file stayed locked by another process through every try."""


class DuckDBWarehouse(WarehouseIOManager):
    """Stores the warehouse assets in the DuckDB file of its `sql` resource."""

    sql: DuckDBSQL

    @property
    def warehouse(self) -> DuckDBSQL:
        return self.sql

    def _replace(self, name, data, window, cluster_by, descriptions, ledger) -> dict:
        target = self.sql.ref(name)
        dataset = self.sql.dataset
        order = f" ORDER BY {', '.join(map(_quote, cluster_by))}" if cluster_by else ""
        purpose = self.sql.table_id(name) + (f" rows with {window}" if window else "")
        with self.sql.connect(purpose) as con:
            files = _local_parquet(data)
            if files is None:
                con.register("incoming", data)  # scanned by DuckDB in batches
            else:  # read by DuckDB itself, within its memory limit: half the peak of an arrow scan
                con.execute(f"CREATE TEMP VIEW incoming AS SELECT * FROM {files}")
            con.begin()
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(dataset)}")
            con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM incoming LIMIT 0")
            existing = dict(
                con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = ? AND table_name = ?",
                    [dataset, name],
                ).fetchall()
            )
            wanted = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE incoming)").fetchall())
            check_drift(self.sql.table_id(name), existing, wanted)
            for column in wanted.keys() - existing.keys():
                con.execute(f"ALTER TABLE {target} ADD COLUMN {_quote(column)} {wanted[column]}")
            if window:
                con.execute(
                    f"DELETE FROM {target} WHERE {_quote(window.column)} >= ? AND "
                    f"{_quote(window.column)} < ?",
                    [window.start, window.end],
                )
            else:
                con.execute(f"DELETE FROM {target}")
            con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM incoming{order}")
            for column, text in descriptions.items():
                con.execute(f"COMMENT ON COLUMN {target}.{_quote(column)} IS {_literal(text)}")
            if ledger is not None:  # in the same transaction: a ledger row iff its data is visible
                self.append_ledger(ledger, within=con)
            con.commit()
        return {"warehouse_path": dg.MetadataValue.path(self.sql.path)}

    def held_versions(self, asset_key: str) -> dict[str | None, int]:
        with self.sql.connect(self.sql.table_id(LEDGER_TABLE)) as con:
            have = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                [self.sql.dataset, LEDGER_TABLE],
            ).fetchall()
            if ("lake_version",) not in have:
                return {}
            return dict(
                con.execute(
                    f"SELECT partition_key, max(lake_version) FROM {self.sql.ref(LEDGER_TABLE)}"
                    " WHERE asset_key = ? AND outcome = ? AND lake_version IS NOT NULL GROUP BY partition_key",
                    [asset_key, PUBLISHED],
                ).fetchall()
            )

    def append_ledger(self, rows: pa.Table, within=None) -> None:
        if within is None:  # DuckDB commits each statement of its own; these two go together
            with self.sql.connect(self.sql.table_id(LEDGER_TABLE)) as con:
                con.begin()
                self.append_ledger(rows, con)
                con.commit()
            return
        ledger = self.sql.ref(LEDGER_TABLE)
        within.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.sql.dataset)}")
        within.register("ledger_rows", rows)
        within.execute(f"CREATE TABLE IF NOT EXISTS {ledger} AS SELECT * FROM ledger_rows LIMIT 0")
        existing = within.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [self.sql.dataset, LEDGER_TABLE],
        ).fetchall()
        types = dict(within.execute("SELECT column_name, column_type FROM (DESCRIBE ledger_rows)").fetchall())
        for field in missing_columns(name for (name,) in existing):
            within.execute(f"ALTER TABLE {ledger} ADD COLUMN {_quote(field.name)} {types[field.name]}")
        within.execute(f"INSERT INTO {ledger} BY NAME SELECT * FROM ledger_rows")

    def _read(self, name: str, window: Window | None) -> pa.Table:
        target = self.sql.ref(name)
        with self.sql.connect() as con:
            if window is None:
                return con.execute(f"SELECT * FROM {target}").to_arrow_table()
            column = _quote(window.column)
            return con.execute(
                f"SELECT * FROM {target} WHERE {column} >= ? AND {column} < ?", [window.start, window.end]
            ).to_arrow_table()

    def _create_lake_table(self, name, prefix, metadata_file) -> None:
        """A view of the table's current version (its version hint), whatever was loaded."""
        with self.sql.connect() as con:
            install_iceberg_reader(con)
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.sql.dataset)}")
            con.execute(
                f"CREATE OR REPLACE VIEW {self.sql.ref(name)} AS SELECT * FROM"
                f" iceberg_scan({_literal(Path(prefix).resolve().as_posix())})"
            )


def install_iceberg_reader(con) -> None:
    """DuckDB's `iceberg` extension (and `avro`, which it reads manifests with), installed from their
    wheels rather than downloaded: once installed, every DuckDB of this machine loads them when a
    query needs them. iceberg_scan finds a table's current version through its version hint."""
    import importlib.resources

    import duckdb

    for name in ("avro", "iceberg"):
        extension = importlib.resources.files(f"duckdb_extension_{name}").joinpath(
            "extensions", f"v{duckdb.__version__}", f"{name}.duckdb_extension"
        )
        con.install_extension(str(extension))
        con.load_extension(name)


def _descriptions(schema: pa.Schema, meta) -> dict[str, str]:
    """Column descriptions from the asset's column schema; naive timestamps say they are DATETIME, and
    local time of the asset's TIME_ZONE if it names one."""
    described = meta.get("dagster/column_schema")
    described = getattr(described, "schema", described)  # a TableSchemaMetadataValue or a TableSchema
    texts = {c.name: c.description for c in described.columns if c.description} if described else {}
    note = (
        f"{meta[TIME_ZONE]} local time, {DATETIME_NOTE}"
        if meta.get(TIME_ZONE)
        else DATETIME_NOTE.capitalize()
    )
    for field in schema:
        if pa.types.is_timestamp(field.type) and field.type.tz is None:
            texts[field.name] = " ".join(filter(None, [texts.get(field.name), note]))
    return texts


def check_drift(table_id: str, existing: dict, wanted: dict) -> None:
    """A ValueError naming the columns whose type the data changed."""
    changed = {n: (existing[n], t) for n, t in wanted.items() if n in existing and existing[n] != t}
    if changed:
        raise ValueError(f"{table_id}: column types changed (table, data): {changed}")


def checked_name(name: str) -> str:
    """`name`, if it is a plain identifier: table names are written into SQL."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid warehouse table name")
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
