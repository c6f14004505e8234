"""Load benchmark: one synthetic yellow month into PostgreSQL, three ways, in the same run.

    python -m benchmarks.postgres_load [--rows 1400000] [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                       [--repeat N] [--seed S]

(a) the course's way: `table.to_pandas().to_sql(..., if_exists="replace", index=False, chunksize=100_000)`
    through a SQLAlchemy `postgresql+psycopg2://` engine (the to_pandas conversion is inside the time);
(b) our IO manager: `PostgresIOManager.handle_output` for partition 2021-01 of `postgres/yellow_trips`, as a
    Dagster run calls it: connect, advisory lock, create the partitioned table, COPY the month in the binary
    format (pgpq) into a new partition table, its unique index on trip_key, its bounds check, attach, commit;
(c) the floor: `psql \\copy` of a ready CSV file (written beforehand, not timed) into an empty table of the
    same columns and types, without an index.

Every way starts from no table (dropped beforehand, not timed) and a CHECKPOINT (not timed), so no way
pays for the WAL of another. With --repeat N each way runs N times and the best time is reported. The
row count of each table is checked against the rows generated (a mismatch raises). Everything is written
into a fresh schema `bench_<random>` that is dropped at the end.

Goals (issue 3, item 5): (b) at least 20x faster than (a), and (b) within 1.3x of (c).
`main(argv)` returns the figures as a dict (the smoke test calls it with `--rows 3000`).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy
from psycopg import sql

from benchmarks.common import default_url, execute, small_run_note
from synthetic.months import DEFAULT_SEED, synthetic_yellow
from taxi_platform.datasets import DATASETS
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.postgres import UNIQUE_KEY, PostgresIOManager

DEFAULT_ROWS = 1_400_000
MONTH = "2021-01"
SPEC = DATASETS["yellow"]
ASSET_KEY = dg.AssetKey(["postgres", "yellow_trips"])
METADATA = {PARTITION_COLUMN: "pickup_date", UNIQUE_KEY: "trip_key"}
GOAL_SPEEDUP = 20.0  # (b) vs (a)
GOAL_RATIO = 1.3  # (b) / (c)

TABLE_A = "yellow_trips_to_sql"
TABLE_B = ASSET_KEY.path[-1]  # the IO manager names the table after the asset key
TABLE_C = "yellow_trips_psql_copy"


# --------------------------------------------------------------------------------------------------
# The three ways


def load_to_sql(engine: sqlalchemy.Engine, table: pa.Table, schema: str) -> dict:
    """(a) The course's way; the arrow -> pandas conversion is timed with it."""
    start = time.perf_counter()
    frame = table.to_pandas()
    converted = time.perf_counter()
    frame.to_sql(TABLE_A, engine, schema=schema, if_exists="replace", index=False, chunksize=100_000)
    end = time.perf_counter()
    return {"seconds": end - start, "to_pandas_seconds": converted - start}


def load_io_manager(url: str, table: pa.Table, schema: str) -> dict:
    """(b) The IO manager writing partition 2021-01, as a run would (unique index included)."""
    manager = PostgresIOManager(url=url, db_schema=schema)
    context = dg.build_output_context(
        asset_key=ASSET_KEY,
        partition_key=MONTH,
        asset_partitions_def=SPEC.partitions_def,
        definition_metadata=METADATA,
    )
    start = time.perf_counter()
    manager.handle_output(context, table)
    return {"seconds": time.perf_counter() - start}


def load_psql_copy(psql: str, url: str, csv_path: Path, schema: str) -> dict:
    """(c) The floor: psql \\copy of the ready CSV file into an empty, index-less table."""
    target = f"{_quote(schema)}.{_quote(TABLE_C)}"
    command = [
        psql,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        url,
        "-c",
        f"\\copy {target} FROM '{csv_path}' WITH (FORMAT csv)",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"psql \\copy failed ({done.returncode}): {done.stderr.strip()}")
    return {"seconds": seconds}


# --------------------------------------------------------------------------------------------------
# Helpers


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _checkpoint(url: str) -> None:
    """Flush the previous way's dirty pages before the next timed load (needs superuser; skipped else)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        execute(url, "CHECKPOINT")


def _drop_table(url: str, schema: str, name: str) -> None:
    execute(url, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))


def _loaded(url: str, schema: str, name: str, rows: int, way: str) -> dict:
    """What the way stored: its rows, and the sums of their trip keys and total amounts (exact, as
    numeric), which any lost, doubled or altered row changes. Raises unless it holds `rows` rows."""
    count, keys, amounts = execute(
        url,
        sql.SQL("SELECT count(*), sum(trip_key::numeric), sum(total_amount::numeric) FROM {}").format(
            sql.Identifier(schema, name)
        ),
    )[0]
    if count != rows:
        raise RuntimeError(f"{way}: {schema}.{name} holds {count:,} rows, {rows:,} were generated")
    return {"rows": count, "trip_key_sum": int(keys), "total_amount_sum": str(amounts)}


def _indexes(url: str, schema: str, name: str) -> list[str]:
    """The indexes of the table and of its partitions."""
    return [
        row[0]
        for row in execute(
            url,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND (tablename = %s OR tablename IN"
            " (SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            "  WHERE i.inhparent = (quote_ident(%s) || '.' || quote_ident(%s))::regclass)) ORDER BY 1",
            [schema, name, schema, name],
        )
    ]


def _sqlalchemy_url(url: str) -> sqlalchemy.URL:
    return sqlalchemy.make_url(url).set(drivername="postgresql+psycopg2")


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.postgres_load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of the synthetic month")
    parser.add_argument("--url", default=default_url(), help="PostgreSQL (default: $TAXI_TEST_POSTGRES_URL)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each way; the best is reported")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic data")
    parser.add_argument("--psql", default="psql", help="the psql executable")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")
    return args


# --------------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> dict:
    args = _parse(argv)
    psql = shutil.which(args.psql)
    if psql is None:
        raise RuntimeError(f"psql not found ({args.psql!r}); way (c) needs it")
    url, rows = args.url, args.rows
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    server = execute(url, "SHOW server_version")[0][0]

    start = time.perf_counter()
    table = synthetic_yellow(rows, args.seed)
    generate_seconds = time.perf_counter() - start

    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    loaded: dict[str, dict] = {}
    to_pandas: list[float] = []
    engine = sqlalchemy.create_engine(_sqlalchemy_url(url))
    with tempfile.TemporaryDirectory(prefix="postgres_load_") as folder:
        csv_path = Path(folder, "yellow_2021-01.csv")
        pacsv.write_csv(table, csv_path, pacsv.WriteOptions(include_header=False))
        csv_bytes = csv_path.stat().st_size
        execute(url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            for _ in range(args.repeat):
                _drop_table(url, schema, TABLE_A)
                _checkpoint(url)
                result = load_to_sql(engine, table, schema)
                times["a"].append(result["seconds"])
                to_pandas.append(result["to_pandas_seconds"])
                loaded["a"] = _loaded(url, schema, TABLE_A, rows, "(a)")

                _drop_table(url, schema, TABLE_B)
                _checkpoint(url)
                times["b"].append(load_io_manager(url, table, schema)["seconds"])
                loaded["b"] = _loaded(url, schema, TABLE_B, rows, "(b)")
                b_indexes = _indexes(url, schema, TABLE_B)
                if not any("UNIQUE" in index and "(trip_key)" in index for index in b_indexes):
                    raise RuntimeError(f"(b): no unique index on trip_key: {b_indexes}")

                _drop_table(url, schema, TABLE_C)
                execute(
                    url,
                    sql.SQL("CREATE TABLE {} (LIKE {})").format(
                        sql.Identifier(schema, TABLE_C), sql.Identifier(schema, TABLE_B)
                    ),
                )
                _checkpoint(url)
                times["c"].append(load_psql_copy(psql, url, csv_path, schema)["seconds"])
                loaded["c"] = _loaded(url, schema, TABLE_C, rows, "(c)")
        finally:
            engine.dispose()
            execute(url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    best = {way: min(values) for way, values in times.items()}
    speedup = best["a"] / best["b"]
    ratio = best["b"] / best["c"]
    figures = {
        "rows": rows,
        "repeat": args.repeat,
        "seed": args.seed,
        "server_version": server,
        "generate_seconds": generate_seconds,
        "csv_bytes": csv_bytes,
        "seconds": best,
        "all_seconds": times,
        "rows_per_second": {way: rows / seconds for way, seconds in best.items()},
        "to_pandas_seconds": min(to_pandas),
        "loaded": loaded,
        "b_indexes": b_indexes,
        "speedup_b_vs_a": speedup,
        "ratio_b_to_c": ratio,
        "goals": {
            f"speedup_b_vs_a>={GOAL_SPEEDUP:g}": speedup >= GOAL_SPEEDUP,
            f"ratio_b_to_c<={GOAL_RATIO:g}": ratio <= GOAL_RATIO,
        },
    }
    _report(figures)
    return figures


def _report(f: dict) -> None:
    names = {
        "a": "(a) pandas to_sql(chunksize=100_000), psycopg2",
        "b": "(b) PostgresIOManager.handle_output",
        "c": "(c) psql \\copy of a ready CSV (floor)",
    }
    width = max(map(len, names.values()))
    seconds = f"seconds (best of {f['repeat']})" if f["repeat"] > 1 else "seconds"
    sw = len(seconds)
    lines = [
        f"PostgreSQL {f['server_version']}; synthetic yellow {MONTH}: {f['rows']:,} rows x "
        f"{len(SPEC.clean_schema)} columns (seed {f['seed']}, generated in {f['generate_seconds']:.1f} s; "
        f"CSV {f['csv_bytes'] / 1e6:.1f} MB)",
        "",
        f"{'way':<{width}}  {'rows':>10}  {seconds:>{sw}}  {'rows/s':>10}",
    ]
    for way, name in names.items():
        lines.append(
            f"{name:<{width}}  {f['rows']:>10,}  {f['seconds'][way]:>{sw}.2f}  "
            f"{f['rows_per_second'][way]:>10,.0f}"
        )
    met = list(f["goals"].values())
    lines += [
        "",
        f"(b) vs (a) speedup: {f['speedup_b_vs_a']:.1f}x   goal >= {GOAL_SPEEDUP:g}x: "
        f"{'met' if met[0] else 'MISSED'}",
        f"(b) / (c) time:     {f['ratio_b_to_c']:.2f}    goal <= {GOAL_RATIO:g}:  {'met' if met[1] else 'MISSED'}",
        "",
        "notes: every table starts absent; CHECKPOINT before each timed load; row counts verified.",
        f"  (a) includes to_pandas() ({f['to_pandas_seconds']:.2f} s); its nullable ints land as double precision, no index.",
        "  (b) includes connect, advisory lock, CREATE TABLE (partitioned), a new partition table, the binary",
        "      COPY streamed from arrow, its unique index on trip_key, its bounds check, ATTACH, commit.",
        "  (c) has no index and does not include writing the CSV file.",
    ]
    lines += small_run_note(f["rows"], "connections, DDL, process start")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
