"""clean/<dataset>_trips and clean/<dataset>_trips_rejected: typed, snake_case, rules applied."""

import dagster as dg
import pyarrow as pa
from pydantic import Field

from taxi_platform.assets import by_month
from taxi_platform.checks import RELAXED_RULES
from taxi_platform.cleaning import clean_month, reject_reasons
from taxi_platform.datasets import DatasetSpec
from taxi_platform.io_managers.lake import PARTITION_COLUMN
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
    common = dict(
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
                metadata={PARTITION_COLUMN: "pickup_date"},
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
        cleaned, rejected = {}, {}
        for month, raw_table in by_month(context, raw).items():
            window = spec.partitions_def.time_window_for_partition_key(month)
            start, end = window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)
            result = clean_month(raw_table, spec, start, end, relaxed)
            cleaned[month], rejected[month] = result.clean, result.rejected
            context.add_asset_metadata(
                {
                    "dagster/row_count": result.clean.num_rows,
                    "raw_rows": raw_table.num_rows,
                    "rejected_rows": result.rejected.num_rows,
                    **{f"rejected_{r}": n for r, n in result.rejected_by_reason(spec).items()},
                    RELAXED_RULES: ",".join(sorted(relaxed)),
                },
                asset_key=clean_key,
                partition_key=month,
            )
            context.add_asset_metadata(
                {"dagster/row_count": result.rejected.num_rows},
                asset_key=rejected_key,
                partition_key=month,
            )
        for key, schema in ((clean_key, spec.clean_schema), (rejected_key, _rejected_schema(spec))):
            context.add_asset_metadata(
                {
                    "dagster/column_schema": column_schema(schema, CLEAN_DESCRIPTIONS),
                    "dagster/column_lineage": clean_column_lineage(spec),
                },
                asset_key=key,
            )
        return dg.Output(cleaned, "clean"), dg.Output(rejected, "rejected")

    return clean


def _rejected_schema(spec: DatasetSpec) -> pa.Schema:
    return spec.clean_schema.append(pa.field("reject_reason", pa.string()))
