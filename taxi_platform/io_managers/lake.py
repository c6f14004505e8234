"""A lake of parquet files in a local folder or a bucket: partition-exact, rerun-safe writes.

Layout under `root`, from the asset key (`clean/green_trips` -> `clean/green_trips`):
- unpartitioned: `<key>.parquet`;
- partitioned: `<key>/<partition>.parquet`;
- partitioned, with definition metadata `{"lake/partition_column": "pickup_date"}` (a date column):
  hive directories `<key>/pickup_date=2020-10-01/<partition>.parquet`, every value inside the
  partition's time window. The column is kept in the directory name, not in the files, and comes
  back as the last column. A partition without rows is stored as one empty file in the directory of
  its window's first day, so it loads back as an empty table, not as "not materialized".

Writing a partition replaces exactly its files: each is written under a temporary name and renamed,
then files of the partition that the new data no longer has are removed. A run over a range of
partitions (a single-run backfill) takes and gives a dict of partition key -> table.
"""

import posixpath
import uuid
from datetime import date
from pathlib import Path

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
            _write_atomic(fs, f"{path}.parquet", obj)
            context.add_output_metadata({"lake_path": f"{path}.parquet"})
            return
        tables = _by_partition(context, obj)
        column = context.definition_metadata.get(PARTITION_COLUMN)
        files = 0
        for key, table in tables.items():
            if column:
                window = context.asset_partitions_def.time_window_for_partition_key(key)
                files += _write_hive(fs, path, key, table, column, window)
            else:
                _write_atomic(fs, f"{path}/{key}.parquet", table)
                files += 1
        context.add_output_metadata({"lake_path": path, "lake_files_written": files})

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
        if "://" in self.root:
            fs, base = pafs.FileSystem.from_uri(self.root)
        else:
            fs, base = pafs.LocalFileSystem(), Path(self.root).resolve().as_posix()
        return fs, posixpath.join(base.rstrip("/"), *asset_key.path)


def _by_partition(context: dg.OutputContext, obj) -> dict[str, pa.Table]:
    keys = list(context.asset_partition_keys)
    tables = obj if isinstance(obj, dict) else {keys[0]: obj} if len(keys) == 1 else None
    if tables is None or sorted(tables) != sorted(keys):
        raise ValueError(
            f"{context.asset_key.to_user_string()}: a run over partitions {keys} must output a dict "
            f"with exactly those keys, got {sorted(tables) if tables else type(obj).__name__}"
        )
    return tables


def _write_hive(fs, path: str, key: str, table: pa.Table, column: str, window) -> int:
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
    offset, written = 0, set()
    for c in counts:
        directory = f"{path}/{column}={c['values'].isoformat()}"
        _write_atomic(fs, f"{directory}/{key}.parquet", data.slice(offset, c["counts"]))
        offset += c["counts"]
        written.add(directory)
    for directory in _partition_dirs(fs, path, column, start, end):
        for info in fs.get_file_info(pafs.FileSelector(directory)):
            if directory not in written or info.base_name != f"{key}.parquet":
                fs.delete_file(info.path)
        if directory not in written:
            fs.delete_dir(directory)
    return len(written)


def _read_hive(fs, path: str, key: str, column: str, window) -> pa.Table:
    directories = _partition_dirs(fs, path, column, window.start.date(), window.end.date())
    if not directories:
        raise FileNotFoundError(f"{path}: no files for partition {key}; is it materialized?")
    tables = []
    for directory in directories:
        table = _read(fs, f"{directory}/{key}.parquet")
        value = date.fromisoformat(directory.rsplit("=", 1)[1])
        constant = pa.repeat(pa.scalar(value, pa.date32()), table.num_rows)
        tables.append(table.append_column(column, constant))
    return pa.concat_tables(tables)


def _partition_dirs(fs, path: str, column: str, start: date, end: date) -> list[str]:
    """The hive directories under `path` whose value lies in [start, end), in order."""
    prefix = f"{column}="
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix):
            if start <= date.fromisoformat(info.base_name[len(prefix):]) < end:
                found.append(info.path)
    return sorted(found)


def _write_atomic(fs, path: str, table: pa.Table) -> None:
    fs.create_dir(posixpath.dirname(path), recursive=True)
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, temporary, filesystem=fs)
    fs.move(temporary, path)


def _read(fs, path: str) -> pa.Table:
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path} does not exist; is the partition materialized?")
    return pq.read_table(path, filesystem=fs)
