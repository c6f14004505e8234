"""The ways the platform is measured against, besides the course's (benchmarks/end_to_end.py): each a
plain function that `end_to_end` runs in a process of its own on the same synthetic month.

- floor: what a careful engineer writes by hand, no orchestration: pyarrow reads the month's file (the
  form the platform reads: the CSV.gz release, or the TLC's parquet), pyarrow compute applies the rules,
  the parquet lake is written hive-partitioned by pickup_date, PostgreSQL is loaded by binary COPY
  (pgpq) into a table created in the same transaction, DuckDB from the parquet.
  Binary COPY through pgpq was kept over ADBC's `adbc_ingest` (FLOOR_COPY_NOTE), measured once here.
- mage-style: pandas read_csv (or read_parquet), the rules, to_parquet, then to_csv into a buffer and
  COPY, as Mage's PostgreSQL exporter loads a frame.
- dlt: the rules in pyarrow, then `dlt.pipeline(...).run(...)` into PostgreSQL with the given
  loader_file_format (parquet: dlt loads it through ADBC; csv: COPY of its CSV files) and into DuckDB
  (parquet: DuckDB takes no csv from dlt).

Each runs as `python -m benchmarks.peers '<job as JSON>'`, a process that imports neither Dagster nor
taxi_platform (as a hand-written script would not): the parent describes the dataset in the job
(`month_plan`). The rules are the platform's: the pickup inside the month; passenger_count > 0 and
trip_distance > 0 (the dataset's positive columns; blank fails); exact duplicate rows dropped (the
first kept).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common import report_result

if TYPE_CHECKING:
    from taxi_platform.datasets import DatasetSpec

FLOOR_COPY_NOTE = (
    "binary COPY by pgpq, kept over ADBC adbc_ingest: 178,860 clean rows of a 200,000-row yellow month, "
    "create + load + commit, best of 3: pgpq 0.34 s, adbc_ingest 0.51 s"
)


def month_plan(spec: DatasetSpec, month: str, form: str, pandas_types: tuple[dict, list[str]]) -> dict:
    """What a peer's process needs of the dataset, as JSON: the month's file in `form` (csv or parquet,
    the form the platform reads), its columns' names and types (arrow schemas, and `pandas_types`:
    read_csv's dtype and parse_dates), its rules, its table."""
    import pyarrow as pa

    from taxi_platform.datasets import PICKUP_DATE

    return {
        "file_name": spec.file_name(month, form),
        "form": form,
        "table": spec.table,
        "pickup": spec.pickup,
        "positive_columns": list(spec.positive_columns),
        "partition_column": PICKUP_DATE,
        "clean_names": {c.source.lower(): c.name for c in spec.columns},
        "source_schema": _encoded(spec.source_schema(form)),
        "clean_schema": _encoded(pa.schema([(c.name, c.type) for c in spec.columns])),
        "pandas_dtypes": pandas_types[0],
        "pandas_dates": pandas_types[1],
    }


def _encoded(schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema(encoded: str):
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))


def download(source_url: str, folder: str, name: str) -> Path:
    """The month's source file, fetched into `folder`."""
    path = Path(folder, name)
    with urllib.request.urlopen(source_url) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return path


def month_bounds(month: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(month, "%Y-%m")
    return start, start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def clean_arrow(path: Path, plan: dict, month: str):
    """The month's file (CSV.gz or parquet) read by pyarrow, the rules applied by pyarrow compute, the
    columns renamed and cast to the clean names and types, pickup_date added: (raw rows, clean table)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if plan["form"] == "csv":
        csv_types = _schema(plan["source_schema"])
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=csv_types))
    else:
        table = pq.read_table(path)
    raw_rows = table.num_rows
    columns = {plan["clean_names"][n.lower()]: n for n in table.column_names}
    start, end = month_bounds(month)
    pickup = table[columns[plan["pickup"]]]
    keep = pc.and_(
        pc.greater_equal(pickup, pa.scalar(start, pickup.type)), pc.less(pickup, pa.scalar(end, pickup.type))
    )
    for name in plan["positive_columns"]:
        keep = pc.and_(keep, pc.greater(table[columns[name]], 0))
    table = table.filter(keep)  # a null (blank) fails
    table = table.group_by(table.column_names, use_threads=False).aggregate([])  # exact duplicates
    clean_types = _schema(plan["clean_schema"])
    clean = pa.table(
        {name: table[source].cast(clean_types.field(name).type) for name, source in columns.items()}
    )
    return raw_rows, clean.append_column(plan["partition_column"], clean[plan["pickup"]].cast(pa.date32()))


def floor_way(plan: dict, month: str, url: str, schema: str, source_url: str, folder: str) -> dict:
    """The hand-written floor (see the module's docstring)."""
    import duckdb
    import pgpq
    import psycopg
    import pyarrow.parquet as pq
    from psycopg import sql

    marks, start = {}, time.perf_counter()
    path = download(source_url, folder, plan["file_name"])
    marks["download"] = time.perf_counter()
    raw_rows, clean = clean_arrow(path, plan, month)
    marks["read_rules"] = time.perf_counter()
    lake = Path(folder, "lake")
    pq.write_to_dataset(clean, lake, partition_cols=[plan["partition_column"]])
    marks["to_parquet"] = time.perf_counter()
    table_name = f"{plan['table']}_floor"
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
            f"CREATE TABLE {table_name} AS SELECT * FROM read_parquet(?, hive_partitioning = true)",
            [str(lake / "**" / "*.parquet")],
        )
        warehouse_rows = con.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]
    marks["duckdb"] = time.perf_counter()
    return way_figures(
        start,
        marks,
        raw_rows,
        clean.num_rows,
        table_name,
        columns=clean.num_columns,
        warehouse_rows=warehouse_rows,
    )


def mage_way(plan: dict, month: str, url: str, schema: str, source_url: str, folder: str) -> dict:
    """pandas from the source file to parquet, then the frame to CSV in memory and COPY, as Mage's
    exporter."""
    import psycopg
    import sqlalchemy
    from psycopg import sql

    marks, start = {}, time.perf_counter()
    path = download(source_url, folder, plan["file_name"])
    marks["download"] = time.perf_counter()
    df = read_frame(path, plan)
    raw_rows = len(df)
    marks[f"read_{plan['form']}"] = time.perf_counter()
    df = df.rename(columns={name: plan["clean_names"][name.lower()] for name in df.columns})
    month_start, month_end = month_bounds(month)
    keep = (df[plan["pickup"]] >= month_start) & (df[plan["pickup"]] < month_end)
    for name in plan["positive_columns"]:
        keep = keep & (df[name] > 0).fillna(False)
    df = df[keep].drop_duplicates()
    df[plan["partition_column"]] = df[plan["pickup"]].dt.date
    marks["rules"] = time.perf_counter()
    df.to_parquet(Path(folder, "lake"), partition_cols=[plan["partition_column"]])
    marks["to_parquet"] = time.perf_counter()
    table = f"{plan['table']}_mage"
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(url).set(drivername="postgresql+psycopg"))
    df.head(0).to_sql(table, engine, schema=schema, index=False)  # the table, typed from the frame
    engine.dispose()
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, header=False)
    statement = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(sql.Identifier(schema, table))
    with psycopg.connect(url) as conn, conn.cursor().copy(statement) as copy:
        copy.write(buffer.getvalue())
    marks["to_csv_copy"] = time.perf_counter()
    return way_figures(start, marks, raw_rows, len(df), table, columns=len(df.columns))


def read_frame(path: Path, plan: dict):
    """The month's file as a pandas frame: `read_csv` with the course's dtypes, or `read_parquet`."""
    import pandas as pd

    if plan["form"] == "csv":
        return pd.read_csv(path, dtype=plan["pandas_dtypes"], parse_dates=plan["pandas_dates"])
    return pd.read_parquet(path)


def dlt_way(
    plan: dict, month: str, url: str, schema: str, source_url: str, folder: str, file_format: str
) -> dict:
    """The rules in pyarrow, then dlt into PostgreSQL with loader `file_format` and into DuckDB."""
    import dlt
    from dlt.destinations.impl.postgres.configuration import PostgresCredentials

    marks, start = {}, time.perf_counter()
    path = download(source_url, folder, plan["file_name"])
    marks["download"] = time.perf_counter()
    raw_rows, clean = clean_arrow(path, plan, month)
    marks["read_rules"] = time.perf_counter()
    table = f"{plan['table']}_dlt_{file_format}"
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
    return way_figures(start, marks, raw_rows, clean.num_rows, table, columns=clean.num_columns)


def way_figures(
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


def main(argv: list[str]) -> None:
    """Run the way a job (JSON, from `end_to_end`) names and report its figures."""
    job = json.loads(argv[0])
    common = (job["plan"], job["month"], job["url"], job["schema"], job["source_url"], job["folder"])
    if job["way"].startswith("dlt-"):
        result = dlt_way(*common, file_format=job["way"].removeprefix("dlt-"))
    else:
        result = {"floor": floor_way, "mage-style": mage_way}[job["way"]](*common)
    report_result(result)


if __name__ == "__main__":
    main(sys.argv[1:])
