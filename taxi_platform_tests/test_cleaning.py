"""The cleaning rules on small tables of the green schema."""

from datetime import datetime

import pyarrow as pa
import pytest

from taxi_platform.cleaning import MonthCleaner, rejected_schema, to_clean_columns
from taxi_platform.datasets import DATASETS
from taxi_platform_tests.helpers import clean_month, trip_key

pytestmark = pytest.mark.fast

GREEN = DATASETS["green"]
OCT, NOV = datetime(2020, 10, 1), datetime(2020, 11, 1)
PINNED_KEY = -1973929671006101875


def green_rows(*rows: dict) -> pa.Table:
    """Raw green rows as the CSV form types them; unspecified columns are null."""
    schema = GREEN.source_schema("csv")
    defaults = {"lpep_pickup_datetime": datetime(2020, 10, 5, 8), "passenger_count": 1, "trip_distance": 1.5}
    return pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=schema)


def test_each_row_gets_the_first_rule_it_breaks():
    raw = green_rows(
        {"fare_amount": 7.0},
        {"lpep_pickup_datetime": datetime(2020, 9, 30, 23, 59), "passenger_count": 0},
        {"lpep_pickup_datetime": None},
        {"passenger_count": 0, "trip_distance": 0.0},
        {"passenger_count": None},
        {"trip_distance": -1.0},
        {"fare_amount": 7.0},
    )
    result = clean_month(raw, GREEN, OCT, NOV)
    assert result.clean.num_rows == 1
    assert result.rejected["reject_reason"].to_pylist() == [
        "pickup_outside_month",
        "pickup_outside_month",
        "passenger_count_not_positive",
        "passenger_count_not_positive",
        "trip_distance_not_positive",
        "duplicate_row",
    ]
    assert result.rejected_counts == {
        "pickup_outside_month": 2,
        "passenger_count_not_positive": 2,
        "trip_distance_not_positive": 1,
        "duplicate_row": 1,
    }


def test_the_month_bounds_are_half_open():
    raw = green_rows(
        {"lpep_pickup_datetime": datetime(2020, 10, 1, 0, 0, 0)},
        {"lpep_pickup_datetime": datetime(2020, 11, 1, 0, 0, 0)},
    )
    result = clean_month(raw, GREEN, OCT, NOV)
    assert result.clean["pickup_date"].to_pylist() == [datetime(2020, 10, 1).date()]
    assert result.rejected["reject_reason"].to_pylist() == ["pickup_outside_month"]


def test_a_relaxed_rule_keeps_its_rows():
    raw = green_rows({"passenger_count": 0}, {"passenger_count": None, "trip_distance": 0.0})
    result = clean_month(raw, GREEN, OCT, NOV, relaxed=frozenset({"passenger_count"}))
    assert result.clean.num_rows == 1
    assert result.rejected["reject_reason"].to_pylist() == ["trip_distance_not_positive"]
    with pytest.raises(ValueError, match=r"green has no rule on \['tip_amount'\]"):
        clean_month(raw, GREEN, OCT, NOV, relaxed=frozenset({"tip_amount"}))


def test_clean_columns_are_snake_case_and_typed_whatever_the_source_form():
    row = {"VendorID": 2, "PULocationID": 7, "lpep_pickup_datetime": datetime(2020, 10, 5, 8)}
    from_csv = to_clean_columns(pa.Table.from_pylist([row], schema=GREEN.source_schema("csv")), GREEN)
    parquet_schema = GREEN.source_schema("parquet")
    from_parquet = to_clean_columns(
        pa.Table.from_pylist([{**row, "cbd_congestion_fee": None}], schema=parquet_schema), GREEN
    )
    assert from_csv.equals(from_parquet)
    assert from_csv.column_names[:4] == [
        "vendor_id",
        "lpep_pickup_datetime",
        "lpep_dropoff_datetime",
        "store_and_fwd_flag",
    ]
    assert from_csv.schema.field("pu_location_id").type == pa.int64()
    assert trip_key(from_csv).equals(trip_key(from_parquet))


def test_trip_key_tells_apart_rows_that_differ_in_any_column_or_in_nulls():
    raw = green_rows(
        {},
        {"fare_amount": 7.0},
        {"fare_amount": 0.0},
        {"store_and_fwd_flag": ""},
        {"store_and_fwd_flag": "N"},
    )
    keys = trip_key(to_clean_columns(raw, GREEN)).to_pylist()
    assert len(set(keys)) == 5
    assert keys == trip_key(to_clean_columns(raw, GREEN)).to_pylist()


def test_trip_key_values_are_pinned():
    """The Postgres and warehouse unique keys depend on trip_key staying the same across versions."""
    raw = green_rows({"VendorID": 2, "PULocationID": 7, "DOLocationID": 7, "fare_amount": 5.0})
    assert trip_key(to_clean_columns(raw, GREEN)).to_pylist() == [PINNED_KEY]


def test_duplicates_are_found_across_batches_and_rejected_rows_come_with_their_reason():
    cleaner = MonthCleaner(GREEN, OCT, NOV)
    first = green_rows({"fare_amount": 7.0}, {"fare_amount": 8.0}).to_batches()[0]
    second = green_rows({"fare_amount": 8.0}, {"fare_amount": 9.0}, {"fare_amount": 9.0}).to_batches()[0]
    (kept_first, rejected_first), (kept_second, rejected_second) = map(cleaner.split, (first, second))
    assert [t["fare_amount"].to_pylist() for t in (kept_first, kept_second)] == [[7.0, 8.0], [9.0]]
    assert rejected_first.num_rows == 0
    assert rejected_second["reject_reason"].to_pylist() == ["duplicate_row"] * 2
    assert rejected_second["fare_amount"].to_pylist() == [8.0, 9.0]
    assert rejected_second.schema.equals(rejected_schema(GREEN))
    assert (cleaner.raw_rows, cleaner.clean_rows, cleaner.rejected_counts["duplicate_row"]) == (5, 3, 2)


def test_a_trip_key_shared_by_different_rows_keeps_both_and_still_finds_their_copies():
    """Rows are told apart by trip_key and a check hash: a key collision loses no trip."""
    import numpy as np

    cleaner = MonthCleaner(GREEN, OCT, NOV)
    passing = np.ones(3, dtype=bool)
    keys = np.array([5, 5, 7], dtype=np.int64)
    hours = np.array([10, 10, 10])
    first = cleaner._duplicated(keys, np.array([1, 2, 3], dtype=np.uint64), passing, hours)
    again = cleaner._duplicated(keys, np.array([1, 2, 4], dtype=np.uint64), passing, hours)
    assert first.tolist() == [False, False, False]
    assert again.tolist() == [True, True, False]
