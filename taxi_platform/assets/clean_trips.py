"""clean/<dataset>_trips and clean/<dataset>_trips_rejected: typed, snake_case, rules applied."""

import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from taxi_platform.assets import by_month, streamed
from taxi_platform.checks import RELAXED_RULES
from taxi_platform.cleaning import MonthCleaner, reject_reasons, rejected_schema
from taxi_platform.datasets import PICKUP_DATE, DatasetSpec
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.arrow_data import stream
from taxi_platform.metadata import CLEAN_DESCRIPTIONS, clean_column_lineage, column_schema


class CleanConfig(dg.Config):
    relax_positive: list[str] = Field(
        default=[],
        description="Switch off the 'must be > 0' rule for these columns, e.g. ['passenger_count'].",
    )


def build_clean_assets(spec: DatasetSpec) -> dg.AssetsDefinition:
    clean_key = dg.AssetKey(["clean", spec.table])
    rejected_key = dg.AssetKey(["clean", f"{spec.table}_rejected"])
    rules = ", ".join(reject_reasons(spec))
    common: dict[str, Any] = dict(
        group_name="clean",
        io_manager_key="lake_io_manager",
        kinds={"parquet"},
        owners=["team:data-platform"],
        tags={"dataset": spec.name},
        code_version="1",
    )

    @dg.multi_asset(
        name=f"clean_{spec.table}",
        outs={
            "clean": dg.AssetOut(
                key=clean_key,
                description=f"{spec.description} Typed, snake_case, with pickup_date and trip_key; "
                f"only rows that pass every rule ({rules}). Lake: hive-partitioned by pickup_date.",
                metadata={PARTITION_COLUMN: PICKUP_DATE},
                **common,
            ),
            "rejected": dg.AssetOut(
                key=rejected_key,
                description=f"Every {spec.name} row the cleaning rejected, with its reject_reason "
                f"(the first rule it broke, of {rules}).",
                **common,
            ),
        },
        ins={"raw": dg.AssetIn(key=["raw", spec.table])},
        partitions_def=spec.partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(spec.months_per_run),
    )
    def clean(context: dg.AssetExecutionContext, config: CleanConfig, raw):
        relaxed = frozenset(config.relax_positive)
        for key, schema in ((clean_key, spec.clean_schema), (rejected_key, rejected_schema(spec))):
            context.add_asset_metadata(
                {
                    "dagster/column_schema": column_schema(schema, CLEAN_DESCRIPTIONS),
                    "dagster/column_lineage": clean_column_lineage(spec),
                },
                asset_key=key,
            )
        with tempfile.TemporaryDirectory(prefix="taxi-rejected-") as folder:
            cleaners, streams = {}, {}
            for month, raw_rows in by_month(context, raw).items():
                window = spec.partitions_def.time_window_for_partition_key(month)
                start, end = window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)
                rejected_file = Path(folder) / f"{month}.parquet"
                cleaner = cleaners[month] = MonthCleaner(spec, start, end, rejected_file, relaxed)
                clean_rows = cleaner.clean_stream(stream(raw_rows))
                streams[month] = streamed(clean_rows, partial(_add_month_metadata, context, month, cleaner))
            # The lake writes the clean rows as the raw month is read; the rejected rows, set aside
            # on local disk meanwhile, are then complete.
            yield dg.Output(streams, "clean")
            yield dg.Output({month: cleaner.rejected() for month, cleaner in cleaners.items()}, "rejected")

    def _add_month_metadata(context, month: str, cleaner: MonthCleaner, _rows: int) -> None:
        context.add_asset_metadata(
            {
                "dagster/row_count": cleaner.clean_rows,
                "raw_rows": cleaner.raw_rows,
                "rejected_rows": cleaner.rejected_rows,
                **{f"rejected_{r}": n for r, n in cleaner.rejected_counts.items()},
                RELAXED_RULES: ",".join(sorted(cleaner.relaxed)),
            },
            asset_key=clean_key,
            partition_key=month,
        )
        context.add_asset_metadata(
            {"dagster/row_count": cleaner.rejected_rows}, asset_key=rejected_key, partition_key=month
        )

    return clean
