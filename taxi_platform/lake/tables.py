"""One Apache Iceberg table of the lake, through pyiceberg and its SQL catalog: its commits, its files,
its history and their retention (docs/decisions/0001-lake-table-format.md).

The data files are written by the lake's own writers (taxi_platform/lake/staging.py) under the
table's location; a file no snapshot references is invisible to every reader of the table.
Publishing is one catalog commit that removes the partitions' current files and adds the new ones,
so a reader sees the old partitions or the new ones, never a mix. The commit is made against the
table as it was when the writer began: if another writer has since added files to the same
partitions, pyiceberg refuses it (PublishConflict) and nothing of it is published; a commit of other
partitions in between is merged (pyiceberg retries on the new state).
"""

import json
import posixpath
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import (
    _check_pyarrow_schema_compatible,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.transforms import IdentityTransform

# The keys of a publish's snapshot summary: which partitions it published, from which run, what else
# the asset said of each partition (its provenance: source file, rows), as JSON.
PARTITIONS, RUN_ID, DETAILS = "lake.partitions", "lake.run_id", "lake.details"
# DuckDB (and Hadoop-style readers) find a table's current metadata through this file.
VERSION_HINT = "metadata/version-hint.text"


class PublishConflict(RuntimeError):
    """Another writer published the same partitions first: nothing of this write was published."""


@dataclass(frozen=True)
class Version:
    """A publish: the table version (its snapshot's sequence number), when, by which run, what it said."""

    version: int
    snapshot_id: int
    timestamp: datetime
    run_id: str
    partitions: tuple[str, ...]
    details: Mapping[str, Mapping]  # partition -> provenance


def partition_filter(
    column: str | None, partitions: list[str], window: tuple[str, str] | None
) -> str | BooleanExpression:
    """The rows of the partitions: a date range of `column`, or partition keys of `column` (partition
    keys and ISO dates hold no quote)."""
    if column is None:
        return AlwaysTrue()
    if window is not None:
        return f"{column} >= '{window[0]}' AND {column} < '{window[1]}'"
    keys = ", ".join(f"'{key}'" for key in partitions)
    return f"{column} IN ({keys})"


@dataclass(frozen=True)
class IcebergTable:
    """The table `identifier` of `catalog`, whose files lie under `location`."""

    catalog: Catalog
    identifier: tuple[str, str]
    location: str

    def exists(self) -> bool:
        return self.catalog.table_exists(self.identifier)

    def find(self) -> Table | None:
        """The table as it is now, or None when it was never created (one catalog query either way)."""
        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            return None

    def load(self) -> Table:
        found = self.find()
        if found is None:
            raise FileNotFoundError(f"{self.location}: no lake table here; is it materialized?")
        return found

    def create(self, schema: pa.Schema, partition_column: str | None) -> Table:
        """The table, created empty (partitioned by `partition_column`'s values) if it is not there; a
        writer that lost the race to create it takes the winner's."""
        found = self.find()
        if found is not None:
            return found
        self.catalog.create_namespace_if_not_exists(self.identifier[0])
        try:  # created with its partitioning in one commit
            creation = self.catalog.create_table_transaction(
                self.identifier, schema=schema, location=self.location
            )
            if partition_column:
                with creation.update_spec() as spec:
                    spec.add_field(partition_column, IdentityTransform(), partition_column)
            creation.commit_transaction()
        except TableAlreadyExistsError:
            return self.load()
        table = self.load()
        self._write_version_hint(table)
        return table

    def commit(
        self,
        base: Table,
        files: list[str],
        replaced: str | BooleanExpression,
        run_id: str,
        details: Mapping[str, Mapping],
        written: Mapping[str, tuple[int, pq.FileMetaData]] | None = None,
    ) -> int:
        """Publish `files` in one commit against `base` (the table as the writer found it), removing
        the rows of `replaced`; returns the new version. `written`: each file's size and the parquet
        metadata its writer produced, from which its statistics are taken; without it, the files'
        footers are read (files taken back from an older version)."""
        summary = {PARTITIONS: ",".join(details), RUN_ID: run_id, DETAILS: json.dumps(details, default=str)}
        try:
            with base.transaction() as transaction, warnings.catch_warnings():
                # A first publish of a partition has nothing to delete, which pyiceberg warns of.
                warnings.filterwarnings("ignore", "Delete operation did not match any records")
                transaction.delete(replaced)
                if files and written is not None:
                    _append_written(transaction, files, written, summary)
                elif files:
                    transaction.add_files(files, snapshot_properties=summary, check_duplicate_files=False)
                else:  # partitions without rows: an empty snapshot says they were published
                    transaction.append(base.schema().as_arrow().empty_table(), snapshot_properties=summary)
        except (ValidationException, CommitFailedException) as error:
            raise PublishConflict(
                f"{self.location}: partitions {', '.join(details)} were published by another run while "
                f"run {run_id} wrote them; this run's data was not published ({error})"
            ) from error
        self._write_version_hint(base)  # the transaction left base at the new version
        return _version(base)

    def versions(self, table: Table | None = None) -> list[Version]:
        """The publishes still in the table's history, newest first; `table`: as already loaded."""
        found = []
        for snapshot in (table or self.load()).snapshots():
            summary = snapshot.summary
            if summary is None or PARTITIONS not in summary.additional_properties:
                continue
            said = summary.additional_properties
            found.append(
                Version(
                    version=snapshot.sequence_number or 0,
                    snapshot_id=snapshot.snapshot_id,
                    timestamp=datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC),
                    run_id=said.get(RUN_ID, ""),
                    partitions=tuple(filter(None, said[PARTITIONS].split(","))),
                    details=json.loads(said.get(DETAILS) or "{}"),
                )
            )
        return sorted(found, key=lambda v: v.version, reverse=True)

    def files(
        self, row_filter: str | BooleanExpression, version: int | None = None, table: Table | None = None
    ) -> tuple[int, list[tuple[str, int]]]:
        """The version read (default: the current one) and its data files holding rows of
        `row_filter`, with their row counts; `table`: as already loaded."""
        table = table or self.load()
        snapshot = table.current_snapshot()
        if version is not None:
            snapshot = next((s for s in table.snapshots() if s.sequence_number == version), None)
            if snapshot is None:
                raise FileNotFoundError(f"{self.location}: no version {version} (vacuumed, or never made)")
        if snapshot is None:
            return 0, []
        tasks = table.scan(row_filter=row_filter, snapshot_id=snapshot.snapshot_id).plan_files()
        return snapshot.sequence_number or 0, [
            (task.file.file_path, task.file.record_count) for task in tasks
        ]

    def expire(self, retention: timedelta) -> set[str]:
        """Forget the snapshots older than the retention (never the current one); returns the data
        files the remaining snapshots reference."""
        table = self.load()
        cutoff = datetime.now(UTC) - retention
        old = [s.snapshot_id for s in table.snapshots() if s.timestamp_ms < cutoff.timestamp() * 1000]
        current = table.current_snapshot()
        old = [s for s in old if current is None or s != current.snapshot_id]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
            table = self.load()
        if not table.snapshots():
            return set()
        return set(table.inspect.all_files().column("file_path").to_pylist())

    def metadata_files(self) -> set[str]:
        """The metadata files the current metadata names: itself and the earlier metadata in its log,
        the manifest lists of its snapshots and their manifests."""
        table = self.load()
        named = {table.metadata_location, *(entry.metadata_file for entry in table.metadata.metadata_log)}
        named |= {snapshot.manifest_list for snapshot in table.snapshots()}
        if table.snapshots():
            named |= set(table.inspect.all_manifests().column("path").to_pylist())
        return named

    def _write_version_hint(self, table: Table) -> None:
        """Point readers that find tables by folder (DuckDB's iceberg_scan) at the current metadata: a
        hint written after the commit, so it names a committed version, at worst the one before."""
        stem = posixpath.basename(table.metadata_location).removesuffix(".metadata.json")
        with table.io.new_output(f"{self.location}/{VERSION_HINT}").create(overwrite=True) as hint:
            hint.write(stem.encode())


def _append_written(
    transaction: Transaction,
    files: list[str],
    written: Mapping[str, tuple[int, pq.FileMetaData]],
    summary: dict[str, str],
) -> None:
    """Append files this process wrote, as `Transaction.add_files` does, with each file's statistics
    and partition taken from its writer's metadata instead of its footer read back."""
    metadata = transaction.table_metadata
    if metadata.name_mapping() is None:  # readers map the files' columns (no field ids) by name
        mapping_json = metadata.schema().name_mapping.model_dump_json()
        transaction.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping_json})
        metadata = transaction.table_metadata
    schema, spec = metadata.schema(), metadata.spec()
    plan, ids = compute_statistics_plan(schema, metadata.properties), parquet_path_to_id_mapping(schema)
    checked: list[pa.Schema] = []  # a partition's files share their writer's schema: checked once
    with transaction.update_snapshot(snapshot_properties=summary).fast_append() as append:
        for path in files:
            size, footer = written[path]
            arrow_schema = footer.schema.to_arrow_schema()
            if not any(arrow_schema.equals(seen) for seen in checked):
                _check_pyarrow_schema_compatible(schema, arrow_schema, format_version=metadata.format_version)
                checked.append(arrow_schema)
            statistics = data_file_statistics_from_parquet_metadata(footer, plan, ids)
            append.append_data_file(
                DataFile.from_args(
                    content=DataFileContent.DATA,
                    file_path=path,
                    file_format=FileFormat.PARQUET,
                    partition=statistics.partition(spec, schema),
                    file_size_in_bytes=size,
                    sort_order_id=None,
                    spec_id=metadata.default_spec_id,
                    equality_ids=None,
                    key_metadata=None,
                    **statistics.to_serialized_dict(),
                )
            )


def _version(table: Table) -> int:
    snapshot = table.current_snapshot()
    return (snapshot.sequence_number or 0) if snapshot else 0
