"""PostgreSQL tables from arrow schemas: their types, creating them, the schema drift policy, the
locks that serialize writers of one table or partition, and unique indexes."""

from collections.abc import Callable, Iterable
from typing import LiteralString

import psycopg
import pyarrow as pa
from psycopg import sql

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


def pg_type(arrow_type: pa.DataType) -> LiteralString:
    for matches, name in _PG_TYPES:
        if matches(arrow_type):
            return name
    raise TypeError(f"no PostgreSQL type for arrow type {arrow_type}")


def columns(conn: psycopg.Connection, db_schema: str, table_name: str) -> dict[str, str]:
    """The table's columns and their types, in order; empty if there is no such table."""
    return dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            [db_schema, table_name],
        ).fetchall()
    )


def ensure_table(
    conn: psycopg.Connection,
    db_schema: str,
    table_name: str,
    schema: pa.Schema,
    partition_column: str | None,
    on_new_column: str = "add",
) -> dict:
    """Create the table (partitioned by `partition_column` if given), or add the data's new columns
    to it (`on_new_column` "add"; "fail" fails naming them; a changed type always fails); the table's
    columns and types."""
    target = sql.Identifier(db_schema, table_name)
    existing = columns(conn, db_schema, table_name)
    if not existing:  # the first writer creates it; one that waited finds it created
        lock(conn, f"{db_schema}.{table_name}")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(db_schema)))
        existing = columns(conn, db_schema, table_name)
    wanted: dict[str, LiteralString] = {field.name: pg_type(field.type) for field in schema}
    if not existing:
        listed = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type)) for name, type in wanted.items()
        )
        partitioning = sql.SQL("")
        if partition_column:
            partitioning = sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(partition_column))
        conn.execute(sql.SQL("CREATE TABLE {} ({}){}").format(target, listed, partitioning))
        return wanted
    kind = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        [db_schema, table_name],
    ).fetchone()
    if partition_column and kind != ("p",):
        raise ValueError(
            f"{db_schema}.{table_name} exists but is not partitioned by "
            f"{partition_column}; rename or drop it, and the months will be loaded anew"
        )
    changed = {n: (existing[n], t) for n, t in wanted.items() if n in existing and existing[n] != t}
    new = [n for n in wanted if n not in existing]
    if changed or (new and on_new_column != "add"):
        raise ValueError(
            f"{db_schema}.{table_name}: the data's columns differ from the table's: "
            + "; ".join(
                [f"new columns {new}"] * bool(new)
                + [f"changed types (table, data) {changed}"] * bool(changed)
            )
        )
    add_columns(conn, db_schema, table_name, [field for field in schema if field.name in new])
    return {**existing, **{name: wanted[name] for name in new}}


def add_columns(
    conn: psycopg.Connection, db_schema: str, table_name: str, fields: Iterable[pa.Field]
) -> None:
    """Add these columns to the table (ones it already has are left as they are)."""
    for field in fields:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                sql.Identifier(db_schema, table_name),
                sql.Identifier(field.name),
                sql.SQL(pg_type(field.type)),
            )
        )


def lock(conn: psycopg.Connection, name: str) -> None:
    """Wait for other writers of `name` (a table, or a partition) until this transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


def unique_index(conn: psycopg.Connection, db_schema: str, table: str, column: str, index: str) -> None:
    conn.execute(
        sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index), sql.Identifier(db_schema, table), sql.Identifier(column)
        )
    )
