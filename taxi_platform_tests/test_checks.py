"""The clean month checks' logic (`month_findings`) on small stored months, one finding at a time."""

from datetime import datetime

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from synthetic.months import Quirks, source_table
from taxi_platform.checks.blocking import month_findings, volume_findings
from taxi_platform.datasets import DATASETS
from taxi_platform_tests.helpers import clean_month

pytestmark = pytest.mark.fast

GREEN = DATASETS["green"]
OCTOBER = GREEN.partitions_def.time_window_for_partition_key("2020-10")
RAW_ROWS = 200


@pytest.fixture(scope="module")
def cleaned():
    """A green October 2020 cleaned: (clean table, rejected row count)."""
    raw = source_table(
        GREEN, "2020-10", RAW_ROWS, form="csv", quirks=Quirks(out_of_month=0.02, duplicates=0.02)
    )
    month = clean_month(raw, GREEN, datetime(2020, 10, 1), datetime(2020, 11, 1))
    assert month.clean.num_rows + month.rejected.num_rows == RAW_ROWS
    return month.clean, month.rejected.num_rows


def findings(table: pa.Table, rejected: int, raw: int = RAW_ROWS, relaxed=frozenset()) -> dict[str, str]:
    return month_findings(GREEN, ds.dataset(table), raw, rejected, OCTOBER, relaxed)


def with_values(table: pa.Table, column: str, values: dict[int, object]) -> pa.Table:
    """The table with some cells of a column replaced: {row: value}."""
    cells = table[column].to_pylist()
    for row, value in values.items():
        cells[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(cells, table.schema.field(column).type))


def test_a_month_as_cleaned_passes_every_check(cleaned):
    clean, rejected = cleaned
    assert clean.num_rows > 100 and rejected > 0
    assert findings(clean, rejected) == {}


def test_a_month_without_a_clean_row_fails_has_rows_even_when_balanced(cleaned):
    empty = cleaned[0].slice(0, 0)
    assert findings(empty, rejected=RAW_ROWS) == {"has_rows": f"no clean row (of {RAW_ROWS} raw rows)"}
    assert findings(empty, rejected=RAW_ROWS - 1) == {
        "has_rows": f"no clean row (of {RAW_ROWS} raw rows)",
        "rows_balance": f"raw {RAW_ROWS} != clean 0 + rejected 199",
    }


@pytest.mark.parametrize(
    ("clean_rows", "published_rows", "min_share", "finding"),
    [
        (100, None, 0.5, None),  # nothing published yet
        (50, 100, 0.5, None),  # exactly half is kept
        (49, 100, 0.5, "49 clean rows would replace 100 (49%, below 50%)"),
        (10, 100, 0.0, None),  # allow_shrink
        (0, 100, 0.5, "0 clean rows would replace 100 (0%, below 50%)"),
    ],
)
def test_a_sharp_shrink_of_the_published_month_is_found(clean_rows, published_rows, min_share, finding):
    expected = {"no_sharp_shrink": finding} if finding else {}
    assert volume_findings(clean_rows, published_rows, min_share) == expected


def test_rows_lost_or_added_break_the_balance(cleaned):
    clean, rejected = cleaned
    assert findings(clean.slice(1), rejected) == {
        "rows_balance": f"raw {RAW_ROWS} != clean {clean.num_rows - 1} + rejected {rejected}"
    }


def test_pickups_outside_the_half_open_month_are_found(cleaned):
    clean, rejected = cleaned
    moved = with_values(
        clean,
        "lpep_pickup_datetime",
        {0: datetime(2020, 9, 30, 23, 59, 59), 1: datetime(2020, 11, 1), 2: datetime(2020, 10, 1)},
    )
    assert findings(moved, rejected) == {"pickups_in_month": "2 pickups outside the month"}


def test_rows_breaking_a_rule_in_force_are_found_and_a_relaxed_rule_is_not_judged(cleaned):
    clean, rejected = cleaned
    broken = with_values(clean, "passenger_count", {0: 0, 1: None})
    broken = with_values(broken, "trip_distance", {2: -0.5})
    assert findings(broken, rejected) == {
        "rules_hold": "rows breaking '> 0': {'passenger_count': 2, 'trip_distance': 1}"
    }
    assert findings(broken, rejected, relaxed={"passenger_count"}) == {
        "rules_hold": "rows breaking '> 0': {'trip_distance': 1}"
    }


def test_a_repeated_trip_key_is_found(cleaned):
    clean, rejected = cleaned
    repeated = with_values(
        clean, "trip_key", {1: clean["trip_key"][0].as_py(), 3: clean["trip_key"][2].as_py()}
    )
    assert findings(repeated, rejected) == {"trip_key_unique": "2 repeated trip_key values"}


def test_a_schema_other_than_declared_is_found_and_judged_no_further(cleaned):
    clean, rejected = cleaned
    finding = findings(with_values(clean.drop_columns(["tip_amount"]), "passenger_count", {0: 0}), rejected)
    assert list(finding) == ["schema_as_declared"]
    assert (
        finding["schema_as_declared"].startswith("stored ") and "tip_amount" in finding["schema_as_declared"]
    )
    retyped = clean.set_column(
        clean.schema.get_field_index("vendor_id"), "vendor_id", clean["vendor_id"].cast(pa.int32())
    )
    assert list(findings(retyped, rejected)) == ["schema_as_declared"]
