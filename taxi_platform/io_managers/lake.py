"""A lake of parquet files in a local folder or a bucket: partition-exact, rerun-safe, audited writes.

Layout under `root`, from the asset key (`clean/green_trips` -> `clean/green_trips`):
- unpartitioned: `<key>.parquet`;
- partitioned: `<key>/<partition>.parquet`;
- partitioned, with definition metadata `{PARTITION_COLUMN: "pickup_date"}` (a date column):
  hive directories `<key>/pickup_date=2020-10-01/<partition>.parquet`, every value inside the
  partition's time window. The column is kept in the directory name, not in the files, and comes
  back as the last column. A partition without rows is stored as one empty file in the directory of
  its window's first day, so it loads back as an empty table, not as "not materialized".

Write, audit, publish. Every write is first staged in a private area of its run,
`<root>/_staging/<run_id>/<id>/`, laid out as the published files are; nothing reads there (the
published layout, the DuckDB view and the BigQuery lake table never look under `_staging`). Publishing
moves the staged files of the partitions into place and removes the partitions' files the new data no
longer has. An output that is a Table or a RecordBatchReader (a stream: written batch by batch, never
held whole) is staged and published at once; an asset that audits its data before publishing stages it
itself (`LakeIOManager.staging`) and outputs the `Staged` data, which this IO manager then publishes.
A failed write, or a staging area left unpublished, is removed when its block ends; areas left by
killed runs are swept by later writes once they are older than STAGING_MAX_AGE. A run over a range of
partitions (a single-run backfill) takes and gives a dict of partition key -> data.

Loading gives a `pyarrow.dataset.Dataset` (per partition): it reads nothing until scanned, in
batches or only the columns needed, so no consumer has to hold a month in memory.

One code path for a folder and a bucket, through `pyarrow.fs`. In a bucket (`gs://bucket/prefix`) a
"directory" is only a prefix of object names: the lake creates no directory marker objects and finds
the hive directories from the paths of the files (pyarrow's non-recursive listing of a bucket reports
only marker objects, not prefixes). Credentials are Application Default Credentials; when
STORAGE_EMULATOR_HOST names a Cloud Storage emulator (the convention of Google's client libraries,
which pyarrow does not read), the profile passes it as `gcs_endpoint` and the bucket is reached
there, without credentials. Moving a file is a rename in a folder, a copy and a delete in a bucket: a
process killed among the moves of a publish leaves some files new and some old, which the next write
of the partition replaces.
"""

import posixpath
import uuid
from datetime import UTC, date, datetime, timedelta
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
STAGING = "_staging"  # under the root: outside every asset's files, and a name readers skip
STAGING_MAX_AGE = timedelta(hours=6)


class LakeIOManager(dg.ConfigurableIOManager):
    """Stores pyarrow Tables or streams of batches as parquet files under a folder or a bucket, and
    publishes what an asset staged and audited itself (`Staged`)."""

    root: str = Field(description="A local folder, or a URI such as gs://bucket/prefix.")
    gcs_endpoint: str = Field(
        default="", description="A Cloud Storage emulator's host (STORAGE_EMULATOR_HOST); empty: Google."
    )

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        partitioned = context.has_asset_partitions
        keys: list[str | None] = list(context.asset_partition_keys) if partitioned else [None]
        if isinstance(obj, Staged):  # staged and audited by the asset
            obj.publish(context.asset_key, keys)
            staged = obj
        else:
            with self.staging(context.run_id) as staging:
                staged = staging.asset(
                    context.asset_key,
                    context.asset_partitions_def if partitioned else None,
                    context.definition_metadata.get(PARTITION_COLUMN) if partitioned else None,
                )
                for key, data in (_by_partition(context, obj) if partitioned else {None: obj}).items():
                    staged.write(key, data)
                staged.publish(context.asset_key, keys)
        context.add_output_metadata(_location_metadata(staged))

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

    def staging(self, run_id: str) -> "Staging":
        """A new private staging area of the run; areas abandoned by killed runs are swept first."""
        fs, base = filesystem(self.root, self.gcs_endpoint)
        base = base.rstrip("/")
        _sweep_abandoned(fs, f"{base}/{STAGING}", datetime.now(UTC) - STAGING_MAX_AGE)
        return Staging(fs, base, f"{base}/{STAGING}/{run_id}/{uuid.uuid4().hex[:12]}")

    def published_rows(
        self, key: dg.AssetKey, partitions_def: dg.PartitionsDefinition, column: str | None, month: str
    ) -> int | None:
        """The row count of a published partition; None when it was never published."""
        fs, path = self._asset_path(key)
        try:
            if column:
                window = time_window(partitions_def, month)
                return _hive_dataset(fs, path, month, column, window).count_rows()
            return _dataset(fs, _file(path, month)).count_rows()
        except FileNotFoundError:
            return None

    def _asset_path(self, asset_key: dg.AssetKey) -> tuple[pafs.FileSystem, str]:
        fs, base = filesystem(self.root, self.gcs_endpoint)
        return fs, posixpath.join(base.rstrip("/"), *asset_key.path)


class Staging:
    """A run's private area, laid out as the published lake, for assets' data not yet published.

    Used as a context manager: when the block ends, the writers still open are closed and the area
    is removed with whatever in it was not published."""

    def __init__(self, fs: pafs.FileSystem, root: str, area: str):
        self.fs, self.root, self.area = fs, root, area
        self.writers: list[pq.ParquetWriter] = []

    def asset(
        self,
        key: dg.AssetKey,
        partitions_def: dg.PartitionsDefinition | None = None,
        column: str | None = None,
    ) -> "Staged":
        """An asset's data to stage here; `column`: its PARTITION_COLUMN, if any."""
        return Staged(self, posixpath.join(self.root, *key.path), partitions_def, column)

    def writer(self, published: str, schema: pa.Schema) -> tuple[str, pq.ParquetWriter]:
        """A parquet writer of the staged copy of the `published` file, and that copy's path."""
        path = self.staged_path(published)
        if isinstance(self.fs, pafs.LocalFileSystem):  # a bucket has no folders to create
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
        writer = pq.ParquetWriter(path, schema, filesystem=self.fs)
        self.writers.append(writer)
        return path, writer

    def staged_path(self, published: str) -> str:
        """Where the staged copy of a published path lies: the same path, inside the area."""
        return f"{self.area}/{published[len(self.root) + 1 :]}"

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *error) -> None:
        for writer in self.writers:
            try:
                if writer.is_open:
                    writer.close()
            except OSError:
                pass  # the area is removed; an error that stopped the write is the one to report
        _delete_dir(self.fs, self.area)
        run_folder = posixpath.dirname(self.area)
        if not self.fs.get_file_info(pafs.FileSelector(run_folder, allow_not_found=True)):
            _delete_dir(self.fs, run_folder)  # a local folder left empty (a bucket has none)


class Staged:
    """One asset's partitions (or its one file), staged and not yet visible to any reader."""

    def __init__(self, staging: Staging, path: str, partitions_def, column: str | None):
        self.staging, self.fs, self.path = staging, staging.fs, path
        self.partitions_def, self.column = partitions_def, column
        self.files: dict[str | None, dict[str, str]] = {}  # partition -> {published path: staged path}
        self.published: dict[str, int] = {}  # published path -> bytes

    def writer(self, key: str | None, schema: pa.Schema) -> "_DayWriters | _FileWriter":
        """A writer of partition `key`'s batches (`add(batch)`, then `close()`)."""
        files = self.files.setdefault(key, {})
        if self.column and key is not None:
            window = time_window(self.partitions_def, key)
            return _DayWriters(self, files, key, window.start.date(), window.end.date(), schema)
        return _FileWriter(self, files, _file(self.path, key), schema)

    def write(self, key: str | None, data) -> None:
        """Stage partition `key` (None: the one file) from a Table, Dataset or stream of batches."""
        rows = stream(data)
        writer = self.writer(key, rows.schema)
        for batch in prefetched(rows):
            writer.add(batch)
        writer.close()

    def dataset(self, key: str) -> ds.Dataset:
        """The staged partition, to audit before publishing."""
        staged_path = self.staging.staged_path(self.path)
        if self.column:
            window = time_window(self.partitions_def, key)
            return _hive_dataset(self.fs, staged_path, key, self.column, window)
        return _dataset(self.fs, _file(staged_path, key))

    def publish(self, asset_key: dg.AssetKey, keys: list[str | None]) -> None:
        """Move every staged partition into place, then remove the files of those partitions that
        the new data no longer has (days without rows)."""
        expected = posixpath.join(self.staging.root, *asset_key.path)
        if expected != self.path or sorted(map(str, keys)) != sorted(map(str, self.files)):
            raise ValueError(
                f"{asset_key.to_user_string()}: the staged data is {self.path} {sorted(map(str, self.files))}, "
                f"not partitions {keys}"
            )
        for files in self.files.values():
            for published, staged in files.items():
                if isinstance(self.fs, pafs.LocalFileSystem):
                    self.fs.create_dir(posixpath.dirname(published), recursive=True)
                self.fs.move(staged, published)
                self.published[published] = self.fs.get_file_info(published).size
        if self.column:
            for key in filter(None, keys):
                window = time_window(self.partitions_def, key)
                _remove_stale_days(self.fs, self.path, key, self.column, window, set(self.published))


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


def _location_metadata(staged: "Staged") -> dict:
    """Where the asset lives (with a console link in a bucket), and what this run published."""
    fs, path, written = staged.fs, staged.path, list(staged.published.values())
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


class _DayWriters:
    """One parquet file per day of the partition, written as the batches come: rows are buffered
    by day and written as row groups whenever BUFFERED_ROWS are held, so memory holds a few batches,
    not the month."""

    def __init__(self, staged: Staged, files: dict[str, str], key: str, start: date, end: date, schema):
        self.staged, self.files, self.key, self.column = staged, files, key, staged.column or ""
        self.start, self.end = start, end
        self.schema = schema.remove(schema.get_field_index(self.column))
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
                f"{self.staged.path}: partition {self.key} holds rows with {self.column} outside "
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

    def close(self) -> None:
        """Write what is buffered and close the day files."""
        if not self.writers and not self.buffered:  # an empty partition: one empty file
            self.buffered[self.start] = []
        for day in list(self.buffered):
            self._write_day(day)
        for writer in self.writers.values():
            writer.close()

    def _write_day(self, day: date) -> None:
        if day not in self.writers:
            published = f"{self.staged.path}/{self.column}={day.isoformat()}/{self.key}.parquet"
            self.files[published], self.writers[day] = self.staged.staging.writer(published, self.schema)
        self.writers[day].write_table(pa.Table.from_batches(self.buffered.pop(day), self.schema))


class _FileWriter:
    """One whole parquet file, in row groups of at least BATCH_ROWS rows however small the batches
    (rejected rows come a few thousand at a time)."""

    def __init__(self, staged: Staged, files: dict[str, str], published: str, schema: pa.Schema):
        self.schema = schema
        files[published], self.writer = staged.staging.writer(published, schema)
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.rows += batch.num_rows
        if self.rows >= BATCH_ROWS:
            self._write()

    def close(self) -> None:
        if self.pending:
            self._write()
        self.writer.close()

    def _write(self) -> None:
        self.writer.write_table(
            pa.Table.from_batches(self.pending, self.schema), row_group_size=2 * BATCH_ROWS
        )
        self.pending, self.rows = [], 0


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


def _sweep_abandoned(fs, staging_root: str, before: datetime) -> None:
    """Remove the staging areas of runs whose newest file is older than `before`: those runs were
    killed (a live area is written to at least every few minutes, and removed when its step ends)."""
    newest: dict[str, datetime] = {}
    for info in fs.get_file_info(pafs.FileSelector(staging_root, recursive=True, allow_not_found=True)):
        area = info.path[len(staging_root) + 1 :].split("/")[0]  # a run's areas
        mtime = info.mtime
        if info.type == pafs.FileType.File and mtime is not None:
            mtime = mtime if mtime.tzinfo else mtime.replace(tzinfo=UTC)
            newest[area] = max(newest[area], mtime) if area in newest else mtime
    for area, mtime in newest.items():
        if mtime < before:
            _delete_dir(fs, f"{staging_root}/{area}")


def _delete_dir(fs, path: str) -> None:
    """Remove a folder and what it holds, if it is there; in a bucket, the objects under the prefix
    (a bucket has no folder objects to remove)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.delete_dir_contents(path, missing_dir_ok=True)
    elif fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _dataset(fs, path: str) -> ds.Dataset:
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path} does not exist; is the partition materialized?")
    return ds.dataset(path, filesystem=fs, format="parquet")
