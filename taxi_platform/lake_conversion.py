"""`convert_lake`: a lake written before the Iceberg tables (plain parquet: `raw/<dataset>_trips/<YYYY-MM>.parquet`,
clean hive-partitioned `clean/<dataset>_trips/pickup_date=<day>/<YYYY-MM>.parquet`, rejected
`clean/<dataset>_trips_rejected/<YYYY-MM>.parquet`, `reference/taxi_zones.parquet`) converted in place:
each month becomes the first version of its tables, then its old files are removed. A month already in
the tables is left as it is, so running it again does nothing. README, "Upgrading".
"""

import posixpath

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from taxi_platform.assets.zones import ZONES
from taxi_platform.datasets import DATASETS, PICKUP_DATE
from taxi_platform.lake.resource import Lake


@dg.op(
    description="Publish every month of the old parquet layout as the first version of its tables, "
    "then remove its old files."
)
def convert_lake_op(context: dg.OpExecutionContext, lake: Lake) -> dg.Output:
    fs, _ = lake.filesystem()
    converted = 0
    for spec in DATASETS.values():
        raw, clean, rejected = (lake.path(key) for key in (spec.raw_key, spec.clean_key, spec.rejected_key))
        for month in _old_months(fs, raw):
            if lake.versions(spec.clean_key, month):
                continue  # already converted
            day_files = _old_day_files(fs, clean, month)
            tables = (
                (
                    spec.raw_key,
                    ds.dataset(f"{raw}/{month}.parquet", filesystem=fs),
                    None,
                    True,
                    [f"{raw}/{month}.parquet"],
                ),
                (spec.clean_key, _hive(fs, clean, day_files), PICKUP_DATE, False, day_files),
                (
                    spec.rejected_key,
                    ds.dataset(f"{rejected}/{month}.parquet", filesystem=fs),
                    None,
                    False,
                    [f"{rejected}/{month}.parquet"],
                ),
            )
            for key, data, column, versioned, old in tables:
                staged = lake.stage(key, spec.partitions_def, column, versioned)
                staged.details[month] = {"converted_from": "parquet lake"}
                staged.write(month, data)
                lake.publish(key, staged, [month], context.run_id)
                for path in old:
                    fs.delete_file(path)
            converted += 1
            context.log.info(f"{spec.name} {month}: converted")
    zones = f"{lake.path(ZONES)}.parquet"
    if fs.get_file_info(zones).type == pafs.FileType.File:
        staged = lake.stage(ZONES)
        staged.write(None, ds.dataset(zones, filesystem=fs))
        lake.publish(ZONES, staged, [None], context.run_id)
        fs.delete_file(zones)
    return dg.Output(None, metadata={"months_converted": converted})


def _old_months(fs: pafs.FileSystem, raw: str) -> list[str]:
    """The months of the old layout: its raw files `<YYYY-MM>.parquet` directly in the raw folder."""
    found = fs.get_file_info(pafs.FileSelector(raw, allow_not_found=True))
    names = [posixpath.basename(info.path) for info in found if info.type == pafs.FileType.File]
    return sorted(name.removesuffix(".parquet") for name in names if len(name) == len("YYYY-MM.parquet"))


def _old_day_files(fs: pafs.FileSystem, clean: str, month: str) -> list[str]:
    found = fs.get_file_info(pafs.FileSelector(clean, recursive=True, allow_not_found=True))
    return sorted(
        info.path
        for info in found
        if info.path.endswith(f"/{month}.parquet")
        and posixpath.basename(posixpath.dirname(info.path)).startswith(f"{PICKUP_DATE}=")
    )


def _hive(fs: pafs.FileSystem, base: str, files: list[str]) -> ds.Dataset:
    """The old clean month: its day folders give back the pickup_date column."""
    partitioning = ds.partitioning(pa.schema([(PICKUP_DATE, pa.date32())]), flavor="hive")
    return ds.dataset(
        files, filesystem=fs, format="parquet", partition_base_dir=base, partitioning=partitioning
    )


@dg.job(
    name="convert_lake", description="Convert a lake of the old parquet layout into Iceberg tables, in place."
)
def convert_lake():
    convert_lake_op()
