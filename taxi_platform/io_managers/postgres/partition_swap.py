"""A partitioned table's partitions replaced in the caller's transaction: each staged in a table of its
own (COPY, unique index, bounds check), then swapped in for the old one (dropped, the staged one
renamed and attached). Readers see the old partition or the new, never half, never both."""

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from taxi_platform.io_managers.arrow_data import stream
from taxi_platform.io_managers.postgres.binary_copy import copy_rows
from taxi_platform.io_managers.postgres.ddl import ensure_table, lock, unique_index

Bounds = tuple[date, date]


def replace_partitions(
    conn: psycopg.Connection,
    db_schema: str,
    name: str,
    parts: Mapping[str, tuple[Any, Bounds]],
    partition_column: str,
    unique_key: str | None,
    lock_timeout_seconds: float,
    on_new_column: str,
) -> dict[str, int]:
    """Replace each partition key's rows (a Table, Dataset or stream) by those given, whose
    `partition_column` must lie in its bounds [start, end); the rows loaded by key."""
    schema = next(iter(parts.values()))[0].schema  # read from the data without reading a row
    columns = ensure_table(conn, db_schema, name, schema, partition_column, on_new_column)
    loaded = {
        key: _stage(conn, db_schema, name, key, stream(rows), columns, bounds, partition_column, unique_key)
        for key, (rows, bounds) in parts.items()
    }
    # The swap needs the old partitions' locks: it waits for their readers, but not for ever.
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true)", [f"{max(1, round(lock_timeout_seconds * 1000))}ms"]
    )
    for key, (_, bounds) in parts.items():
        _swap_in(conn, db_schema, name, key, bounds, unique_key)
    return loaded


def _stage(
    conn, db_schema: str, name: str, key: str, rows, columns: dict, bounds: Bounds, column: str, unique_key
) -> int:
    """COPY a partition's rows into `<partition>_new`, index it and check its bounds."""
    partition = _partition_name(name, key)
    staging = sql.Identifier(db_schema, f"{partition}_new")
    lock(conn, f"{db_schema}.{partition}")
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
        unique_index(conn, db_schema, f"{partition}_new", unique_key, f"{partition}_new_key")
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
            f"{db_schema}.{name}: partition {key} holds rows with {column} outside [{start}, {end})"
        ) from error
    return written


def _swap_in(conn, db_schema: str, name: str, key: str, bounds: Bounds, unique_key: str | None) -> None:
    """Drop the partition's old table, and attach the staged one in its place."""
    partition = _partition_name(name, key)
    target = sql.Identifier(db_schema, partition)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    conn.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(db_schema, f"{partition}_new"), sql.Identifier(partition)
        )
    )
    if unique_key:
        conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(db_schema, f"{partition}_new_key"), sql.Identifier(f"{partition}_key")
            )
        )
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(db_schema, name), target, *map(sql.Literal, bounds)
        )
    )


def _partition_name(table: str, key: str) -> str:
    """`green_trips` + `2020-10` -> `green_trips_2020_10` (PostgreSQL keeps 63 bytes of a name)."""
    name = f"{table}_{re.sub(r'[^A-Za-z0-9]', '_', key)}"
    if len(f"{name}_new_key".encode()) > 63:
        raise ValueError(f"table name {table!r} is too long to name its partitions")
    return name
