"""The warehouse: DuckDB locally, BigQuery on GCP, one contract.

Generic (asset keys, arrow schemas, partition time windows; no taxi knowledge):
- Table: dataset/schema `dataset` (default `taxi`), table = the asset key's last part.
- Definition metadata `PARTITION_COLUMN` (a DATE column) makes the table partitioned by it
  (BigQuery: a native day-partitioned table); `warehouse/cluster_by` lists clustering columns
  (BigQuery: clustering; DuckDB: rows are inserted in that order, which DuckDB's zone maps use).
- Column names are kept as they are. Naive timestamps (New York local time in the TLC data) are
  stored as DATETIME (DuckDB: TIMESTAMP without time zone), and their column description says so.
- Replacing a partition, or a single-run backfill's range, is atomic: DuckDB deletes and inserts in
  one transaction; BigQuery loads a staging table (which expires by itself, should the run die),
  then one MERGE deletes the window's rows and inserts the staged ones.
- DuckDB's file has one writing process at a time: a file locked by another process is tried again,
  up to `max_tries` times with exponential backoff and jitter (a warning each time); any other error
  fails at once.
- Schema drift: new columns are added; a changed type fails, naming the columns.
- SQL in the warehouse goes through the `warehouse_sql` resource (`WarehouseSQL`: DuckDBSQL here,
  BigQuerySQL), which the IO manager also stores through, and which gives dbt its connection.
- BigQuery's back end is `taxi_platform.io_managers.bigquery` (imported by the gcp profile only).
- Definition metadata `warehouse/lake_table: "clean/green_trips"` also (re)creates `<table>_lake`
  over that asset's hive-partitioned parquet in the lake at `lake_root`: a BigQuery external table
  (hive partitions), or a DuckDB view; the lake's files queried where they lie.
"""

import logging
import random
import re
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from pydantic import Field

from taxi_platform.io_managers import PARTITION_COLUMN, time_window, upstream_metadata
from taxi_platform.io_managers.arrow_data import as_dataset
from taxi_platform.io_managers.ledger import LEDGER_TABLE, ledger_rows, record_failure, unwrap

CLUSTER_BY = "warehouse/cluster_by"
LAKE_TABLE = "warehouse/lake_table"
DATETIME_NOTE = "New York local time, stored as DATETIME (no time zone)."
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
log = logging.getLogger(__name__)


class Window:
    """The rows of a partition (or a range of them): partition_column in [start, end)."""

    def __init__(self, column: str, start: datetime, end: datetime):
        self.column, self.start, self.end = column, start.date(), end.date()

    def __str__(self) -> str:
        return f"{self.column} in [{self.start}, {self.end})"


class WarehouseSQL(dg.ConfigurableResource, ABC):
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


class WarehouseIOManager(dg.ConfigurableIOManager, ABC):
    """The contract both back ends keep; subclasses implement `_replace`, `_read` and
    `_create_lake_table` through their `sql` resource."""

    lake_root: str = Field(default="", description="The lake's root, for `<table>_lake` tables.")

    @property
    @abstractmethod
    def warehouse(self) -> WarehouseSQL:
        """The SQL resource the IO manager stores through."""

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        keys: list[str | None] = (
            list(context.asset_partition_keys) if context.has_asset_partitions else [None]
        )
        obj, provenance = unwrap(obj, keys)
        ledger = None
        if provenance is not None:
            parts = obj if isinstance(obj, dict) else {keys[0]: obj}
            loaded = {key: as_dataset(rows).count_rows() for key, rows in parts.items()}
            ledger = ledger_rows(context, provenance, loaded)
        data = as_dataset(obj)
        meta = context.definition_metadata
        name = _checked_name(context.asset_key.path[-1])
        window = None
        if context.has_asset_partitions:
            span = context.asset_partitions_time_window
            window = Window(meta[PARTITION_COLUMN], span.start, span.end)
        descriptions = _descriptions(data.schema, meta)
        try:
            stored = self._replace(name, data, window, list(meta.get(CLUSTER_BY) or []), descriptions, ledger)
        except Exception as error:
            if provenance is not None:
                record_failure(context, provenance, error, self._append_ledger)
            raise
        if meta.get(LAKE_TABLE) and self.lake_root:
            prefix = f"{self.lake_root.rstrip('/')}/{meta[LAKE_TABLE]}"
            self._create_lake_table(f"{name}_lake", prefix, window.column if window else None)
            stored["lake_table"] = self.warehouse.table_id(f"{name}_lake")
        context.add_output_metadata(
            {"dagster/table_name": self.warehouse.table_id(name), "rows_written": data.count_rows(), **stored}
        )

    def load_input(self, context: dg.InputContext):
        meta = upstream_metadata(context)
        name = _checked_name(context.asset_key.path[-1])
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
        any) to LEDGER_TABLE; metadata about the table."""

    @abstractmethod
    def _append_ledger(self, rows: pa.Table) -> None:
        """Append rows to LEDGER_TABLE on their own (a failed attempt's)."""

    @abstractmethod
    def _read(self, name: str, window: Window | None) -> pa.Table:
        """The window's rows (all rows if None)."""

    @abstractmethod
    def _create_lake_table(self, name: str, prefix: str, partition_column: str | None) -> None:
        """(Re)create a table over the lake's parquet under `prefix`, hive-partitioned by the column."""


class DuckDBSQL(WarehouseSQL):
    """The local warehouse: an embedded DuckDB file."""

    path: str = Field(description="The DuckDB database file.")
    max_tries: int = Field(
        default=8,
        ge=1,
        description="Tries to open the file while another process holds its lock, the first included.",
    )
    backoff_seconds: float = Field(
        default=1.0, description="First wait between tries; doubles each try, with jitter."
    )
    max_backoff_seconds: float = Field(default=30.0, description="Longest wait between tries.")
    memory_limit: str = Field(
        default="1GB", description="DuckDB's memory; beyond it, sorts spill to <path>.tmp on disk."
    )

    def ref(self, name: str) -> str:
        return f"{_quote(self.dataset)}.{_quote(_checked_name(name))}"

    def dbt_output(self) -> dict:
        """dbt-duckdb waits out another process's lock on the file as `connect` does: `max_tries`."""
        return {
            "type": "duckdb",
            "path": self.path,
            "schema": self.dataset,
            "settings": {"memory_limit": self.memory_limit},
            "retries": {"connect_attempts": self.max_tries},
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
    def connect(self, purpose: str = ""):
        """One process at a time may hold the file (the warehouse pool keeps a deployment's own runs
        in turn): another process's lock is waited out, up to `max_tries` tries with exponential
        backoff and jitter, then WarehouseLocked; any other error fails at once. `purpose` (a table
        and its rows) is named in the warnings and the error."""
        import duckdb

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        prefix = f"{purpose}: " if purpose else ""
        backoff, tries = self.backoff_seconds, 0
        while True:
            tries += 1
            try:
                con = duckdb.connect(self.path, config={"memory_limit": self.memory_limit})
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower():
                    raise
                if tries >= self.max_tries:
                    raise WarehouseLocked(
                        f"{prefix}the warehouse {self.path} stayed locked by another process through"
                        f" {tries} tries (max_tries): {error}"
                    ) from error
                wait = min(backoff * random.uniform(0.5, 1.5), self.max_backoff_seconds)
                log.warning(
                    "%sthe warehouse %s is locked by another process: try %d of %d failed with %s;"
                    " trying again in %.2f s: %s",
                    prefix,
                    self.path,
                    tries,
                    self.max_tries,
                    type(error).__name__,
                    wait,
                    error,
                )
                time.sleep(wait)
                backoff = min(backoff * 2, self.max_backoff_seconds)
        if tries > 1:
            log.info("the warehouse %s is free: connected on try %d", self.path, tries)
        try:
            yield con
        finally:
            con.close()


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
            _check_drift(self.sql.table_id(name), existing, wanted)
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
                self._insert_ledger(con, ledger)
            con.commit()
        return {"warehouse_path": dg.MetadataValue.path(self.sql.path)}

    def _append_ledger(self, rows: pa.Table) -> None:
        with self.sql.connect(self.sql.table_id(LEDGER_TABLE)) as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.sql.dataset)}")
            self._insert_ledger(con, rows)

    def _insert_ledger(self, con, rows: pa.Table) -> None:
        ledger = self.sql.ref(LEDGER_TABLE)
        con.register("ledger_rows", rows)
        con.execute(f"CREATE TABLE IF NOT EXISTS {ledger} AS SELECT * FROM ledger_rows LIMIT 0")
        con.execute(f"INSERT INTO {ledger} BY NAME SELECT * FROM ledger_rows")

    def _read(self, name: str, window: Window | None) -> pa.Table:
        target = self.sql.ref(name)
        with self.sql.connect() as con:
            if window is None:
                return con.execute(f"SELECT * FROM {target}").to_arrow_table()
            column = _quote(window.column)
            return con.execute(
                f"SELECT * FROM {target} WHERE {column} >= ? AND {column} < ?", [window.start, window.end]
            ).to_arrow_table()

    def _create_lake_table(self, name, prefix, partition_column) -> None:
        files = f"{Path(prefix).resolve().as_posix()}/*/*.parquet"
        with self.sql.connect() as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.sql.dataset)}")
            con.execute(
                f"CREATE OR REPLACE VIEW {self.sql.ref(name)} AS SELECT * FROM"
                f" read_parquet({_literal(files)}, hive_partitioning = true, union_by_name = true)"
            )


def _descriptions(schema: pa.Schema, meta) -> dict[str, str]:
    """Column descriptions from the asset's column schema; naive timestamps say they are DATETIME."""
    described = meta.get("dagster/column_schema")
    described = getattr(described, "schema", described)  # a TableSchemaMetadataValue or a TableSchema
    texts = {c.name: c.description for c in described.columns if c.description} if described else {}
    for field in schema:
        if pa.types.is_timestamp(field.type) and field.type.tz is None:
            texts[field.name] = " ".join(filter(None, [texts.get(field.name), DATETIME_NOTE]))
    return texts


def _check_drift(table_id: str, existing: dict, wanted: dict) -> None:
    changed = {n: (existing[n], t) for n, t in wanted.items() if n in existing and existing[n] != t}
    if changed:
        raise ValueError(f"{table_id}: column types changed (table, data): {changed}")


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid warehouse table name")
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
