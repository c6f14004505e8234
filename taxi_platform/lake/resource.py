"""The `Lake` resource: the lake's tables, their staging, publishing, versions and retention.

What an asset's data becomes in the lake, under `<root>/<asset key>` (README, "The lake"):
- a partitioned asset with a date column (definition metadata PARTITION_COLUMN): an Iceberg table
  partitioned by that column's values, one folder a day;
- a partitioned asset without one: an Iceberg table partitioned by partition key (PARTITION_KEY);
- an asset whose metadata sets VERSIONED_FILES (a form whose columns change between partitions,
  which one table cannot hold): a parquet file per partition and write, with an Iceberg table
  `<asset key>/_index` naming each partition's current file;
- an unpartitioned asset: an Iceberg table replaced whole.
Every publish is one commit per table, carrying the run and what the asset said of each partition;
it stays readable for `retention_days`. The tables are named in an Iceberg SQL catalog: a SQLite
file beside a local lake, or `catalog_url` (the platform's PostgreSQL). Assets, sensors and sources
use this resource; Dagster's IO manager (taxi_platform/lake/lake_io_manager.py) holds it.
"""

import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from taxi_platform.io_managers import LAKE_METADATA_FILE, time_window
from taxi_platform.lake.files import catalog, filesystem, uri
from taxi_platform.lake.staging import PARTITION_KEY, Staged, file_dataset
from taxi_platform.lake.tables import IcebergTable, Version, partition_filter

VERSIONED_FILES = "lake/versioned_files"
INDEX = "_index"
CATALOG_FILE = "catalog.db"  # the SQLite catalog of a local lake, in its root
# A loaded dataset's schema metadata names the table version it was read at (`version_of`).
VERSION_KEY = b"lake_version"
_INDEX_SCHEMA = pa.schema([("file", pa.string()), ("rows", pa.int64()), (PARTITION_KEY, pa.string())])


@dataclass(frozen=True)
class Vacuumed:
    """What a table's vacuum removed: data files, and metadata files (old metadata, manifests)."""

    data_files: list[str]
    metadata_files: list[str]


class Lake(dg.ConfigurableResource):
    """The lake in a local folder or a Cloud Storage bucket, as Apache Iceberg tables."""

    root: str = Field(description="A local folder, or a URI such as gs://bucket/prefix.")
    gcs_endpoint: str = Field(
        default="", description="A Cloud Storage emulator's host (STORAGE_EMULATOR_HOST); empty: Google."
    )
    retention_days: float = Field(
        default=30, ge=0, description="How long a replaced version stays readable (TAXI_LAKE_RETENTION_DAYS)."
    )
    catalog_url: str = Field(
        default="",
        description="The Iceberg catalog's database (SQLAlchemy or postgresql:// URL); empty: a SQLite "
        f"file {CATALOG_FILE} in a local lake's root.",
    )

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The lake's filesystem and the path of its root in it."""
        return filesystem(self.root, self.gcs_endpoint)

    def path(self, key: dg.AssetKey) -> str:
        """The filesystem path of an asset's folder."""
        return posixpath.join(self.filesystem()[1], *key.path)

    def table(self, key: dg.AssetKey, versioned_files: bool = False) -> IcebergTable:
        """The Iceberg table of an asset (of its index, for versioned files)."""
        name = "_".join(key.path[1:]) + (INDEX if versioned_files else "")
        location = self.path(key) + (f"/{INDEX}" if versioned_files else "")
        return IcebergTable(self._catalog(), (key.path[0], name), uri(self.root, location))

    def stage(
        self,
        key: dg.AssetKey,
        partitions_def: dg.PartitionsDefinition | None = None,
        column: str | None = None,
        versioned_files: bool = False,
    ) -> Staged:
        """A new staged write of an asset, invisible until `publish`; `column`: its date column. It
        is published against the table as it is now."""
        keyed = partitions_def is not None and not column and not versioned_files
        base = self.table(key, versioned_files).find()
        return Staged(
            self.filesystem()[0], self.path(key), partitions_def, column, keyed, versioned_files, base
        )

    def publish(self, key: dg.AssetKey, staged: Staged, partitions: list[str | None], run_id: str) -> int:
        """Publish the staged partitions in one commit (replacing those partitions' rows, or the whole
        table when unpartitioned); returns the table version. The commit carries the run, each
        partition's rows and what the asset said of it (`Staged.details`: its source file)."""
        if sorted(map(str, partitions)) != sorted(map(str, staged.files)) or staged.folder != self.path(key):
            raise ValueError(
                f"{key.to_user_string()}: the staged data is {staged.folder} {sorted(map(str, staged.files))}, "
                f"not partitions {partitions}"
            )
        said = {str(p): {"rows": staged.rows(p), **staged.details.get(p, {})} for p in partitions}
        if staged.versioned:
            staged.published_version = self._publish_index(key, staged, partitions, run_id, said)
        else:
            files = _written(self.root, staged, partitions)
            schema = staged.schema if staged.schema is not None else pa.schema([])
            column = staged.column or (PARTITION_KEY if staged.keyed else None)
            table = self.table(key)
            base = staged.base if staged.base is not None else table.create(schema, column)
            replaced = partition_filter(column, [str(p) for p in partitions], _window(staged, partitions))
            staged.published_version = table.commit(base, list(files), replaced, run_id, said, files)
        return staged.published_version

    def _publish_index(self, key, staged: Staged, partitions, run_id: str, said: dict) -> int:
        """One commit of the index table, naming each partition's new versioned file."""
        index = Staged(staged.fs, f"{self.path(key)}/{INDEX}", staged.partitions_def, None, True)
        for p in partitions:
            (file,) = staged.files[p]
            index.write(p, pa.table({"file": [file.path], "rows": [file.rows]}))
        table = self.table(key, True)
        try:
            base = staged.base if staged.base is not None else table.create(_INDEX_SCHEMA, PARTITION_KEY)
            files = _written(self.root, index, partitions)
            replaced = partition_filter(PARTITION_KEY, [str(p) for p in partitions], None)
            return table.commit(base, list(files), replaced, run_id, said, files)
        except BaseException:
            index.discard()
            raise

    def restore(
        self,
        key: dg.AssetKey,
        partition: str,
        version: int,
        run_id: str,
        partitions_def: dg.PartitionsDefinition,
        column: str | None = None,
        versioned_files: bool = False,
    ) -> int:
        """Publish again what `version` held of the partition, as a new version (its files taken
        back, not copied); returns the new version. Rolling back is restoring the version before."""
        table = self.table(key, versioned_files)
        window = _window_of(partitions_def, partition) if column else None
        row_filter = partition_filter(column or PARTITION_KEY, [partition], window)
        loaded = table.load()
        _, entries = table.files(row_filter, version, loaded)
        held = next(v for v in table.versions(loaded) if v.version == version)
        said = {
            partition: {
                **held.details.get(partition, {}),
                "restored_version": version,
                "restored_run_id": held.run_id,
            }
        }
        return table.commit(loaded, [f for f, _ in entries], row_filter, run_id, said)

    def read(
        self,
        key: dg.AssetKey,
        partition: str | None = None,
        partitions_def: dg.PartitionsDefinition | None = None,
        column: str | None = None,
        versioned_files: bool = False,
        version: int | None = None,
    ) -> ds.Dataset:
        """A published partition (or the whole table) as a lazy dataset, at `version` (default: the
        latest); its schema metadata names the version read (`version_of`) and the table's metadata file
        it was read from (`LAKE_METADATA_FILE`)."""
        fs, _ = self.filesystem()
        table = self.table(key, versioned_files)
        loaded = table.load()
        if versioned_files:
            row_filter = partition_filter(PARTITION_KEY, [str(partition)], None)
            version, entries = table.files(row_filter, version, loaded)
            index = file_dataset(fs, [_path(f) for f, _ in entries], None)
            names = index.to_table(columns=["file"])["file"].to_pylist() if entries else []
            paths, schema, drop = [f"{self.path(key)}/{name}" for name in names], None, None
        else:
            keyed = partition is not None and not column
            window = _window_of(partitions_def, partition) if column and partition else None
            row_filter = partition_filter(
                column or (PARTITION_KEY if keyed else None), [str(partition)], window
            )
            version, entries = table.files(row_filter, version, loaded)
            paths, drop = [_path(f) for f, _ in entries], PARTITION_KEY if keyed else None
            schema = loaded.schema().as_arrow()
        if not paths and not any(
            partition is None or partition in v.partitions for v in table.versions(loaded)
        ):
            raise FileNotFoundError(
                f"{self.path(key)}: no files for partition {partition}; is it materialized?"
            )
        dataset = file_dataset(fs, paths, schema, drop)
        said = {VERSION_KEY: str(version), LAKE_METADATA_FILE: loaded.metadata_location}
        return dataset.replace_schema(dataset.schema.with_metadata(said))

    def published_rows(
        self, key: dg.AssetKey, partition: str, partitions_def: dg.PartitionsDefinition, column: str | None
    ) -> int | None:
        """The row count of a published partition, from the table's metadata; None when never published."""
        table = self.table(key)
        loaded = table.find()
        if loaded is None:
            return None
        window = _window_of(partitions_def, partition) if column else None
        _, entries = table.files(partition_filter(column or PARTITION_KEY, [partition], window), None, loaded)
        if entries:
            return sum(rows for _, rows in entries)
        return 0 if any(partition in v.partitions for v in table.versions(loaded)) else None

    def versions(
        self, key: dg.AssetKey, partition: str | None = None, versioned_files: bool = False
    ) -> list[Version]:
        """The versions that published `partition` (any, if None), newest first, within retention."""
        table = self.table(key, versioned_files)
        loaded = table.find()
        if loaded is None:
            return []
        return [v for v in table.versions(loaded) if partition is None or partition in v.partitions]

    def vacuum(self, key: dg.AssetKey, versioned_files: bool = False) -> Vacuumed:
        """Forget the versions older than the retention (never the current one), then remove the files
        no remaining version reads, files no commit ever took (a killed writer's), and the metadata
        the current metadata no longer names, once older than the retention."""
        table = self.table(key, versioned_files)
        if not table.exists():
            return Vacuumed([], [])
        retention = timedelta(days=self.retention_days)
        before = datetime.now(UTC) - retention
        live = {_path(f) for f in table.expire(retention)}
        folder = self.path(key)
        table_folder = f"{folder}/{INDEX}" if versioned_files else folder
        removed = self._remove_unread(f"{table_folder}/data", live, before, (".parquet",), recursive=True)
        if versioned_files:  # and the data files that no remaining index version names
            index = file_dataset(self.filesystem()[0], sorted(live), None)
            named = (
                {f"{folder}/{name}" for name in index.to_table(columns=["file"])["file"].to_pylist()}
                if live
                else set()
            )
            removed += self._remove_unread(folder, named, before, (".parquet",), recursive=False)
        metadata = self._remove_unread(
            f"{table_folder}/metadata",
            {_path(f) for f in table.metadata_files()},
            before,
            (".avro", ".metadata.json"),
            recursive=False,
        )
        return Vacuumed(sorted(removed), metadata)

    def _remove_unread(
        self, folder: str, live: set[str], before: datetime, suffixes: tuple[str, ...], recursive: bool
    ) -> list[str]:
        fs, _ = self.filesystem()
        removed = []
        for info in fs.get_file_info(pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)):
            mtime = info.mtime if info.mtime is None or info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
            if info.type != pafs.FileType.File or not info.path.endswith(suffixes) or info.path in live:
                continue
            if mtime is not None and mtime < before:
                fs.delete_file(info.path)
                removed.append(info.path)
        return sorted(removed)

    def _catalog(self):
        url = self.catalog_url
        if not url:
            if "://" in self.root:
                raise ValueError(f"a lake in {self.root} needs a catalog_url (TAXI_LAKE_CATALOG_URL)")
            url = f"sqlite:///{self.filesystem()[1]}/{CATALOG_FILE}"
            fs, base = self.filesystem()
            fs.create_dir(base, recursive=True)
        warehouse = self.root if "://" in self.root else f"file://{self.filesystem()[1]}"
        return catalog(url, warehouse, self.gcs_endpoint)


def version_of(dataset: ds.Dataset) -> int | None:
    """The table version a dataset from `Lake.read` was read at."""
    value = (dataset.schema.metadata or {}).get(VERSION_KEY)
    return int(value) if value is not None else None


def _written(root: str, staged: Staged, partitions) -> dict[str, tuple[int, pq.FileMetaData]]:
    """The URIs of the partitions' staged files, with each one's size and its writer's metadata."""
    return {
        uri(root, f"{staged.folder}/{f.path}"): (f.size, f.footer)
        for p in partitions
        for f in staged.files[p]
    }


def _window(staged: Staged, partitions: list[str | None]) -> tuple[str, str] | None:
    """The date range of the partitions (a run's partitions are one range), for a date column."""
    if not staged.column:
        return None
    windows = [time_window(staged.partitions_def, str(p)) for p in partitions]
    return min(w.start for w in windows).date().isoformat(), max(w.end for w in windows).date().isoformat()


def _window_of(partitions_def, partition: str) -> tuple[str, str]:
    window = time_window(partitions_def, partition)
    return window.start.date().isoformat(), window.end.date().isoformat()


def _path(file_uri: str) -> str:
    """A table's file URI as a path of the lake's pyarrow filesystem."""
    return file_uri.split("://", 1)[1] if "://" in file_uri else file_uri
