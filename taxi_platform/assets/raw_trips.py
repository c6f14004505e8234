"""raw/<dataset>_trips: each month's source file, parsed with its declared schema, every row."""

import tempfile
from functools import partial

import dagster as dg

from taxi_platform.assets import permanent_errors_not_retried, streamed
from taxi_platform.datasets import DatasetSpec
from taxi_platform.metadata import column_schema
from taxi_platform.sources.landing import LANDED_FILE_TAG
from taxi_platform.sources.public import TaxiSource
from taxi_platform.sources.reading import read_trips

DOWNLOAD_RETRY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_raw_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=["raw", spec.table],
        description=f"{spec.description} The month's source file as published (or as dropped into "
        "the lake's landing/ folder): original columns, every row, typed as the file's form "
        "(CSV.gz release or TLC parquet) declares.",
        group_name="raw",
        partitions_def=spec.partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(spec.months_per_run),
        io_manager_key="lake_io_manager",
        kinds={"parquet"},
        owners=["team:data-platform"],
        tags={"dataset": spec.name},
        code_version="1",
        retry_policy=DOWNLOAD_RETRY,
        pool="downloads",
    )
    def raw(context: dg.AssetExecutionContext, taxi_source: TaxiSource):
        streams, landed = {}, context.run.tags.get(LANDED_FILE_TAG)
        with permanent_errors_not_retried(), tempfile.TemporaryDirectory(prefix="taxi-") as folder:
            for month in context.partition_keys:
                file = taxi_source.locate(spec, month, landed)
                download = taxi_source.fetch(file, folder)
                rows = read_trips(download.path, spec, file.form, f"{file.label} ({file.url})")
                context.add_asset_metadata(
                    {
                        **download.metadata,
                        "source_kind": file.kind,
                        "dagster/column_schema": column_schema(rows.schema),
                    },
                    partition_key=month,
                )
                streams[month] = streamed(rows, partial(_add_row_count, context, month))
            # The lake writes each file's rows as they are parsed, before the downloads are removed.
            yield dg.Output(streams)

    return raw


def _add_row_count(context: dg.AssetExecutionContext, month: str, rows: int) -> None:
    context.add_asset_metadata({"dagster/row_count": rows}, partition_key=month)
