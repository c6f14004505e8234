"""A lake of parquet files in a local folder or a bucket: partition-exact, rerun-safe writes.

Layout under `root`, from the asset key (`clean/green_trips` -> `clean/green_trips`):
- unpartitioned: `<key>.parquet`;
- partitioned: `<key>/<partition>.parquet`;
- partitioned, with definition metadata `{"lake/partition_column": "pickup_date"}` (a date column):
  hive directories `<key>/pickup_date=2020-10-01/<partition>.parquet`, every value inside the
  partition's time window. The column is kept in the directory name, not in the files, and comes
  back as the last column. A partition without rows is stored as one empty file in the directory of
  its window's first day, so it loads back as an empty table, not as "not materialized".

Writing a partition replaces exactly its files: each is written whole (see `_write_atomic`), then
files of the partition that the new data no longer has are removed. A run over a range of
partitions (a single-run backfill) takes and gives a dict of partition key -> table.

One code path for a folder and a bucket, through `pyarrow.fs`. In a bucket (`gs://bucket/prefix`) a
"directory" is only a prefix of object names: the lake creates no directory marker objects and finds
the hive directories from the paths of the files (pyarrow's non-recursive listing of a bucket reports
only marker objects, not prefixes). Credentials are Application Default Credentials; when
STORAGE_EMULATOR_HOST names a Cloud Storage emulator (the convention of Google's client libraries,
which pyarrow does not read), the bucket is reached there, without credentials.
"""

import os
import posixpath
import uuid
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

PARTITION_COLUMN = "lake/partition_column"


class LakeIOManager(dg.ConfigurableIOManager):
    """Stores pyarrow Tables as parquet files under a folder or an object-store URI."""

    root: str = Field(description="A local folder, or a URI such as gs://bucket/prefix.")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        fs, path = self._asset_path(context.asset_key)
        if not context.has_asset_partitions:
            written = [_write_atomic(fs, f"{path}.parquet", obj)]
        else:
            tables = _by_partition(context, obj)
            column = context.definition_metadata.get(PARTITION_COLUMN)
            written = []
            for key, table in tables.items():
                if column:
                    window = context.asset_partitions_def.time_window_for_partition_key(key)
                    written += _write_hive(fs, path, key, table, column, window)
                else:
                    written.append(_write_atomic(fs, f"{path}/{key}.parquet", table))
        context.add_output_metadata(_location_metadata(fs, path, written))

    def load_input(self, context: dg.InputContext):
        fs, path = self._asset_path(context.asset_key)
        if not context.has_asset_partitions:
            return _read(fs, f"{path}.parquet")
        column = context.upstream_output.definition_metadata.get(PARTITION_COLUMN)
        partitions_def = context.asset_partitions_def
        tables = {}
        for key in context.asset_partition_keys:
            if column:
                window = partitions_def.time_window_for_partition_key(key)
                tables[key] = _read_hive(fs, path, key, column, window)
            else:
                tables[key] = _read(fs, f"{path}/{key}.parquet")
        return tables if len(tables) > 1 else next(iter(tables.values()))

    def _asset_path(self, asset_key: dg.AssetKey) -> tuple[pafs.FileSystem, str]:
        fs, base = filesystem(self.root)
        return fs, posixpath.join(base.rstrip("/"), *asset_key.path)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a local folder or a URI, and the path of `root` in it."""
    if "://" not in root:
        return pafs.LocalFileSystem(), Path(root).resolve().as_posix()
    fs, base = pafs.FileSystem.from_uri(root)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if fs.type_name == "gcs" and emulator:
        url = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        fs = pafs.GcsFileSystem(anonymous=True, scheme=url.scheme, endpoint_override=url.netloc)
    return fs, base


def _location_metadata(fs, path: str, written: list[int]) -> dict:
    """Where the asset lives (with a console link in a bucket), and what this run wrote."""
    metadata = {"lake_files_written": len(written), "lake_bytes_written": sum(written)}
    if fs.type_name == "gcs":
        metadata["lake_uri"] = f"gs://{path}"
        metadata["console_url"] = dg.MetadataValue.url(
            f"https://console.cloud.google.com/storage/browser/{path}"
        )
    else:
        metadata["lake_uri"] = dg.MetadataValue.path(path)
    return metadata


def _by_partition(context: dg.OutputContext, obj) -> dict[str, pa.Table]:
    keys = list(context.asset_partition_keys)
    tables = obj if isinstance(obj, dict) else {keys[0]: obj} if len(keys) == 1 else None
    if tables is None or sorted(tables) != sorted(keys):
        raise ValueError(
            f"{context.asset_key.to_user_string()}: a run over partitions {keys} must output a dict "
            f"with exactly those keys, got {sorted(tables) if tables else type(obj).__name__}"
        )
    return tables


def _write_hive(fs, path: str, key: str, table: pa.Table, column: str, window) -> list[int]:
    """Write a partition's hive files, remove its stale ones; the sizes of the files written."""
    start, end = window.start.date(), window.end.date()
    table = table.sort_by(column)
    counts = pc.value_counts(table[column]).to_pylist()  # ascending: the table is sorted
    outside = [c["values"] for c in counts if c["values"] is None or not start <= c["values"] < end]
    if outside:
        raise ValueError(
            f"{path}: partition {key} holds rows with {column} outside [{start}, {end}): "
            f"{outside[:5]}"
        )
    data = table.drop_columns([column])
    if not counts:
        counts = [{"values": start, "counts": 0}]
    offset, written, sizes = 0, set(), []
    for c in counts:
        file = f"{path}/{column}={c['values'].isoformat()}/{key}.parquet"
        sizes.append(_write_atomic(fs, file, data.slice(offset, c["counts"])))
        offset += c["counts"]
        written.add(file)
    files, entries = _partition_files(fs, path, column, start, end)
    for directory, paths in files.items():
        for file in paths:
            if file not in written:
                fs.delete_file(file)
        if directory in entries and f"{directory}/{key}.parquet" not in written:
            fs.delete_dir(directory)  # a folder, or a marker object: a bucket's prefix needs nothing
    return sizes


def _read_hive(fs, path: str, key: str, column: str, window) -> pa.Table:
    files, _ = _partition_files(fs, path, column, window.start.date(), window.end.date())
    name = f"{key}.parquet"
    tables = []
    for directory, paths in files.items():
        if f"{directory}/{name}" in paths:
            table = pq.read_table(f"{directory}/{name}", filesystem=fs)
            value = date.fromisoformat(directory.rsplit("=", 1)[1])
            constant = pa.repeat(pa.scalar(value, pa.date32()), table.num_rows)
            tables.append(table.append_column(column, constant))
    if not tables:
        raise FileNotFoundError(f"{path}: no files for partition {key}; is it materialized?")
    return pa.concat_tables(tables)


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
        if start <= date.fromisoformat(name[len(prefix):]) < end:
            files.setdefault(directory, [])
            if is_file:
                files[directory].append(info.path)
            else:
                entries.add(directory)
    return dict(sorted(files.items())), entries


def _write_atomic(fs, path: str, table: pa.Table) -> int:
    """Replace the file at `path` at once, never leaving it partly written.

    The parquet is built in memory, then stored in one write. A bucket's object appears whole when
    its upload completes, and a bucket has no folders to create (pyarrow would add marker objects);
    a local file goes under a temporary name in its folder, then is renamed.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue()
    target = path
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)
        target = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(target, compression=None) as out:
        out.write(data)
    if target != path:
        fs.move(target, path)
    return data.size


def _read(fs, path: str) -> pa.Table:
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path} does not exist; is the partition materialized?")
    return pq.read_table(path, filesystem=fs)
