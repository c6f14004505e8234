"""The blocking checks of each clean month, judged on the staged files before they are published (write,
audit, publish: README.md, Reliability; what each checks: `CHECKS`).

The checks read the staged files back through the lake, with logic of their own. In a single-run
backfill of several months every month is judged and one result is reported per check. The ingest
asset declares them with `check_specs` and reports them with `check_results`.
"""

from collections.abc import Sequence

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from taxi_platform.datasets import TRIP_KEY, DatasetSpec

RELAXED_RULES = "relaxed_rules"  # clean materialization metadata: the positive rules switched off
CHECK_OUTCOMES = "checks"  # clean materialization metadata: "<check>=passed, ..." (the load ledger's)
SHRINK_GUARD = "no_sharp_shrink"  # the one check a rollback bypasses (it restores what was published)

CHECKS = {
    "has_rows": "The month has at least one clean row.",
    SHRINK_GUARD: "The month keeps at least the dataset's min_share_of_published of the clean rows "
    "of the month it replaces (run config allow_shrink lets one smaller month through).",
    "rows_balance": "Stored raw rows = stored clean rows + stored rejected rows: nothing is lost.",
    "rules_hold": "No stored clean row breaks a 'must be > 0' rule that was in force for its month.",
    "trip_key_unique": "trip_key is unique within each stored month.",
    "pickups_in_month": "Every stored clean pickup lies inside the partition's month.",
    "schema_as_declared": "The stored clean columns and types are exactly the dataset spec's.",
}


def check_specs(spec: DatasetSpec) -> list[dg.AssetCheckSpec]:
    """The blocking checks of the dataset's clean months, one per entry of CHECKS."""
    return [
        dg.AssetCheckSpec(
            name, asset=spec.clean_key, description=text, blocking=True, partitions_def=spec.partitions_def
        )
        for name, text in CHECKS.items()
    ]


def check_results(
    spec: DatasetSpec, months: Sequence[str], findings: dict[str, dict[str, str]]
) -> list[dg.AssetCheckResult]:
    """One result per check for the run's `months`; `findings`: {check: {month: what is wrong}}, a check
    without a month passed."""
    return [
        dg.AssetCheckResult(
            asset_key=spec.clean_key,
            check_name=name,
            passed=not findings.get(name),
            metadata={"months": ", ".join(months), **findings.get(name, {})},
        )
        for name in CHECKS
    ]


def month_findings(
    spec: DatasetSpec,
    stored: ds.Dataset,
    raw_rows: int,
    rejected_rows: int,
    window: dg.TimeWindow,
    relaxed: set[str] | frozenset[str],
) -> dict[str, str]:
    """{check: what is wrong} for one stored month's data; empty when every check passes.

    Counted by the dataset with filters, so only the judged columns are read; a null fails "> 0"."""
    findings = {}
    clean_rows = stored.count_rows()
    if not clean_rows:
        findings["has_rows"] = f"no clean row (of {raw_rows} raw rows)"
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
    repeated = _repeated_values(stored.to_table(columns=[TRIP_KEY])[TRIP_KEY])
    if repeated:
        findings["trip_key_unique"] = f"{repeated} repeated trip_key values"
    return findings


def _repeated_values(column: pa.ChunkedArray) -> int:
    """How many values of the column equal an earlier one (nulls equal each other). Sorted in place:
    memory holds the column twice, where a hash table of its values took several times that."""
    values = np.concatenate([chunk.drop_null().to_numpy() for chunk in column.chunks] or [np.empty(0)])
    values.sort()
    return int(np.count_nonzero(values[1:] == values[:-1])) + max(column.null_count - 1, 0)


def volume_findings(clean_rows: int, published_rows: int | None, min_share: float) -> dict[str, str]:
    """{SHRINK_GUARD: what is wrong} when a month would replace a published one with fewer than
    `min_share` of its clean rows; empty otherwise (or when nothing is published yet)."""
    if published_rows and clean_rows < min_share * published_rows:
        return {
            SHRINK_GUARD: f"{clean_rows} clean rows would replace {published_rows} "
            f"({clean_rows / published_rows:.0%}, below {min_share:.0%})"
        }
    return {}
