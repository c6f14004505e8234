"""Checks of each stored clean month, read back through the lake, with logic of their own.

They run after `clean/<dataset>_trips` (blocking: a failure stops the month going downstream) and
judge what was stored, not the cleaning's in-memory result. In a single-run backfill of several
months they judge every month and report one result for the run.
"""

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds

from taxi_platform.datasets import TRIP_KEY, DatasetSpec

RELAXED_RULES = "relaxed_rules"  # clean materialization metadata: the positive rules switched off

CHECKS = {
    "rows_balance": "Stored raw rows = stored clean rows + stored rejected rows: nothing is lost.",
    "rules_hold": "No stored clean row breaks a 'must be > 0' rule that was in force for its month.",
    "trip_key_unique": "trip_key is unique within each stored month.",
    "pickups_in_month": "Every stored clean pickup lies inside the partition's month.",
    "schema_as_declared": "The stored clean columns and types are exactly the dataset spec's.",
}


def build_clean_checks(spec: DatasetSpec) -> dg.AssetChecksDefinition:
    clean_key = dg.AssetKey(["clean", spec.table])
    raw_key = dg.AssetKey(["raw", spec.table])
    rejected_key = dg.AssetKey(["clean", f"{spec.table}_rejected"])

    @dg.multi_asset_check(
        name=f"check_clean_{spec.table}",
        specs=[
            dg.AssetCheckSpec(
                name,
                asset=clean_key,
                description=text,
                blocking=True,
                partitions_def=spec.partitions_def,
                additional_deps=[raw_key, rejected_key],
            )
            for name, text in CHECKS.items()
        ],
        ins={  # datasets: the checks read only the columns and counts they need
            "clean": dg.AssetIn(key=clean_key),
            "raw": dg.AssetIn(key=raw_key),
            "rejected": dg.AssetIn(key=rejected_key),
        },
    )
    def check_clean(context: dg.AssetCheckExecutionContext, clean, raw, rejected):
        months = context.partition_keys if context.has_partition_key_range else [context.partition_key]
        stored = {
            name: value if isinstance(value, dict) else {months[0]: value}
            for name, value in (("clean", clean), ("raw", raw), ("rejected", rejected))
        }
        failures: dict[str, dict[str, str]] = {name: {} for name in CHECKS}
        for month in months:
            window = spec.partitions_def.time_window_for_partition_key(month)
            relaxed = _relaxed_rules(context.instance, clean_key, month)
            findings = month_findings(
                spec,
                stored["clean"][month],
                stored["raw"][month].count_rows(),
                stored["rejected"][month].count_rows(),
                window,
                relaxed,
            )
            for name, finding in findings.items():
                failures[name][month] = finding
        for name, by_month in failures.items():
            yield dg.AssetCheckResult(
                asset_key=clean_key,
                check_name=name,
                passed=not by_month,
                metadata={"months": ", ".join(months), **by_month},
            )

    return check_clean


def month_findings(
    spec: DatasetSpec,
    stored: ds.Dataset,
    raw_rows: int,
    rejected_rows: int,
    window: dg.TimeWindow,
    relaxed: set[str] | frozenset[str],
) -> dict[str, str]:
    """{check: what is wrong} for one stored month; empty when every check passes. A month without
    a clean row (every row rejected) passes when it is empty and balanced.

    Counted by the dataset with filters, so only the judged columns are read; a null fails "> 0"."""
    findings = {}
    clean_rows = stored.count_rows()
    if raw_rows != clean_rows + rejected_rows:
        findings["rows_balance"] = f"raw {raw_rows} != clean {clean_rows} + rejected {rejected_rows}"
    if not stored.schema.equals(spec.clean_schema):
        findings["schema_as_declared"] = f"stored {stored.schema}; declared {spec.clean_schema}"
        return findings
    breaking = {
        name: clean_rows - stored.count_rows(filter=ds.field(name) > 0)
        for name in spec.positive_columns
        if name not in relaxed
    }
    if any(breaking.values()):
        findings["rules_hold"] = f"rows breaking '> 0': { {k: v for k, v in breaking.items() if v} }"
    pickup, pickup_type = ds.field(spec.pickup), stored.schema.field(spec.pickup).type
    start = pa.scalar(window.start.replace(tzinfo=None), pickup_type)
    end = pa.scalar(window.end.replace(tzinfo=None), pickup_type)
    inside = stored.count_rows(filter=(pickup >= start) & (pickup < end))
    if inside != clean_rows:
        findings["pickups_in_month"] = f"{clean_rows - inside} pickups outside the month"
    repeated = clean_rows - len(stored.to_table(columns=[TRIP_KEY])[TRIP_KEY].unique())
    if repeated:
        findings["trip_key_unique"] = f"{repeated} repeated trip_key values"
    return findings


def _relaxed_rules(instance: dg.DagsterInstance, key: dg.AssetKey, month: str) -> set[str]:
    """The rules the month's latest clean materialization switched off."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[month]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    value = materialization.metadata.get(RELAXED_RULES) if materialization else None
    return set(filter(None, value.value.split(","))) if isinstance(value, dg.TextMetadataValue) else set()
