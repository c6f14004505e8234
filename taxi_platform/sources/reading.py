"""Parse a month's source file with the schema its dataset spec declares for that form."""

import gzip
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from taxi_platform.datasets import MIN_ZONES, ZONE_COLUMNS, DatasetSpec
from taxi_platform.io_managers.arrow_data import BATCH_ROWS


class UnreadableFile(ValueError):
    """A source file that cannot be parsed as declared; the message names the file and the month."""


class SchemaDriftError(UnreadableFile):
    """The file's columns differ from the declared schema; the message names file, month and columns."""


_READ_ERRORS = (pa.ArrowException, OSError, EOFError, zlib.error, UnicodeDecodeError)
BATCH_BYTES = 16 << 20  # CSV text parsed per batch (about 100,000 trips)


def read_trips(path: Path, spec: DatasetSpec, form: str, origin: str) -> pa.RecordBatchReader:
    """Every row of the file, with its original column names and the declared types of `form`, as a
    stream of batches: the file is parsed as the stream is read, never held whole.

    The columns are checked at once; a row that cannot be parsed or cast raises UnreadableFile when
    its batch is read. `origin` names the file and month in errors ("green 2020-10 (https://...)").
    """
    try:
        columns = _csv_header(path) if form == "csv" else pq.read_schema(path).names
    except _READ_ERRORS as error:
        raise UnreadableFile(f"{origin}: cannot read the {form} file: {error}") from error
    declared = _match_columns(columns, spec, form, origin)
    schema = pa.schema(declared.items())
    batches = _csv_batches(path, declared) if form == "csv" else _parquet_batches(path, declared)
    return pa.RecordBatchReader.from_batches(schema, _explained(batches, form, origin))


def _explained(batches, form: str, origin: str):
    try:
        yield from batches
    except _READ_ERRORS as error:
        raise UnreadableFile(f"{origin}: cannot read the {form} file: {error}") from error


def read_zones(path: Path, origin: str) -> pa.Table:
    """The taxi zone lookup; "NA" and "N/A" are zone names here, not missing values. A file with
    other columns, a LocationID given twice or implausibly few zones is refused."""
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={source: type for source, _, type in ZONE_COLUMNS},
                null_values=[],
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowException as error:
        raise UnreadableFile(f"{origin}: cannot read the zone file: {error}") from error
    expected = [source for source, _, _ in ZONE_COLUMNS]
    if table.column_names != expected:
        raise SchemaDriftError(f"{origin}: columns {table.column_names}, expected {expected}")
    repeated = [c["values"] for c in table[expected[0]].value_counts().to_pylist() if c["counts"] > 1]
    if repeated:
        raise UnreadableFile(f"{origin}: {expected[0]} repeated: {repeated[:10]}")
    if table.num_rows < MIN_ZONES:
        raise UnreadableFile(f"{origin}: only {table.num_rows} zones, expected at least {MIN_ZONES}")
    return table.rename_columns([name for _, name, _ in ZONE_COLUMNS])


def _csv_header(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [name.strip().strip('"') for name in f.readline().rstrip("\r\n").split(",")]


def _match_columns(columns: list[str], spec: DatasetSpec, form: str, origin: str) -> dict:
    """Map each of the file's column names to its declared type, matching names case-insensitively."""
    by_folded = {c.source.lower(): c for c in spec.columns if getattr(c, form) is not None}
    folded = [name.lower() for name in columns]
    extra = [name for name in columns if name.lower() not in by_folded]
    repeated = sorted({name for name in columns if folded.count(name.lower()) > 1})
    missing = [c.source for key, c in by_folded.items() if key not in folded and not c.optional]
    if extra or missing or repeated:
        problems = [
            f"{label} {names}"
            for label, names in (
                ("missing columns", missing),
                ("unexpected columns", extra),
                ("repeated columns", repeated),
            )
            if names
        ]
        raise SchemaDriftError(
            f"{origin}: the {form} file's columns differ from the declared {spec.name} schema: "
            + "; ".join(problems)
        )
    return {name: getattr(by_folded[name.lower()], form) for name in columns}


def _csv_batches(path: Path, declared: dict[str, pa.DataType]):
    # Integers are parsed as float64 and then cast safely, so "1.0" is read as 1 but "1.5" fails.
    parse_types = {name: pa.float64() if pa.types.is_integer(t) else t for name, t in declared.items()}
    with pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BATCH_BYTES),
        convert_options=pacsv.ConvertOptions(column_types=parse_types, strings_can_be_null=True),
    ) as reader:
        for batch in reader:
            yield _cast(batch, declared)


def _parquet_batches(path: Path, declared: dict[str, pa.DataType]):
    file = pq.ParquetFile(path)
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=list(declared)):
        yield _cast(batch, declared)


def _cast(batch: pa.RecordBatch, declared: dict[str, pa.DataType]) -> pa.RecordBatch:
    """Cast each column to its declared type; a lossy cast (1.5 to an integer) raises."""
    return pa.RecordBatch.from_arrays(
        [batch[name].cast(type, safe=True) for name, type in declared.items()],
        names=list(declared),
    )
