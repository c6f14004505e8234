"""clean/<dataset>_trips and clean/<dataset>_trips_rejected: typed, snake_case, rules applied."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from taxi_platform.assets import by_month
from taxi_platform.cleaning import (
    PICKUP_OUTSIDE_MONTH,
    broken_rules,
    clean_month,
    reject_reasons,
)
from taxi_platform.datasets import DatasetSpec
from taxi_platform.io_managers.lake import PARTITION_COLUMN
from taxi_platform.metadata import CLEAN_DESCRIPTIONS, clean_column_lineage, column_schema

CHECKS = {
    "rows_balance": "Raw rows = clean rows + rejected rows: nothing is lost.",
    "rules_hold": "No clean row breaks a cleaning rule that was applied.",
    "trip_key_unique": "trip_key is unique within each month.",
    "pickups_in_month": "Every clean pickup lies inside the partition's month.",
    "schema_as_declared": "The clean columns and types are exactly the dataset spec's.",
}


class CleanConfig(dg.Config):
    relax_positive: list[str] = Field(
        default=[],
        description="Switch off the 'must be > 0' rule for these columns, e.g. ['passenger_count'].",
    )


def build_clean_assets(spec: DatasetSpec) -> dg.AssetsDefinition:
    clean_key = dg.AssetKey(["clean", spec.table])
    rejected_key = dg.AssetKey(["clean", f"{spec.table}_rejected"])
    common = dict(
        group_name="clean",
        io_manager_key="lake_io_manager",
        kinds={"parquet"},
        owners=["team:data-platform"],
        tags={"dataset": spec.name},
        code_version="1",
    )
    rules = ", ".join(reject_reasons(spec))

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
        check_specs=[
            dg.AssetCheckSpec(name, asset=clean_key, description=text, blocking=True)
            for name, text in CHECKS.items()
        ],
    )
    def clean(context: dg.AssetExecutionContext, config: CleanConfig, raw):
        relaxed = frozenset(config.relax_positive)
        cleaned, rejected, failures = {}, {}, {name: {} for name in CHECKS}
        for month, raw_table in by_month(context, raw).items():
            window = spec.partitions_def.time_window_for_partition_key(month)
            start, end = window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)
            result = clean_month(raw_table, spec, start, end, relaxed)
            cleaned[month], rejected[month] = result.clean, result.rejected
            by_reason = result.rejected_by_reason(spec)
            context.add_asset_metadata(
                {
                    "dagster/row_count": result.clean.num_rows,
                    "raw_rows": raw_table.num_rows,
                    "rejected_rows": result.rejected.num_rows,
                    **{f"rejected_{reason}": n for reason, n in by_reason.items()},
                },
                asset_key=clean_key,
                partition_key=month,
            )
            context.add_asset_metadata(
                {"dagster/row_count": result.rejected.num_rows, **by_reason},
                asset_key=rejected_key,
                partition_key=month,
            )
            _record_failures(failures, month, raw_table, result, spec, start, end, relaxed)

        for key, schema in ((clean_key, spec.clean_schema), (rejected_key, _rejected_schema(spec))):
            context.add_asset_metadata(
                {
                    "dagster/column_schema": column_schema(schema, CLEAN_DESCRIPTIONS),
                    "dagster/column_lineage": clean_column_lineage(spec),
                },
                asset_key=key,
            )
        yield dg.Output(cleaned, "clean")
        yield dg.Output(rejected, "rejected")
        for name, by_month_failures in failures.items():
            yield dg.AssetCheckResult(
                asset_key=clean_key,
                check_name=name,
                passed=not by_month_failures,
                metadata={"months": ", ".join(context.partition_keys), **by_month_failures},
            )

    return clean


def _record_failures(failures, month, raw, result, spec, start, end, relaxed) -> None:
    """Add each failed check's finding for this month to `failures[check][month]`."""
    clean, rejected = result.clean, result.rejected
    if raw.num_rows != clean.num_rows + rejected.num_rows:
        failures["rows_balance"][month] = (
            f"raw {raw.num_rows} != clean {clean.num_rows} + rejected {rejected.num_rows}"
        )
    broken = broken_rules(clean, spec, start, end, relaxed)
    outside = broken.pop(PICKUP_OUTSIDE_MONTH)
    if outside:
        failures["pickups_in_month"][month] = f"{outside} pickups outside {month}"
    if any(broken.values()):
        failures["rules_hold"][month] = str({rule: n for rule, n in broken.items() if n})
    repeated = clean.num_rows - pc.count_distinct(clean["trip_key"]).as_py()
    if repeated:
        failures["trip_key_unique"][month] = f"{repeated} repeated trip_key values"
    if not clean.schema.equals(spec.clean_schema):
        failures["schema_as_declared"][month] = f"got {clean.schema}, declared {spec.clean_schema}"


def _rejected_schema(spec: DatasetSpec) -> pa.Schema:
    return spec.clean_schema.append(pa.field("reject_reason", pa.string()))
