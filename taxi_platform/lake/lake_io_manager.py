"""The lake's IO manager: Dagster hands it an asset's output to publish in the `Lake`, and asks it
for an upstream partition to load. It holds the resource, as the warehouse's IO manager holds its
`WarehouseSQL`; code that needs the lake itself asks the resource.

An output is a Table, a stream of batches (RecordBatchReader, written batch by batch, never held
whole) or a dataset, staged and published at once; or a `Staged` write that the asset staged and
audited itself, published here. A run over a range of partitions (a single-run backfill) takes and
gives a dict of partition key -> data. Loading gives a lazy `pyarrow.dataset.Dataset` per partition,
read at the table's latest version, which `version_of` tells.
"""

from typing import Any

import dagster as dg

from taxi_platform.io_managers import PARTITION_COLUMN, upstream_metadata
from taxi_platform.lake.resource import VERSIONED_FILES, Lake
from taxi_platform.lake.staging import Staged
from taxi_platform.run_guard import refuse_if_run_ended


class LakeIOManager(dg.ConfigurableIOManager):
    """Publishes assets' outputs in the lake and loads them back."""

    lake: dg.ResourceDependency[Lake]

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        partitioned = context.has_asset_partitions
        keys: list[str | None] = list(context.asset_partition_keys) if partitioned else [None]
        meta = context.definition_metadata
        versioned = bool(meta.get(VERSIONED_FILES))
        if isinstance(obj, Staged):  # staged and audited by the asset
            staged = obj
        else:
            staged = self.lake.stage(
                context.asset_key,
                context.asset_partitions_def if partitioned else None,
                meta.get(PARTITION_COLUMN) if partitioned else None,
                versioned,
            )
            try:
                for key, data in (_by_partition(context, obj) if partitioned else {None: obj}).items():
                    staged.write(key, data)
            except BaseException:
                staged.discard()
                raise
        try:
            refuse_if_run_ended(context)
            version = self.lake.publish(context.asset_key, staged, keys, context.run_id)
        except BaseException:
            staged.discard()
            raise
        written = [file for files in staged.files.values() for file in files]
        metadata: dict[str, Any] = {
            "lake_version": version,
            "lake_files_written": len(written),
            "lake_bytes_written": sum(file.size for file in written),
        }
        path = self.lake.path(context.asset_key)
        if "://" in self.lake.root:
            metadata["lake_uri"] = f"gs://{path}"
            metadata["console_url"] = dg.MetadataValue.url(
                f"https://console.cloud.google.com/storage/browser/{path}"
            )
        else:
            metadata["lake_uri"] = dg.MetadataValue.path(path)
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext):
        meta = upstream_metadata(context)
        if not context.has_asset_partitions:
            return self.lake.read(context.asset_key)
        loaded = {
            key: self.lake.read(
                context.asset_key,
                key,
                context.asset_partitions_def,
                meta.get(PARTITION_COLUMN),
                bool(meta.get(VERSIONED_FILES)),
            )
            for key in context.asset_partition_keys
        }
        return loaded if len(loaded) > 1 else next(iter(loaded.values()))


def _by_partition(context: dg.OutputContext, obj) -> dict:
    keys = list(context.asset_partition_keys)
    tables = obj if isinstance(obj, dict) else {keys[0]: obj} if len(keys) == 1 else None
    if tables is None or sorted(tables) != sorted(keys):
        raise ValueError(
            f"{context.asset_key.to_user_string()}: a run over partitions {keys} must output a dict "
            f"with exactly those keys, got {sorted(tables) if tables else type(obj).__name__}"
        )
    return tables
