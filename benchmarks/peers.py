"""The ways the platform is measured against, besides the course's (benchmarks/end_to_end.py): each a
plain function that `end_to_end` runs in a process of its own on the same synthetic month.

- floor: what a careful engineer writes by hand, no orchestration: pyarrow reads the CSV.gz, pyarrow
  compute applies the rules, the parquet lake is written hive-partitioned by pickup_date, PostgreSQL is
  loaded by binary COPY (pgpq) into a table created in the same transaction, DuckDB from the parquet.
  Binary COPY through pgpq was kept over ADBC's `adbc_ingest` (FLOOR_COPY_NOTE), measured once here.
- mage-style: pandas read_csv, the rules, to_parquet, then to_csv into a buffer and COPY, as Mage's
  PostgreSQL exporter loads a frame.
- dlt: the rules in pyarrow, then `dlt.pipeline(...).run(...)` into PostgreSQL with the given
  loader_file_format (parquet: dlt loads it through ADBC; csv: COPY of its CSV files) and into DuckDB
  (parquet: DuckDB takes no csv from dlt).

The rules are the platform's: the pickup inside the month; passenger_count > 0 and trip_distance > 0
(the dataset's positive columns; blank fails); exact duplicate rows dropped (the first kept).
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from taxi_platform.datasets import PICKUP_DATE, DatasetSpec

FLOOR_COPY_NOTE = (
    "binary COPY by pgpq, kept over ADBC adbc_ingest: 178,860 clean rows of a 200,000-row yellow month, "
    "create + load + commit, best of 3: pgpq 0.34 s, adbc_ingest 0.51 s"
)


def download(source_url: str, folder: str, name: str) -> Path:
    """The month's source file, fetched into `folder`."""
    path = Path(folder, name)
    with urllib.request.urlopen(source_url) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return path


def month_bounds(month: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(month, "%Y-%m")
    return start, start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def clean_arrow(path: Path, spec: DatasetSpec, month: str):
    """The month's CSV.gz read by pyarrow, the rules applied by pyarrow compute, the columns renamed and
    cast to the clean names and types, pickup_date added: (raw rows, clean table)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=spec.source_schema("csv")))
    raw_rows = table.num_rows
    by_folded = {c.source.lower(): c for c in spec.columns}
    columns = {by_folded[n.lower()].name: n for n in table.column_names}
    start, end = month_bounds(month)
    pickup = table[columns[spec.pickup]]
    keep = pc.and_(
        pc.greater_equal(pickup, pa.scalar(start, pickup.type)), pc.less(pickup, pa.scalar(end, pickup.type))
    )
    for name in spec.positive_columns:
        keep = pc.and_(keep, pc.greater(table[columns[name]], 0))
    table = table.filter(keep)  # a null (blank) fails
    table = table.group_by(table.column_names, use_threads=False).aggregate([])  # exact duplicates
    clean_types = {c.name: c.type for c in spec.columns}
    clean = pa.table({name: table[source].cast(clean_types[name]) for name, source in columns.items()})
    return raw_rows, clean.append_column(PICKUP_DATE, clean[spec.pickup].cast(pa.date32()))


def floor_way(spec: DatasetSpec, month: str, url: str, schema: str, source_url: str, folder: str) -> dict:
    """The hand-written floor (see the module's docstring)."""
    import duckdb
    import pgpq
    import psycopg
    import pyarrow.parquet as pq
    from psycopg import sql

    marks, start = {}, time.perf_counter()
    path = download(source_url, folder, spec.file_name(month, "csv"))
    marks["download"] = time.perf_counter()
    raw_rows, clean = clean_arrow(path, spec, month)
    marks["read_rules"] = time.perf_counter()
    lake = Path(folder, "lake")
    pq.write_to_dataset(clean, lake, partition_cols=[PICKUP_DATE])
    marks["to_parquet"] = time.perf_counter()
    table_name = f"{spec.table}_floor"
    table = sql.Identifier(schema, table_name)
    encoder = pgpq.ArrowToPostgresBinaryEncoder(clean.schema)
    definitions = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.data_type.ddl()))
        for c in encoder.schema().columns
    )
    with psycopg.connect(url) as conn:  # one transaction: create, then COPY
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, definitions))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(table)) as copy:
            copy.write(encoder.write_header())
            for batch in clean.to_batches():
                copy.write(encoder.write_batch(batch))
            copy.write(encoder.finish())
    marks["postgres"] = time.perf_counter()
    with duckdb.connect(str(Path(folder, "warehouse.duckdb"))) as con:
        con.execute(
            f"CREATE TABLE {spec.table} AS SELECT * FROM read_parquet(?, hive_partitioning = true)",
            [str(lake / "**" / "*.parquet")],
        )
        warehouse_rows = con.execute(f"SELECT count(*) FROM {spec.table}").fetchone()[0]
    marks["duckdb"] = time.perf_counter()
    return _figures(start, marks, raw_rows, clean.num_rows, table_name, warehouse_rows=warehouse_rows)


def mage_way(spec: DatasetSpec, month: str, url: str, schema: str, source_url: str, folder: str) -> dict:
    """pandas from the CSV to parquet, then the frame to CSV in memory and COPY, as Mage's exporter."""
    import pandas as pd
    import psycopg
    import sqlalchemy
    from psycopg import sql

    from benchmarks.end_to_end import course_dtypes

    marks, start = {}, time.perf_counter()
    path = download(source_url, folder, spec.file_name(month, "csv"))
    marks["download"] = time.perf_counter()
    dtypes, dates = course_dtypes(spec)
    df = pd.read_csv(path, dtype=dtypes, parse_dates=dates)
    raw_rows = len(df)
    marks["read_csv"] = time.perf_counter()
    pickup_source = next(c.source for c in spec.columns if c.name == spec.pickup)
    month_start, month_end = month_bounds(month)
    keep = (df[pickup_source] >= month_start) & (df[pickup_source] < month_end)
    for name in spec.positive_columns:
        source = next(c.source for c in spec.columns if c.name == name)
        keep = keep & (df[source] > 0).fillna(False)
    df = df[keep].drop_duplicates()
    by_folded = {c.source.lower(): c.name for c in spec.columns}
    df = df.rename(columns={name: by_folded[name.lower()] for name in df.columns})
    df[PICKUP_DATE] = df[spec.pickup].dt.date
    marks["rules"] = time.perf_counter()
    df.to_parquet(Path(folder, "lake"), partition_cols=[PICKUP_DATE])
    marks["to_parquet"] = time.perf_counter()
    table = f"{spec.table}_mage"
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(url).set(drivername="postgresql+psycopg"))
    df.head(0).to_sql(table, engine, schema=schema, index=False)  # the table, typed from the frame
    engine.dispose()
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, header=False)
    statement = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(sql.Identifier(schema, table))
    with psycopg.connect(url) as conn, conn.cursor().copy(statement) as copy:
        copy.write(buffer.getvalue())
    marks["to_csv_copy"] = time.perf_counter()
    return _figures(start, marks, raw_rows, len(df), table)


def dlt_way(
    spec: DatasetSpec, month: str, url: str, schema: str, source_url: str, folder: str, file_format: str
) -> dict:
    """The rules in pyarrow, then dlt into PostgreSQL with loader `file_format` and into DuckDB."""
    import dlt
    from dlt.destinations.impl.postgres.configuration import PostgresCredentials

    marks, start = {}, time.perf_counter()
    path = download(source_url, folder, spec.file_name(month, "csv"))
    marks["download"] = time.perf_counter()
    raw_rows, clean = clean_arrow(path, spec, month)
    marks["read_rules"] = time.perf_counter()
    table = f"{spec.table}_dlt_{file_format}"
    credentials = PostgresCredentials(url)
    # dlt requires a host and a password: a socket URL names its host in the query (which libpq
    # obeys over the URL's host), and trust authentication takes no password.
    credentials.host = credentials.host or "localhost"
    credentials.password = credentials.password or ""
    destinations = {  # DuckDB takes no csv: parquet, its fastest, whatever `file_format`
        "postgres": (dlt.destinations.postgres(credentials=credentials), file_format),
        "duckdb": (dlt.destinations.duckdb(credentials=str(Path(folder, "warehouse.duckdb"))), "parquet"),
    }
    for name, (destination, loader_format) in destinations.items():
        pipeline = dlt.pipeline(
            pipeline_name=f"bench_{name}",
            pipelines_dir=str(Path(folder, "pipelines")),
            destination=destination,
            dataset_name=schema,
        )
        pipeline.run(clean, table_name=table, loader_file_format=loader_format)
        marks[name] = time.perf_counter()
    return _figures(start, marks, raw_rows, clean.num_rows, table)


def _figures(
    start: float, marks: dict[str, float], raw_rows: int, loaded_rows: int, table: str, **more
) -> dict:
    """A way's result: its time in-process and per step, the rows it read and loaded, and the
    PostgreSQL table (in DuckDB too, for dlt) it loaded them into."""
    steps, previous = {}, start
    for name, mark in marks.items():
        steps[name], previous = mark - previous, mark
    return {
        "inner_seconds": time.perf_counter() - start,
        "steps": steps,
        "raw_rows": raw_rows,
        "loaded_rows": loaded_rows,
        "table": table,
        **more,
    }
