"""Per dataset, the ingest job: a month's ingest step (raw, clean and rejected, audited by the blocking
checks before they are published). Sensors and the
schedule request it; the postgres/ and warehouse/ assets follow by their automation condition. The job's
partitions are those of the assets it selects (the dataset's months)."""

import dagster as dg

from taxi_platform.datasets import DatasetSpec


def build_ingest_job(spec: DatasetSpec):
    return dg.define_asset_job(
        f"{spec.name}_ingest",
        selection=dg.AssetSelection.assets(spec.raw_key, spec.clean_key, spec.rejected_key),
        description=f"Ingest one {spec.name} month: download (or take the landed file), parse, clean.",
        tags={"dataset": spec.name},
    )
