"""A lake of parquet files in a local folder or a bucket: partition-exact, rerun-safe writes.

Layout under `root`, from the asset key (`clean/green_trips` -> `clean/green_trips`):
- unpartitioned: `<key>.parquet`;
- partitioned: `<key>/<partition>.parquet`;
- partitioned, with definition metadata `{PARTITION_COLUMN: "pickup_date"}` (a date column):
  hive directories `<key>/pickup_date=2020-10-01/<partition>.parquet`, every value inside the
  partition's time window. The column is kept in the directory name, not in the files, and comes
  back as the last column. A partition without rows is stored as one empty file in the directory of
  its window's first day, so it loads back as an empty table, not as "not materialized".

An output is a pyarrow Table or a RecordBatchReader (a stream: it is written batch by batch and never
held whole). Writing a partition replaces exactly its files: all files of the run's partitions are
staged under temporary names and moved into place only when every one is complete (see
`_StagedFiles`), then files of the partitions that the new data no longer has (and temporary files of
killed writes) are removed. A run over a range of partitions (a single-run backfill) takes and gives a
dict of partition key -> data.

Loading gives a `pyarrow.dataset.Dataset` (per partition): it reads nothing until scanned, in
batches or only the columns needed, so no consumer has to hold a month in memory.

One code path for a folder and a bucket, through `pyarrow.fs`. In a bucket (`gs://bucket/prefix`) a
"directory" is only a prefix of object names: the lake creates no directory marker objects and finds
the hive directories from the paths of the files (pyarrow's non-recursive listing of a bucket reports
only marker objects, not prefixes). Credentials are Application Default Credentials; when
STORAGE_EMULATOR_HOST names a Cloud Storage emulator (the convention of Google's client libraries,
which pyarrow does not read), the profile passes it as `gcs_endpoint` and the bucket is reached
there, without credentials.
"""

import posixpath
import uuid
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from taxi_platform.io_managers import PARTITION_COLUMN, time_window, upstream_metadata
from taxi_platform.io_managers.arrow_data import BATCH_ROWS, prefetched, stream

BUFFERED_ROWS = 4 * BATCH_ROWS


class LakeIOManager(dg.ConfigurableIOManager):
    """Stores pyarrow Tables or streams of batches as parquet files under a folder or a bucket."""

    root: str = Field(description="A local folder, or a URI such as gs://bucket/prefix.")
    gcs_endpoint: str = Field(
        default="", description="A Cloud Storage emulator's host (STORAGE_EMULATOR_HOST); empty: Google."
    )

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        fs, path = self._asset_path(context.asset_key)
        partitioned = context.has_asset_partitions
        column = context.definition_metadata.get(PARTITION_COLUMN) if partitioned else None
        if column:  # hive directories
            parts = _by_partition(context, obj)
            windows = {key: time_window(context.asset_partitions_def, key) for key in parts}
            with _StagedFiles(fs) as staged:  # every partition of the run moves into place together
                for key, data in parts.items():
                    _write_hive(staged, path, key, data, column, windows[key])
            for key in parts:
                _remove_stale_days(fs, path, key, column, windows[key], set(staged.files))
        else:  # a file per partition, or one file
            parts = _by_partition(context, obj) if partitioned else {None: obj}
            files = {_file(path, key): data for key, data in parts.items()}
            with _StagedFiles(fs) as staged:
                for file, data in files.items():
                    _write_file(staged, file, data)
            for file in files:
                _remove_stale_temps(fs, file)
        context.add_output_metadata(_location_metadata(fs, path, list(staged.files.values())))

    def load_input(self, context: dg.InputContext):
        fs, path = self._asset_path(context.asset_key)
        if not context.has_asset_partitions:
            return _dataset(fs, _file(path, None))
        column = upstream_metadata(context).get(PARTITION_COLUMN)
        partitions_def = context.asset_partitions_def
        loaded = {}
        for key in context.asset_partition_keys:
            if column:
                dataset = _hive_dataset(fs, path, key, column, time_window(partitions_def, key))
            else:
                dataset = _dataset(fs, _file(path, key))
            loaded[key] = dataset
        return loaded if len(loaded) > 1 else next(iter(loaded.values()))

    def _asset_path(self, asset_key: dg.AssetKey) -> tuple[pafs.FileSystem, str]:
        fs, base = filesystem(self.root, self.gcs_endpoint)
        return fs, posixpath.join(base.rstrip("/"), *asset_key.path)


def filesystem(root: str, gcs_endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """The filesystem of a local folder or a URI, and the path of `root` in it; a gs:// URI is reached
    at `gcs_endpoint` (an emulator) when one is given."""
    if "://" not in root:
        return pafs.LocalFileSystem(), Path(root).resolve().as_posix()
    fs, base = pafs.FileSystem.from_uri(root)
    if fs.type_name == "gcs" and gcs_endpoint:
        url = urlsplit(gcs_endpoint if "://" in gcs_endpoint else f"http://{gcs_endpoint}")
        fs = pafs.GcsFileSystem(anonymous=True, scheme=url.scheme, endpoint_override=url.netloc)
    return fs, base


def _location_metadata(fs, path: str, written: list[int]) -> dict:
    """Where the asset lives (with a console link in a bucket), and what this run wrote."""
    metadata: dict[str, Any] = {"lake_files_written": len(written), "lake_bytes_written": sum(written)}
    if fs.type_name == "gcs":
        metadata["lake_uri"] = f"gs://{path}"
        metadata["console_url"] = dg.MetadataValue.url(
            f"https://console.cloud.google.com/storage/browser/{path}"
        )
    else:
        metadata["lake_uri"] = dg.MetadataValue.path(path)
    return metadata


def _file(path: str, key: str | None) -> str:
    """The file of an unpartitioned asset (key None), or of a partition without hive directories."""
    return f"{path}.parquet" if key is None else f"{path}/{key}.parquet"


def _by_partition(context: dg.OutputContext, obj) -> dict[str, pa.Table]:
    keys = list(context.asset_partition_keys)
    tables = obj if isinstance(obj, dict) else {keys[0]: obj} if len(keys) == 1 else None
    if tables is None or sorted(tables) != sorted(keys):
        raise ValueError(
            f"{context.asset_key.to_user_string()}: a run over partitions {keys} must output a dict "
            f"with exactly those keys, got {sorted(tables) if tables else type(obj).__name__}"
        )
    return tables


def _write_hive(staged, path: str, key: str, data, column: str, window) -> None:
    """Stage a partition's hive files, a file a day."""
    days = _DayWriters(staged, path, key, column, window.start.date(), window.end.date(), data.schema)
    for batch in prefetched(stream(data)):
        days.add(batch)
    days.flush()


def _remove_stale_days(fs, path: str, key: str, column: str, window, written: set[str]) -> None:
    """Remove the partition's files that this write did not produce (days it no longer has, and
    temporary files a killed write left behind)."""
    files, entries = _partition_files(fs, path, column, window.start.date(), window.end.date())
    for directory, paths in files.items():
        for file in paths:
            if file not in written:
                fs.delete_file(file)
        if directory in entries and f"{directory}/{key}.parquet" not in written:
            fs.delete_dir(directory)  # a folder, or a marker object: a bucket's prefix needs nothing


def _remove_stale_temps(fs, file: str) -> None:
    """Remove the temporary files that killed writes of `file` left behind."""
    folder, name = posixpath.split(file)
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        base = posixpath.basename(info.path)
        if base.startswith(f"{name}.") and base.endswith(".tmp"):
            fs.delete_file(info.path)


class _DayWriters:
    """One parquet file per day of the partition, written as the batches come: rows are buffered
    by day and written as row groups whenever BUFFERED_ROWS are held, so memory holds a few batches,
    not the month."""

    def __init__(self, staged, path, key, column, start: date, end: date, schema: pa.Schema):
        self.staged, self.path, self.key, self.column = staged, path, key, column
        self.start, self.end = start, end
        self.schema = schema.remove(schema.get_field_index(column))
        self.buffered: dict[date, list[pa.RecordBatch]] = {}
        self.buffered_rows = 0
        self.writers: dict[date, pq.ParquetWriter] = {}

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
                f"{self.path}: partition {self.key} holds rows with {self.column} outside "
                f"[{self.start}, {self.end}): {outside[:5]}"
            )
        data, offset = batch.drop_columns([self.column]), 0
        for c in counts:
            day, rows = c["values"], c["counts"]
            self.buffered.setdefault(day, []).append(data.slice(offset, rows))
            offset += rows
        self.buffered_rows += batch.num_rows
        if self.buffered_rows >= BUFFERED_ROWS:
            for day in list(self.buffered):
                self._write_day(day)
            self.buffered_rows = 0

    def flush(self) -> None:
        """Write what is buffered (the staged files close the writers)."""
        if not self.writers and not self.buffered:  # an empty partition: one empty file
            self.buffered[self.start] = []
        for day in list(self.buffered):
            self._write_day(day)

    def _write_day(self, day: date) -> None:
        if day not in self.writers:
            file = f"{self.path}/{self.column}={day.isoformat()}/{self.key}.parquet"
            self.writers[day] = self.staged.writer(file, self.schema)
        self.writers[day].write_table(pa.Table.from_batches(self.buffered.pop(day), self.schema))


def _hive_dataset(fs, path: str, key: str, column: str, window) -> ds.Dataset:
    files, _ = _partition_files(fs, path, column, window.start.date(), window.end.date())
    name = f"{key}.parquet"
    paths = [f"{directory}/{name}" for directory, names in files.items() if f"{directory}/{name}" in names]
    if not paths:
        raise FileNotFoundError(f"{path}: no files for partition {key}; is it materialized?")
    return ds.dataset(
        paths,
        filesystem=fs,
        format="parquet",
        partition_base_dir=path,
        partitioning=ds.partitioning(pa.schema([(column, pa.date32())]), flavor="hive"),
    )


def _partition_files(fs, path: str, column: str, start: date, end: date):
    """The hive directories under `path` whose value lies in [start, end), in order, with their files;
    and which of them exist as entries of their own (a local folder; a marker object in a bucket).

    One recursive listing, directories found from the files' paths: a bucket's "directories" are
    prefixes that pyarrow's non-recursive listing does not report.
    """
    prefix = f"{column}="
    files, entries = {}, set()
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        is_file = info.type == pafs.FileType.File
        directory = posixpath.dirname(info.path) if is_file else info.path.rstrip("/")
        name = posixpath.basename(directory)
        if posixpath.dirname(directory) != path or not name.startswith(prefix):
            continue
        if start <= date.fromisoformat(name[len(prefix) :]) < end:
            files.setdefault(directory, [])
            if is_file:
                files[directory].append(info.path)
            else:
                entries.add(directory)
    return dict(sorted(files.items())), entries


class _StagedFiles:
    """Files written under temporary names, moved into place only when every one is complete.

    A failure while writing (bad rows, a broken stream, a full disk) leaves the stored files as they
    were and removes the staged ones. The moves at the end are one rename a file (a copy and a
    delete in a bucket): a process killed among them leaves some files new and some old, which the
    next write of the partition replaces.
    """

    def __init__(self, fs):
        self.fs, self.files, self._staged, self._writers = fs, {}, {}, []

    def writer(self, path: str, schema: pa.Schema) -> pq.ParquetWriter:
        target = f"{path}.{uuid.uuid4().hex}.tmp"
        if isinstance(self.fs, pafs.LocalFileSystem):  # a bucket has no folders to create
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
        self._staged[path] = target
        writer = pq.ParquetWriter(target, schema, filesystem=self.fs)
        self._writers.append(writer)
        return writer

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        closing_error = None
        for writer in self._writers:
            try:
                if writer.is_open:
                    writer.close()
            except Exception as failure:  # noqa: BLE001 (the first one is raised below)
                closing_error = closing_error or failure
        if error_type is not None or closing_error is not None:
            for target in self._staged.values():
                try:
                    if self.fs.get_file_info(target).type == pafs.FileType.File:
                        self.fs.delete_file(target)
                except OSError:
                    pass  # the error that stopped the write is the one to report
            if closing_error is not None and error_type is None:
                raise closing_error
            return
        for path, target in self._staged.items():
            self.fs.move(target, path)
            self.files[path] = self.fs.get_file_info(path).size


def _write_file(staged, path: str, data) -> None:
    """Stage one whole parquet file from a table or a stream of batches, in row groups of at least
    BATCH_ROWS rows however small the batches (rejected rows come a few thousand at a time)."""
    writer = staged.writer(path, data.schema)
    pending, rows = [], 0
    for batch in prefetched(stream(data)):
        pending.append(batch)
        rows += batch.num_rows
        if rows >= BATCH_ROWS:
            writer.write_table(pa.Table.from_batches(pending), row_group_size=2 * BATCH_ROWS)
            pending, rows = [], 0
    if pending:
        writer.write_table(pa.Table.from_batches(pending))


def _dataset(fs, path: str) -> ds.Dataset:
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path} does not exist; is the partition materialized?")
    return ds.dataset(path, filesystem=fs, format="parquet")
