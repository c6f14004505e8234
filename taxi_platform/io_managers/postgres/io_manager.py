"""PostgreSQL tables written with COPY; a partitioned asset's table is partitioned in PostgreSQL too.

Generic: it knows asset keys, arrow schemas and partition time windows, nothing of taxis.
- Table: schema `db_schema` (default `taxi`), table = the asset key's last part, or the definition
  metadata `postgres/table`. Identifiers are always quoted.
- Columns and types from the arrow schema (naive timestamps stay `timestamp without time zone`,
  integers stay integers whatever their nulls).
- Partitioned assets name their time column in definition metadata `PARTITION_COLUMN`; the
  table is then PARTITION BY RANGE on it, one PostgreSQL partition per asset partition
  (`<table>_2020_10`). Writing a partition COPYs its rows into a new table, indexes and checks it, then
  drops the old partition and attaches the new one, all in ONE transaction (with every other month of
  a single-run backfill): readers see the old month or the new, never half, never both; other months
  are never touched, and no DELETE leaves dead rows behind.
- Definition metadata `postgres/unique_key` adds a unique index on that column (per partition: unique
  within each month), built once after the COPY.
- Unpartitioned assets: DELETE and COPY in one transaction.
- Schema drift: a column the table lacks is added (stated policy `add`), or with `on_new_column="fail"`
  the write fails naming the columns; a column whose type changed always fails. Nothing is dropped.
- Writers of one partition (or of one unpartitioned table) are serialized by a transaction-scoped
  advisory lock; writers of different months of a table may run at the same time.
- The swap waits at most `lock_timeout_seconds` for the locks it needs (a reader holding the month, say).
- A write that meets a transient error (the connection lost or refused, a serialization failure, a
  deadlock, a lock not available in time) is tried again whole, in a new transaction (it replaces its
  months: trying it again is safe), under `retry` (the one retry policy, `taxi_platform.retrying`);
  each retry is a warning in the run's log. Any other error fails at once, naming the table and months.
  Rows given as a stream (RecordBatchReader) cannot be read twice: their write is tried once.
- No error or log carries the URL's password: messages go through `redact`.
"""

import dagster as dg
import psycopg
import pyarrow as pa
from psycopg import sql
from pydantic import Field

from taxi_platform.io_managers import PARTITION_COLUMN, time_window, upstream_metadata
from taxi_platform.io_managers.arrow_data import stream
from taxi_platform.io_managers.postgres.binary_copy import copy_rows, read_query
from taxi_platform.io_managers.postgres.connection import PostgresUnavailable, connect, describe, transient
from taxi_platform.io_managers.postgres.ddl import add_columns, columns, ensure_table, lock, unique_index
from taxi_platform.io_managers.postgres.partition_swap import replace_partitions
from taxi_platform.ledger import (
    LEDGER_SCHEMA,
    LEDGER_TABLE,
    LedgerRows,
    LedgerSink,
    missing_columns,
    write_audited,
)
from taxi_platform.retrying import POSTGRES_WRITE, RetriesExhausted, RetrySettings, retried

TABLE = "postgres/table"
UNIQUE_KEY = "postgres/unique_key"


class PostgresWriteError(Exception):
    """A write that failed, named by its table and months."""


class PostgresIOManager(dg.ConfigurableIOManager, LedgerSink):
    """Stores pyarrow Tables in PostgreSQL, partition-exact and atomic."""

    url: str = Field(default="", description="postgresql:// URL; empty: the embedded server.")
    embedded_dir: str = Field(default="", description="Data folder of the embedded server.")
    db_schema: str = Field(default="taxi", description="Schema of the asset tables.")
    on_new_column: str = Field(default="add", description="Schema drift policy: add | fail.")
    retry: RetrySettings = Field(
        default=POSTGRES_WRITE, description="Tries of a write meeting transient errors (see the module)."
    )
    lock_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait of the partition swap for a lock (PostgreSQL's lock_timeout); then "
        "the write is tried again.",
    )

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        meta = context.definition_metadata
        name = self.table_name(context.asset_key, meta)
        target = f"{self.db_schema}.{name}"
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            target += f" {keys[0]}" if len(keys) == 1 else f" {keys[0]}..{keys[-1]}"

        def write(rows, ledger: LedgerRows | None) -> int:
            def in_transaction(conn: psycopg.Connection) -> int:
                if context.has_asset_partitions:
                    loaded: dict[str | None, int] = {**self._replace_partitions(conn, context, name, rows)}
                else:
                    loaded = {None: self._replace_table(conn, name, meta.get(UNIQUE_KEY), stream(rows))}
                if ledger is not None:  # in the same transaction: a ledger row iff its data is visible
                    self.append_ledger(ledger(loaded), within=conn)
                return sum(loaded.values())

            return self._write_with_retries(context.log, target, in_transaction, replayable=_replayable(rows))

        written = write_audited(context, obj, self, write)
        context.add_output_metadata(
            {"dagster/table_name": f"{self.db_schema}.{name}", "rows_written": written}
        )

    def append_ledger(self, rows: pa.Table, within: psycopg.Connection | None = None) -> None:
        if within is None:
            with self.connect() as conn, conn.transaction():
                self.append_ledger(rows, conn)
            return
        existing = columns(within, self.db_schema, LEDGER_TABLE)
        if existing:  # the columns the ledger gained since, whatever the data's drift policy
            add_columns(within, self.db_schema, LEDGER_TABLE, missing_columns(existing))
        else:
            ensure_table(within, self.db_schema, LEDGER_TABLE, LEDGER_SCHEMA, None)
        copy_rows(within, sql.Identifier(self.db_schema, LEDGER_TABLE), rows.to_reader())

    def _write_with_retries(self, log, target: str, write, replayable: bool) -> int:
        """`write(conn)` in a transaction of its own, tried again on transient errors (see the module)."""

        def once() -> int:
            with self.connect() as conn, conn.transaction():
                return write(conn)

        try:
            return retried(
                once,
                self.retry,
                transient=lambda error: replayable and transient(error),
                log=log,
                what=target,
                where="PostgreSQL",
                describe=self._describe,
            )
        except RetriesExhausted as exhausted:
            raise PostgresWriteError(str(exhausted)) from exhausted.last
        except (psycopg.Error, PostgresUnavailable) as error:
            why = ""
            if transient(error):  # not replayable
                why = "; not tried again: its rows came as a stream, which cannot be read twice"
            raise PostgresWriteError(f"{target}: {self._describe(error)}{why}") from error

    def _describe(self, error: BaseException) -> str:
        return describe(error, self.url)

    def _replace_table(self, conn, name: str, unique_key: str | None, rows) -> int:
        """DELETE and COPY an unpartitioned table's rows."""
        target = sql.Identifier(self.db_schema, name)
        lock(conn, f"{self.db_schema}.{name}")
        ensure_table(conn, self.db_schema, name, rows.schema, None, self.on_new_column)
        conn.execute(sql.SQL("DELETE FROM {}").format(target))
        written = copy_rows(conn, target, rows)
        if unique_key:
            unique_index(conn, self.db_schema, name, unique_key, f"{name}_{unique_key}_key")
        return written

    def _replace_partitions(self, conn, context: dg.OutputContext, name: str, obj) -> dict[str, int]:
        """The run's partitions swapped in together; the rows of each."""
        meta = context.definition_metadata
        keys = list(context.asset_partition_keys)
        parts = obj if isinstance(obj, dict) else {keys[0]: obj} if len(keys) == 1 else {}
        if sorted(parts) != sorted(keys):
            raise ValueError(f"{self.db_schema}.{name}: a run over {keys} must output one value a partition")
        bounded = {}
        for key, rows in parts.items():
            window = time_window(context.asset_partitions_def, key)
            bounded[key] = (rows, (window.start.date(), window.end.date()))
        return replace_partitions(
            conn,
            self.db_schema,
            name,
            bounded,
            meta[PARTITION_COLUMN],
            meta.get(UNIQUE_KEY),
            self.lock_timeout_seconds,
            self.on_new_column,
        )

    def load_input(self, context: dg.InputContext):
        meta = upstream_metadata(context)
        target = sql.Identifier(self.db_schema, self.table_name(context.asset_key, meta))
        with self.connect() as conn:
            if not context.has_asset_partitions:
                return read_query(conn, sql.SQL("SELECT * FROM {}").format(target), [])
            column = sql.Identifier(meta[PARTITION_COLUMN])
            query = sql.SQL("SELECT * FROM {} WHERE {} >= %s AND {} < %s").format(target, column, column)
            partitions_def = context.asset_partitions_def
            tables = {}
            for key in context.asset_partition_keys:
                window = time_window(partitions_def, key)
                bounds = [window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)]
                tables[key] = read_query(conn, query, bounds)
        return tables if len(tables) > 1 else next(iter(tables.values()))

    def table_name(self, asset_key: dg.AssetKey, metadata) -> str:
        return metadata.get(TABLE) or asset_key.path[-1]

    def connect(self):
        """A connection to the URL's server, or the embedded one (see `connection.connect`)."""
        return connect(self.url, self.embedded_dir)


def _replayable(data) -> bool:
    """Whether the data can be read again for another try: a stream cannot."""
    if isinstance(data, dict):
        return all(map(_replayable, data.values()))
    return not isinstance(data, pa.RecordBatchReader)
