"""The anomaly checks: the rule on plain numbers, then the checks on months materialized for real
(test source server, lake, one Dagster instance that accumulates their history)."""

import gzip
import statistics

import dagster as dg
import pytest

from synthetic.months import FREQUENT, write_source_month
from taxi_platform.checks.anomalies import (
    ANOMALY_CHECKS,
    MAD_TO_SIGMA,
    MIN_HISTORY,
    MIN_SHARE_SPREAD,
    ROWS_CHECK,
    SHARE_CHECK,
    TRAILING_MONTHS,
    K,
    build_anomaly_checks,
    judge,
    month_figures,
    trailing_months,
)
from taxi_platform.datasets import DATASETS
from taxi_platform_tests.conftest import month_rows
from taxi_platform_tests.helpers import (
    course_counts,
    green_trip_keys,
    gzip_csv,
    materialize_with,
)

pytestmark = pytest.mark.fast

GREEN = DATASETS["green"]
HISTORY = [100_000, 102_000, 98_000, 101_000, 99_500, 100_500]


def test_a_usual_month_passes_with_its_figures():
    judged = judge(103_000, HISTORY)
    median = statistics.median(HISTORY)
    mad = statistics.median(abs(x - median) for x in HISTORY)
    assert (judged.median, judged.mad, judged.months_compared) == (median, mad, len(HISTORY))
    assert judged.lower_bound == pytest.approx(median - K * MAD_TO_SIGMA * mad)
    assert judged.upper_bound == pytest.approx(median + K * MAD_TO_SIGMA * mad)
    assert not judged.outside and judged.note == "within the usual range"


def test_a_tenfold_month_is_outside_above():
    judged = judge(1_000_000, HISTORY)
    assert judged.outside and judged.note == "above the usual range"


def test_a_half_empty_month_is_outside_below():
    judged = judge(50_000, HISTORY)
    assert judged.outside and judged.note == "below the usual range"


def test_too_little_history_passes_with_a_note():
    judged = judge(1_000_000, HISTORY[: MIN_HISTORY - 1])
    assert not judged.outside
    assert judged.note == f"too little history: {MIN_HISTORY - 1} months, {MIN_HISTORY} needed"
    assert (judged.median, judged.lower_bound, judged.upper_bound) == (None, None, None)


def test_a_constant_history_allows_a_small_share_of_its_median_not_nothing():
    """MAD 0 would make any change anomalous; the spread is floored at 1% of the median."""
    constant = [1_000] * 6
    assert judge(1_000, constant).mad == 0
    assert (judge(1_000, constant).lower_bound, judge(1_000, constant).upper_bound) == (950, 1050)
    assert not judge(1_040, constant).outside and not judge(960, constant).outside
    assert judge(1_060, constant).outside and judge(940, constant).outside


def test_the_rejected_share_is_judged_on_one_side_with_a_floor():
    shares = [0.05, 0.052, 0.049, 0.051]
    assert judge(0.0, shares, upper_only=True).lower_bound is None
    assert not judge(0.0, shares, upper_only=True).outside  # fewer rejects is no anomaly
    assert judge(0.30, shares, upper_only=True).outside
    never_rejected = [0.0, 0.0, 0.0]
    floor = K * MIN_SHARE_SPREAD
    assert not judge(floor * 0.9, never_rejected, upper_only=True, min_spread=MIN_SHARE_SPREAD).outside
    assert judge(floor * 1.1, never_rejected, upper_only=True, min_spread=MIN_SHARE_SPREAD).outside


def test_the_history_is_the_last_present_months_before_the_month():
    present = [f"{year}-{month:02d}" for year in (2019, 2020) for month in range(1, 13)]
    present.remove("2020-05")  # a gap: the month before it counts instead
    assert trailing_months("2020-06", present) == [*present[4:16]]
    assert len(trailing_months("2020-06", present)) == TRAILING_MONTHS
    assert trailing_months("2019-03", present) == ["2019-01", "2019-02"]


def test_figures_come_from_the_clean_metadata():
    counts = {"dagster/row_count": 90, "raw_rows": 100, "rejected_rows": 10}
    metadata = {name: dg.MetadataValue.int(n) for name, n in counts.items()}
    figures = month_figures(metadata)
    assert figures is not None and (figures.clean_rows, figures.rejected_share) == (90, 0.1)
    assert month_figures({"dagster/row_count": metadata["dagster/row_count"]}) is None
    assert month_figures({**metadata, "raw_rows": dg.MetadataValue.int(0)}) is None


# --------------------------------------------------------------------------------------------------
# Materialized for real


def materialize_checked(instance, partition=None, months=None):
    """The green ingest with the anomaly checks, on `instance`, for a month or a range in one run."""
    return materialize_with(
        instance,
        *green_trip_keys(),
        partition=partition,
        months=months,
        checks=(build_anomaly_checks(GREEN),),
    )


def anomaly_results(result) -> dict[str, dg.AssetCheckEvaluation]:
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(ANOMALY_CHECKS) <= set(evaluations)
    return {name: evaluations[name] for name in ANOMALY_CHECKS}


def figures(evaluation: dg.AssetCheckEvaluation, month: str) -> dict:
    """A month's figures in a check result's metadata."""
    return evaluation.metadata[month].value  # pyright: ignore[reportReturnType]


def expected(path, month: str) -> tuple[int, float]:
    """(clean rows, rejected share) of a served month's file, computed with pandas (the course's rules)."""
    counts = course_counts(path, month)
    return counts["clean"], (counts["raw"] - counts["clean"]) / counts["raw"]


def served_month(month: str, rows: int, tmp_path) -> list[str]:
    """The lines of a synthetic green release month of `rows` rows."""
    path = write_source_month(tmp_path, GREEN, month, rows, forms=("csv",), quirks=FREQUENT)["csv"]
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def test_months_far_from_their_history_warn_with_their_figures(
    taxi_env, published, publish, tmp_path, instance
):
    history: dict[str, tuple[int, float]] = {}

    # A single-run backfill of four months: the first three have too little history.
    backfill = materialize_checked(instance, months=("2020-04", "2020-07"))
    for month in ("2020-04", "2020-05", "2020-06", "2020-07"):
        history[month] = expected(published / f"releases/green/green_tripdata_{month}.csv.gz", month)
    for name, evaluation in anomaly_results(backfill).items():
        assert evaluation.passed and evaluation.partition is None, name
        assert evaluation.metadata["months"].value == "2020-04, 2020-05, 2020-06, 2020-07"
        assert [figures(evaluation, m)["note"] for m in ("2020-04", "2020-05", "2020-06")] == [
            f"too little history: {n} months, {MIN_HISTORY} needed" for n in range(3)
        ]
        july = figures(evaluation, "2020-07")
        assert (july["months_compared"], july["compared"], july["outside"]) == (3, "2020-04..2020-06", False)

    # Ten times the usual rows: the rows check warns, the run succeeds, the share is usual.
    tenfold_lines = served_month("2020-08", 10 * month_rows("2020-08"), tmp_path)
    tenfold_file = publish(
        "releases/green/green_tripdata_2020-08.csv.gz", gzip_csv("\n".join(tenfold_lines) + "\n")
    )
    tenfold = materialize_checked(instance, partition="2020-08")
    assert tenfold.success
    rows, share = anomaly_results(tenfold)[ROWS_CHECK], anomaly_results(tenfold)[SHARE_CHECK]
    history["2020-08"] = expected(tenfold_file, "2020-08")
    clean_rows = history["2020-08"][0]
    august = figures(rows, "2020-08")
    assert not rows.passed and rows.severity == dg.AssetCheckSeverity.WARN and rows.partition == "2020-08"
    assert august["value"] == clean_rows > august["upper_bound"]
    assert august["median"] == statistics.median(
        history[m][0] for m in ("2020-04", "2020-05", "2020-06", "2020-07")
    )
    assert august["months_compared"] == 4 and august["compared"] == "2020-04..2020-07"
    assert august["note"] == "above the usual range"
    assert f"green 2020-08: {clean_rows:,} clean rows, above the usual range" in (rows.description or "")
    assert share.passed and share.metadata["months_outside"].value == "none"

    # Two rows in three with trip_distance 0: the rejected share warns, and the clean rows fall below.
    header, *lines = served_month("2020-09", month_rows("2020-09"), tmp_path)
    distance = header.split(",").index("trip_distance")
    zeroed = [
        ",".join("0" if i == distance else v for i, v in enumerate(line.split(","))) if n % 3 else line
        for n, line in enumerate(lines)
    ]
    zeroed_file = publish(
        "releases/green/green_tripdata_2020-09.csv.gz", gzip_csv("\n".join([header, *zeroed]) + "\n")
    )
    halved = materialize_checked(instance, partition="2020-09")
    rows, share = anomaly_results(halved)[ROWS_CHECK], anomaly_results(halved)[SHARE_CHECK]
    september_rows, september_share = expected(zeroed_file, "2020-09")
    september = figures(share, "2020-09")
    assert not share.passed and share.severity == dg.AssetCheckSeverity.WARN
    assert september["value"] == pytest.approx(september_share) and september_share > 0.5
    assert september["median"] == pytest.approx(statistics.median(s for _, s in history.values()))
    assert september["lower_bound"] is None and september["value"] > september["upper_bound"]
    assert september["months_compared"] == 5 and share.metadata["months_outside"].value == "2020-09"
    assert not rows.passed and figures(rows, "2020-09")["note"] == "below the usual range"
    assert figures(rows, "2020-09")["value"] == september_rows
