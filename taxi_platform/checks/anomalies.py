"""The anomaly checks of each clean month: WARN, never blocking (what they flag and what to do:
README.md, Operating > Checks).

They judge the figures the ingest step recorded rather than the data: the metadata of each month's
latest materialization, read from the Dagster instance, so a check costs milliseconds. In a single-run
backfill of several months every month is judged and one result is reported per check.
"""

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import dagster as dg

from taxi_platform.datasets import DatasetSpec

K = 5.0  # how many scaled MADs from the median a month may lie
MAD_TO_SIGMA = 1.4826  # the MAD of normal data times this is its standard deviation
TRAILING_MONTHS = 12  # the present months before a month that it is compared with
MIN_HISTORY = 3  # fewer present months before it: the month passes, with a note
# The spread never falls below this share of the median: a constant history (MAD 0) still allows
# K × 1% of its median either side, so months of exactly equal rows do not flag the next one.
MIN_RELATIVE_SPREAD = 0.01
# The rejected share's spread never falls below this (a share): a history without a rejected row
# still allows a share of K × 0.2 = 1 percentage point.
MIN_SHARE_SPREAD = 0.002

ROWS_CHECK, SHARE_CHECK = "rows_in_usual_range", "rejected_share_usual"
ANOMALY_CHECKS = {
    ROWS_CHECK: f"WARN, not blocking: the month's clean rows lie within median ± {K:g}·MAD of the clean "
    f"rows of the last {TRAILING_MONTHS} materialized months before it (with fewer than {MIN_HISTORY}, "
    "it passes with the note 'too little history').",
    SHARE_CHECK: f"WARN, not blocking: the month's rejected share (rejected_rows / raw_rows) is not above "
    f"median + {K:g}·MAD of the shares of the last {TRAILING_MONTHS} materialized months before it "
    f"(with fewer than {MIN_HISTORY}, it passes with the note 'too little history').",
}


@dataclass(frozen=True)
class Judgement:
    """A month's value against its history: the figures a check reports."""

    value: float
    median: float | None
    mad: float | None  # unscaled median absolute deviation
    lower_bound: float | None  # None: no lower bound (one-sided) or too little history
    upper_bound: float | None
    months_compared: int
    outside: bool
    note: str


def judge(
    value: float, history: Sequence[float], *, upper_only: bool = False, min_spread: float = 0.0
) -> Judgement:
    """`value` against `history` by median ± K·MAD·MAD_TO_SIGMA; `upper_only`: only a value above
    is outside. The spread is at least MIN_RELATIVE_SPREAD of the median and at least `min_spread`."""
    if len(history) < MIN_HISTORY:
        note = f"too little history: {len(history)} months, {MIN_HISTORY} needed"
        return Judgement(value, None, None, None, None, len(history), False, note)
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    spread = max(MAD_TO_SIGMA * mad, MIN_RELATIVE_SPREAD * abs(median), min_spread)
    lower = None if upper_only else median - K * spread
    upper = median + K * spread
    if value > upper:
        outside, note = True, "above the usual range"
    elif lower is not None and value < lower:
        outside, note = True, "below the usual range"
    else:
        outside, note = False, "within the usual range"
    return Judgement(value, median, mad, lower, upper, len(history), outside, note)


def trailing_months(month: str, present: Sequence[str]) -> list[str]:
    """The last TRAILING_MONTHS of the `present` months (YYYY-MM) before `month`, oldest first."""
    return sorted(m for m in present if m < month)[-TRAILING_MONTHS:]


@dataclass(frozen=True)
class MonthFigures:
    """What a month's clean materialization recorded."""

    clean_rows: int
    rejected_share: float  # rejected_rows / raw_rows


def month_figures(metadata: Mapping[str, dg.MetadataValue]) -> MonthFigures | None:
    """The figures of a clean materialization's metadata; None when it lacks them or has no raw row
    (such a month fails has_rows, so it is never published)."""
    clean, raw, rejected = (
        _count(metadata, name) for name in ("dagster/row_count", "raw_rows", "rejected_rows")
    )
    if clean is None or rejected is None or not raw:
        return None
    return MonthFigures(clean, rejected / raw)


def _count(metadata: Mapping[str, dg.MetadataValue], name: str) -> int | None:
    value = metadata.get(name)
    return value.value if isinstance(value, dg.IntMetadataValue) else None


def build_anomaly_checks(spec: DatasetSpec) -> dg.AssetChecksDefinition:
    """rows_in_usual_range and rejected_share_usual (see ANOMALY_CHECKS) on clean/<dataset>_trips,
    partitioned like it; a run's months each judged against their trailing months."""
    clean_key = spec.clean_key

    @dg.multi_asset_check(
        name=f"anomalies_{spec.table}",
        specs=[
            dg.AssetCheckSpec(name, asset=clean_key, description=text, partitions_def=spec.partitions_def)
            for name, text in ANOMALY_CHECKS.items()
        ],
        can_subset=True,
    )
    def anomalies(context: dg.AssetCheckExecutionContext):
        figures = _latest_figures(context.instance, clean_key)
        by_check: dict[str, dict[str, dict]] = {ROWS_CHECK: {}, SHARE_CHECK: {}}
        outside: dict[str, dict[str, Judgement]] = {ROWS_CHECK: {}, SHARE_CHECK: {}}
        for month in context.partition_keys:
            current = figures.get(month)
            if current is None:
                for by_month in by_check.values():
                    by_month[month] = {"note": "no figures recorded for the month"}
                continue
            compared = trailing_months(month, list(figures))
            judgements = {
                ROWS_CHECK: judge(current.clean_rows, [figures[m].clean_rows for m in compared]),
                SHARE_CHECK: judge(
                    current.rejected_share,
                    [figures[m].rejected_share for m in compared],
                    upper_only=True,
                    min_spread=MIN_SHARE_SPREAD,
                ),
            }
            span = f"{compared[0]}..{compared[-1]}" if compared else "none"
            for name, judgement in judgements.items():
                by_check[name][month] = {**asdict(judgement), "compared": span}
                if judgement.outside:
                    outside[name][month] = judgement
        selected = {key.name for key in context.selected_asset_check_keys}
        for name in ANOMALY_CHECKS:
            if name in selected:
                yield _result(spec, clean_key, name, context.partition_keys, by_check[name], outside[name])

    return anomalies


def _latest_figures(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, MonthFigures]:
    """{month: figures} of each materialized month's latest materialization (months lacking them left out)."""
    latest = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    figures = {}
    for record in records:
        materialization = record.asset_materialization
        found = month_figures(materialization.metadata) if materialization else None
        if found is not None and record.partition_key is not None:
            figures[record.partition_key] = found
    return figures


def _result(
    spec: DatasetSpec,
    key: dg.AssetKey,
    name: str,
    months: Sequence[str],
    by_month: Mapping[str, dict],
    outside: Mapping[str, Judgement],
) -> dg.AssetCheckResult:
    """One check's result over the run's months, with each month's figures: a WARN failure when a
    month is outside its usual range."""
    if outside:
        description = "; ".join(f"{spec.name} {m}: {_in_words(name, j)}" for m, j in outside.items())
    else:
        description = f"{spec.name} {', '.join(months)}: no month outside its usual range"
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=name,
        passed=not outside,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "months": ", ".join(months),
            "months_outside": ", ".join(outside) or "none",
            **{month: dg.MetadataValue.json(figures) for month, figures in by_month.items()},
        },
    )


def _in_words(name: str, j: Judgement) -> str:
    """A flagged month's figures in words (the result's description, which alerts quote)."""
    if name == SHARE_CHECK:
        return (
            f"rejected share {j.value:.2%} {j.note} (median {j.median:.2%}, unusual above "
            f"{j.upper_bound:.2%}; {j.months_compared} months compared)"
        )
    return (
        f"{j.value:,.0f} clean rows, {j.note} {j.lower_bound:,.0f}..{j.upper_bound:,.0f} "
        f"(median {j.median:,.0f}, MAD {j.mad:,.0f}; {j.months_compared} months compared)"
    )
