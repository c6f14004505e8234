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

import io
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import LiteralString
from urllib.parse import unquote

import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from pgpq import ArrowToPostgresBinaryEncoder
from psycopg import sql
from pydantic import Field

from taxi_platform.io_managers import PARTITION_COLUMN, time_window, upstream_metadata
from taxi_platform.io_managers.arrow_data import stream
from taxi_platform.ledger import (
    LEDGER_SCHEMA,
    LEDGER_TABLE,
    LedgerRows,
    LedgerSink,
    missing_columns,
    write_audited,
)
from taxi_platform.redaction import redact
from taxi_platform.retrying import POSTGRES_WRITE, RetriesExhausted, RetrySettings, retried

TABLE = "postgres/table"
UNIQUE_KEY = "postgres/unique_key"
# Tried again: serialization failure, deadlock, lock not available (lock_timeout), and the server
# ending or refusing the session (admin/crash shutdown, starting up); class 08: connection exceptions.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}

_PG_TYPES: list[tuple[Callable[[pa.DataType], bool], LiteralString]] = [
    (pa.types.is_int64, "bigint"),
    (pa.types.is_int32, "integer"),
    (pa.types.is_int16, "smallint"),
    (pa.types.is_float64, "double precision"),
    (pa.types.is_float32, "real"),
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_date32, "date"),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "text"),
    (lambda t: pa.types.is_timestamp(t) and t.tz is None, "timestamp without time zone"),
    (lambda t: pa.types.is_timestamp(t) and t.tz is not None, "timestamp with time zone"),
]
_ARROW_TYPES = {
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "smallint": pa.int16(),
    "double precision": pa.float64(),
    "real": pa.float32(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "text": pa.string(),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
}


def pg_type(arrow_type: pa.DataType) -> LiteralString:
    for matches, name in _PG_TYPES:
        if matches(arrow_type):
            return name
    raise TypeError(f"no PostgreSQL type for arrow type {arrow_type}")


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
                loaded: dict[str | None, int] = {}
                if context.has_asset_partitions:
                    self._replace_partitions(conn, context, name, rows, loaded)
                else:
                    loaded[None] = self._replace_table(conn, name, meta.get(UNIQUE_KEY), stream(rows))
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
        existing = self._columns(within, LEDGER_TABLE)
        if not existing:
            self._ensure_table(within, LEDGER_TABLE, LEDGER_SCHEMA, None)
        # Columns the ledger gained since the table was made, whatever the data's drift policy.
        for field in missing_columns(existing) if existing else []:
            within.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    sql.Identifier(self.db_schema, LEDGER_TABLE),
                    sql.Identifier(field.name),
                    sql.SQL(pg_type(field.type)),
                )
            )
        copy_rows(within, sql.Identifier(self.db_schema, LEDGER_TABLE), rows.to_reader())

    def _write_with_retries(
        self, log, target: str, write: Callable[[psycopg.Connection], int], replayable: bool
    ) -> int:
        """`write` in a transaction of its own, tried again on transient errors (see the module)."""

        def once() -> int:
            with self.connect() as conn, conn.transaction():
                return write(conn)

        try:
            return retried(
                once,
                self.retry,
                transient=lambda error: replayable and _transient(error),
                log=log,
                what=target,
                where="PostgreSQL",
                describe=self._describe,
            )
        except RetriesExhausted as exhausted:
            raise PostgresWriteError(str(exhausted)) from exhausted.last
        except (psycopg.Error, PostgresUnavailable) as error:
            why = ""
            if _transient(error):  # not replayable
                why = "; not tried again: its rows came as a stream, which cannot be read twice"
            raise PostgresWriteError(f"{target}: {self._describe(error)}{why}") from error

    def _describe(self, error: BaseException) -> str:
        """The error's class and message, without the URL's secrets."""
        if isinstance(error, PostgresUnavailable):
            return str(error)
        return f"{type(error).__name__}: {redact(str(error).strip(), *_url_secrets(self.url))}"

    def _replace_table(self, conn, name: str, unique_key: str | None, rows) -> int:
        target = sql.Identifier(self.db_schema, name)
        _lock(conn, f"{self.db_schema}.{name}")
        self._ensure_table(conn, name, rows.schema, None)
        conn.execute(sql.SQL("DELETE FROM {}").format(target))
        written = copy_rows(conn, target, rows)
        if unique_key:
            _unique_index(conn, self.db_schema, name, unique_key, f"{name}_{unique_key}_key")
        return written

    def _replace_partitions(self, conn, context: dg.OutputContext, name: str, obj, loaded: dict) -> None:
        """Stage each partition in a table of its own, then swap them all in at the end; the rows
        of each partition go into `loaded`."""
        meta = context.definition_metadata
        keys = list(context.asset_partition_keys)
        parts = obj if isinstance(obj, dict) else {keys[0]: obj} if len(keys) == 1 else {}
        if sorted(parts) != sorted(keys):
            raise ValueError(f"{self.db_schema}.{name}: a run over {keys} must output one value a partition")
        schema = next(iter(parts.values())).schema  # read from the data without reading a row
        columns = self._ensure_table(conn, name, schema, meta[PARTITION_COLUMN])
        staged = []
        for key, part in parts.items():
            window = time_window(context.asset_partitions_def, key)
            bounds = (window.start.date(), window.end.date())
            loaded[key] = self._stage(conn, name, key, stream(part), columns, bounds, meta)
            staged.append((key, bounds))
        # The swap needs the old partitions' locks: it waits for their readers, but not for ever.
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)",
            [f"{max(1, round(self.lock_timeout_seconds * 1000))}ms"],
        )
        for key, bounds in staged:
            self._swap_in(conn, name, key, bounds, meta.get(UNIQUE_KEY))

    def _stage(self, conn, name: str, key: str, rows, columns: dict, bounds, meta) -> int:
        """COPY a partition's rows into `<partition>_new`, index it and check its bounds."""
        column, unique_key = meta[PARTITION_COLUMN], meta.get(UNIQUE_KEY)
        partition = _partition_name(name, key)
        staging = sql.Identifier(self.db_schema, f"{partition}_new")
        _lock(conn, f"{self.db_schema}.{partition}")
        # Defined from the catalog, not LIKE the parent: LIKE would lock the parent, and two writers
        # holding that lock could not then both drop their old partitions (a deadlock).
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(
                staging,
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns.items()
                ),
            )
        )
        written = copy_rows(conn, staging, rows)
        if unique_key:
            _unique_index(conn, self.db_schema, f"{partition}_new", unique_key, f"{partition}_new_key")
        start, end = bounds
        check = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({c} IS NOT NULL AND {c} >= {} AND {c} < {})")
        try:  # checked now, so that attaching needs no scan while the parent is locked
            with conn.transaction():
                conn.execute(
                    check.format(
                        staging,
                        sql.Identifier(f"{partition}_bounds"),
                        sql.Literal(start),
                        sql.Literal(end),
                        c=sql.Identifier(column),
                    )
                )
        except psycopg.errors.CheckViolation as error:
            raise ValueError(
                f"{self.db_schema}.{name}: partition {key} holds rows with {column} outside [{start}, {end})"
            ) from error
        return written

    def _swap_in(self, conn, name: str, key: str, bounds, unique_key: str | None) -> None:
        """Drop the partition's old table, and attach the staged one in its place."""
        partition = _partition_name(name, key)
        target = sql.Identifier(self.db_schema, partition)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(self.db_schema, f"{partition}_new"), sql.Identifier(partition)
            )
        )
        if unique_key:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(self.db_schema, f"{partition}_new_key"), sql.Identifier(f"{partition}_key")
                )
            )
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(self.db_schema, name), target, *map(sql.Literal, bounds)
            )
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

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection; PostgresUnavailable, without the URL's secrets, if none can be made."""
        url = self.url or _embedded_url(self.embedded_dir)
        try:
            conn = psycopg.connect(url)
        except psycopg.Error as error:
            # Raised from None: the driver's own message may quote the password (a malformed URL).
            raise PostgresUnavailable(
                f"cannot connect to PostgreSQL: {type(error).__name__}:"
                f" {redact(str(error).strip(), *_url_secrets(url))}",
                transient=isinstance(error, psycopg.OperationalError),
            ) from None
        with conn:
            yield conn

    def _columns(self, conn, table_name: str) -> dict[str, str]:
        return dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                [self.db_schema, table_name],
            ).fetchall()
        )

    def _ensure_table(self, conn, table_name: str, schema: pa.Schema, partition_column: str | None) -> dict:
        """Create the table (partitioned by `partition_column` if given), or add the data's new
        columns to it (the drift policy allowing); the table's columns and types."""
        db_schema, target = self.db_schema, sql.Identifier(self.db_schema, table_name)
        existing = self._columns(conn, table_name)
        if not existing:  # the first writer creates it; one that waited finds it created
            _lock(conn, f"{db_schema}.{table_name}")
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(db_schema)))
            existing = self._columns(conn, table_name)
        wanted: dict[str, LiteralString] = {field.name: pg_type(field.type) for field in schema}
        if not existing:
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type)) for name, type in wanted.items()
            )
            partitioning = sql.SQL("")
            if partition_column:
                partitioning = sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(partition_column))
            conn.execute(sql.SQL("CREATE TABLE {} ({}){}").format(target, columns, partitioning))
            return wanted
        kind = conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            [db_schema, table_name],
        ).fetchone()[0]
        if partition_column and kind != "p":
            raise ValueError(
                f"{db_schema}.{table_name} exists but is not partitioned by "
                f"{partition_column}; rename or drop it, and the months will be loaded anew"
            )
        changed = {n: (existing[n], t) for n, t in wanted.items() if n in existing and existing[n] != t}
        new = [n for n in wanted if n not in existing]
        if changed or (new and self.on_new_column != "add"):
            raise ValueError(
                f"{db_schema}.{table_name}: the data's columns differ from the table's: "
                + "; ".join(
                    [f"new columns {new}"] * bool(new)
                    + [f"changed types (table, data) {changed}"] * bool(changed)
                )
            )
        for name in new:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    target, sql.Identifier(name), sql.SQL(wanted[name])
                )
            )
        return {**existing, **{name: wanted[name] for name in new}}


class PostgresUnavailable(Exception):
    """No connection could be made; `transient` if trying again may help (the server unreachable,
    starting, or refusing more sessions; psycopg gives such failures no SQLSTATE to tell them from a
    refused login), not for a malformed URL."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


class PostgresWriteError(Exception):
    """A write that failed, named by its table and months."""


def _transient(error: BaseException) -> bool:
    """Whether trying the write again, in a new transaction, may succeed."""
    if isinstance(error, PostgresUnavailable):
        return error.transient
    if isinstance(error, psycopg.Error) and error.sqlstate:
        return error.sqlstate in _TRANSIENT_SQLSTATES or error.sqlstate.startswith("08")
    # No SQLSTATE: the client lost the connection (the server gone, the session terminated).
    return isinstance(error, psycopg.OperationalError)


def _replayable(data) -> bool:
    """Whether the data can be read again for another try: a stream cannot."""
    if isinstance(data, dict):
        return all(map(_replayable, data.values()))
    return not isinstance(data, pa.RecordBatchReader)


def _url_secrets(url: str) -> list[str]:
    """The password of a URL or key=value connection string, as written and decoded, found even when
    the rest of it is malformed."""
    found = re.findall(r"://[^:/@\s]*:([^@\s]+)@", url) + re.findall(r"\bpassword\s*=\s*'?([^\s'&]+)", url)
    return found + [unquote(secret) for secret in found]


def copy_rows(conn: psycopg.Connection, target: sql.Composable, rows: pa.RecordBatchReader) -> int:
    """COPY the rows in PostgreSQL's binary format, encoded from arrow batch by batch (pgpq): no text
    to format or parse, and NULL and '' stay apart. The number of rows copied.

    Measured on 1.25 million clean yellow rows: 1.65 s, against 3.27 s for CSV written by pyarrow."""
    columns = sql.SQL(", ").join(map(sql.Identifier, rows.schema.names))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(target, columns)
    encoder = ArrowToPostgresBinaryEncoder(rows.schema)
    count = 0
    with conn.cursor().copy(statement) as copy:
        copy.write(encoder.write_header())
        for batch in rows:
            copy.write(encoder.write_batch(batch))
            count += batch.num_rows
        copy.write(encoder.finish())
    return count


def read_query(conn: psycopg.Connection, query: sql.Composed, params: list) -> pa.Table:
    """A query's rows as an arrow table typed from the result's PostgreSQL types."""
    cursor = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query), params)
    if cursor.description is None:  # a statement that returns no rows
        raise ValueError("read_query takes a query")
    names = [d.name for d in cursor.description]
    types = {d.name: _ARROW_TYPES[_type_name(conn, d.type_code)] for d in cursor.description}
    buffer = io.BytesIO()
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(
        # mogrify quotes the parameters into the query; psycopg types its result as any str.
        sql.SQL(psycopg.ClientCursor(conn).mogrify(query, params))  # pyright: ignore[reportArgumentType]
    )
    with conn.cursor().copy(copy_sql) as copy:
        for block in copy:
            buffer.write(block)
    if buffer.tell() == 0:
        return pa.schema([(n, types[n]) for n in names]).empty_table()
    buffer.seek(0)
    return pacsv.read_csv(
        buffer,
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            # PostgreSQL writes NULL as an empty unquoted field, and '' as "": only the former is
            # null. Not pyarrow's default null words: the text 'NA', 'N/A', 'NULL' stays text.
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    ).select(names)


def _type_name(conn, oid: int) -> str:
    return conn.execute("SELECT format_type(%s, NULL)", [oid]).fetchone()[0]


def _lock(conn, name: str) -> None:
    """Wait for other writers of `name` (a table, or a partition) until this transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


def _unique_index(conn, db_schema: str, table: str, column: str, index: str) -> None:
    conn.execute(
        sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index), sql.Identifier(db_schema, table), sql.Identifier(column)
        )
    )


def _partition_name(table: str, key: str) -> str:
    """`green_trips` + `2020-10` -> `green_trips_2020_10` (PostgreSQL keeps 63 bytes of a name)."""
    name = f"{table}_{re.sub(r'[^A-Za-z0-9]', '_', key)}"
    if len(f"{name}_new_key".encode()) > 63:
        raise ValueError(f"table name {table!r} is too long to name its partitions")
    return name


_embedded_lock = threading.Lock()


def _embedded_url(folder: str) -> str:
    """Start (once per process) the embedded PostgreSQL of the local profile, and return its URL."""
    from pgserver.postgres_server import get_server

    if not folder:
        raise ValueError("no PostgreSQL URL and no folder for the embedded server")
    with _embedded_lock:
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
        return get_server(folder, cleanup_mode=None).get_uri()
