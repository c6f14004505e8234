"""Staging: an asset's partitions written into the lake as data files that no commit references yet.

The files go straight to their final folder under names of their own (`<partition>-<token>.parquet`),
so publishing them is one commit of the table, never a move; until then every reader of the table
ignores them. Each file keeps its partition's column (the table's partition values are read from the
files' statistics). Discarding a staged write removes its files; the files of a killed writer are
removed by the next vacuum once older than the retention (taxi_platform/lake/resource.py).
"""

import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from taxi_platform.io_managers import time_window
from taxi_platform.io_managers.arrow_data import BATCH_ROWS, prefetched, stream
from taxi_platform.lake.files import make_parent

BUFFERED_ROWS = 4 * BATCH_ROWS
# The column that partitions a table by partition key, for partitioned assets without a date column:
# stored in the table, never in what a reader loads.
PARTITION_KEY = "lake_partition"
DATA = "data"  # a table's data files lie under <location>/data/, its metadata under <location>/metadata/


@dataclass(frozen=True)
class DataFile:
    """A data file written for the table, relative to its folder."""

    path: str
    size: int
    rows: int
    # The parquet metadata its writer produced: the table's statistics come from it, not from the footer
    # read back.
    footer: pq.FileMetaData = field(compare=False, repr=False)


class Staged:
    """One asset's partitions (or its one table), staged and not yet visible to any reader.

    `folder`: the table's location (for versioned files, the asset's folder); `column`: the asset's
    date column (PARTITION_COLUMN), if any; `keyed`: a partitioned table without one, partitioned by
    PARTITION_KEY; `versioned`: a file a partition, in no table."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        folder: str,
        partitions_def,
        column: str | None,
        keyed: bool,
        versioned: bool = False,
        base: Any = None,
    ):
        self.fs, self.folder, self.partitions_def = fs, folder, partitions_def
        self.versioned = versioned
        self.base = base  # the table as it was when staging began (None: no table yet)
        self.published_version: int | None = None  # set by Lake.publish: its files are the table's now
        self.column, self.keyed = column, keyed
        self.token = uuid.uuid4().hex[:16]
        self.files: dict[str | None, list[DataFile]] = {}  # partition -> its files
        self.schema: pa.Schema | None = None  # as stored in the table (with its partition column)
        self.details: dict[str | None, dict] = {}  # what the asset says of a partition (its source file)
        self._writers: list[tuple[str, pq.ParquetWriter]] = []  # every file opened, with its writer

    def writer(self, key: str | None, schema: pa.Schema) -> "_DayWriters | _FileWriter":
        """A writer of partition `key`'s batches (`add(batch)`, then `close()`)."""
        files = self.files.setdefault(key, [])
        if self.column and key is not None:
            window = time_window(self.partitions_def, key)
            self.schema = schema
            return _DayWriters(self, files, key, window.start.date(), window.end.date(), schema)
        if self.versioned:
            self.schema = schema
            return _FileWriter(self, files, self.file_name(key), schema, None)
        self.schema = schema.append(pa.field(PARTITION_KEY, pa.string())) if self.keyed else schema
        folder = f"{DATA}/{PARTITION_KEY}={key}" if self.keyed else DATA
        return _FileWriter(
            self, files, f"{folder}/{self.file_name(key)}", self.schema, key if self.keyed else None
        )

    def write(self, key: str | None, data) -> None:
        """Stage partition `key` (None: the one table) from a Table, Dataset or stream of batches."""
        rows = stream(data)
        writer = self.writer(key, rows.schema)
        for batch in prefetched(rows):
            writer.add(batch)
        writer.close()

    def dataset(self, key: str | None) -> ds.Dataset:
        """The staged partition, to audit before publishing."""
        paths = [f"{self.folder}/{file.path}" for file in self.files[key]]
        return file_dataset(self.fs, paths, self.schema, drop=PARTITION_KEY if self.keyed else None)

    def rows(self, key: str | None) -> int:
        return sum(file.rows for file in self.files.get(key, []))

    def file_name(self, key: str | None) -> str:
        return f"{key or 'table'}-{self.token}.parquet"

    def open_file(self, relative: str, schema: pa.Schema) -> pq.ParquetWriter:
        path = f"{self.folder}/{relative}"
        make_parent(self.fs, path)
        writer = pq.ParquetWriter(path, schema, filesystem=self.fs)
        self._writers.append((path, writer))
        return writer

    def discard(self) -> None:
        """Close what is still open and remove every staged file, unless it was published (then its
        files are the table's, and nothing is removed)."""
        if self.published_version is not None:
            return
        for path, writer in self._writers:
            try:
                if writer.is_open:
                    writer.close()
            except OSError:
                pass  # the file is removed; an error that stopped the write is the one to report
            with contextlib.suppress(FileNotFoundError):  # its writer failed before creating it
                self.fs.delete_file(path)
        self._writers.clear()
        self.files.clear()

    def size(self, relative: str) -> int:
        return self.fs.get_file_info(f"{self.folder}/{relative}").size or 0


def file_dataset(
    fs: pafs.FileSystem, paths: list[str], schema: pa.Schema | None, drop: str | None = None
) -> ds.Dataset:
    """Data files of the lake as one lazy dataset (an empty one of `schema` when there are none);
    `drop`: a column stored for the table's partitioning that readers do not see."""
    if not paths:
        empty = (schema or pa.schema([])).empty_table()
        return ds.dataset(empty.drop_columns([drop]) if drop in empty.column_names else empty)
    dataset = ds.dataset(paths, filesystem=fs, format="parquet", schema=schema)
    if drop in dataset.schema.names:
        dataset = dataset.replace_schema(dataset.schema.remove(dataset.schema.get_field_index(drop)))
    return dataset


def _footer(writer: pq.ParquetWriter) -> pq.FileMetaData:
    """The metadata a closed writer wrote as its file's footer."""
    return writer.writer.metadata


class _DayWriters:
    """One parquet file per day of the partition, written as the batches come: rows are buffered
    by day and written as row groups whenever BUFFERED_ROWS are held, so memory holds a few batches,
    not the month. The day is in the folder's name, not in the file."""

    def __init__(self, staged: Staged, files: list[DataFile], key: str, start: date, end: date, schema):
        self.staged, self.files, self.key, self.column = staged, files, key, staged.column or ""
        self.start, self.end = start, end
        self.schema = schema
        self.buffered: dict[date, list[pa.RecordBatch]] = {}
        self.buffered_rows = 0
        self.writers: dict[date, tuple[str, pq.ParquetWriter]] = {}
        self.rows: dict[date, int] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        batch = batch.sort_by(self.column)
        counts = batch[self.column].value_counts().to_pylist()  # ascending: the batch is sorted
        outside = [
            c["values"] for c in counts if c["values"] is None or not self.start <= c["values"] < self.end
        ]
        if outside:
            raise ValueError(
                f"{self.staged.folder}: partition {self.key} holds rows with {self.column} outside "
                f"[{self.start}, {self.end}): {outside[:5]}"
            )
        offset = 0
        for c in counts:
            day, rows = c["values"], c["counts"]
            self.buffered.setdefault(day, []).append(batch.slice(offset, rows))
            offset += rows
        self.buffered_rows += batch.num_rows
        if self.buffered_rows >= BUFFERED_ROWS:
            for day in list(self.buffered):
                self._write_day(day)
            self.buffered_rows = 0

    def close(self) -> None:
        """Write what is buffered, close the day files and list them as staged (an empty partition has
        none)."""
        for day in list(self.buffered):
            self._write_day(day)
        for day, (relative, writer) in self.writers.items():
            writer.close()
            self.files.append(DataFile(relative, self.staged.size(relative), self.rows[day], _footer(writer)))

    def _write_day(self, day: date) -> None:
        if day not in self.writers:
            relative = f"{DATA}/{self.column}={day.isoformat()}/{self.staged.file_name(self.key)}"
            self.writers[day] = (relative, self.staged.open_file(relative, self.schema))
            self.rows[day] = 0
        table = pa.Table.from_batches(self.buffered.pop(day), self.schema)
        self.writers[day][1].write_table(table)
        self.rows[day] += table.num_rows


class _FileWriter:
    """One whole parquet file, in row groups of at least BATCH_ROWS rows however small the batches
    (rejected rows come a few thousand at a time)."""

    def __init__(
        self, staged: Staged, files: list[DataFile], relative: str, schema: pa.Schema, key: str | None
    ):
        """`key`: the partition key a keyed table stores in each row (PARTITION_KEY)."""
        self.staged, self.files, self.relative, self.schema, self.key = staged, files, relative, schema, key
        self.writer = staged.open_file(relative, schema)
        self.pending: list[pa.RecordBatch] = []
        self.rows = self.written = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if self.key is not None:
            batch = batch.append_column(PARTITION_KEY, pa.array([self.key] * batch.num_rows, pa.string()))
        self.pending.append(batch)
        self.rows += batch.num_rows
        if self.rows >= BATCH_ROWS:
            self._write()

    def close(self) -> None:
        if self.pending:
            self._write()
        self.writer.close()
        if self.written or self.staged.versioned:  # a table's empty partition has no file
            self.files.append(
                DataFile(self.relative, self.staged.size(self.relative), self.written, _footer(self.writer))
            )
        else:
            self.staged.fs.delete_file(f"{self.staged.folder}/{self.relative}")

    def _write(self) -> None:
        self.writer.write_table(
            pa.Table.from_batches(self.pending, self.schema), row_group_size=2 * BATCH_ROWS
        )
        self.written += self.rows
        self.pending, self.rows = [], 0
