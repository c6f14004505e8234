"""The cleaning rules: pure functions from a month's raw table to its clean and rejected rows.

A raw row is rejected for the first rule it breaks, in this order:
1. `pickup_outside_month`: its pickup is missing or not inside the partition's month;
2. `<column>_not_positive`: for each of the dataset's positive columns (passenger_count and
   trip_distance for yellow and green, the course's rules), the value is missing or not > 0;
3. `duplicate_row`: an exact copy of an earlier row of the month (the first copy is kept); rows are
   compared by value, so two different rows whose trip_key collides are both kept (and the
   trip_key_unique check then fails).
"""

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from taxi_platform.datasets import DatasetSpec

PICKUP_OUTSIDE_MONTH = "pickup_outside_month"
DUPLICATE_ROW = "duplicate_row"
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)


def not_positive(column: str) -> str:
    return f"{column}_not_positive"


def reject_reasons(spec: DatasetSpec) -> list[str]:
    """Every reason a row of this dataset can be rejected for, in rule order."""
    return [PICKUP_OUTSIDE_MONTH, *map(not_positive, spec.positive_columns), DUPLICATE_ROW]


@dataclass(frozen=True)
class CleanMonth:
    clean: pa.Table
    rejected: pa.Table  # the clean columns plus reject_reason

    def rejected_by_reason(self, spec: DatasetSpec) -> dict[str, int]:
        counts = pc.value_counts(self.rejected["reject_reason"]).to_pylist()
        found = {c["values"]: c["counts"] for c in counts}
        return {reason: found.get(reason, 0) for reason in reject_reasons(spec)}


def to_clean_columns(raw: pa.Table, spec: DatasetSpec) -> pa.Table:
    """Rename to snake_case and cast to the clean types; columns the file lacks become nulls."""
    by_folded = {name.lower(): name for name in raw.column_names}
    columns = {}
    for c in spec.columns:
        source = by_folded.get(c.source.lower())
        columns[c.name] = (
            raw[source].cast(c.type) if source else pa.nulls(raw.num_rows, type=c.type)
        )
    return pa.table(columns)


def trip_key(table: pa.Table) -> pa.Array:
    """A 64-bit hash of every column of the row: trips carry no id, so all they record is the key.

    Stable across runs and source forms for the same typed values (pandas' fixed-key siphash).
    """
    combined = np.zeros(table.num_rows, dtype=np.uint64)
    for column in table.columns:
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        missing = column.is_null().to_numpy(zero_copy_only=False)
        filler = "" if pa.types.is_string(column.type) else 0
        values = pc.fill_null(column, filler).to_numpy(zero_copy_only=False)
        hashed = pd.util.hash_array(values, categorize=False)
        hashed[missing] = _NULL_HASH
        combined = combined * np.uint64(1_000_003) ^ hashed
    return pa.array(combined.view(np.int64))


def clean_month(
    raw: pa.Table,
    spec: DatasetSpec,
    month_start: datetime,
    month_end: datetime,
    relaxed: frozenset[str] = frozenset(),
) -> CleanMonth:
    """Apply the rules to one month; `relaxed` names positive columns whose rule is switched off."""
    unknown = relaxed - set(spec.positive_columns)
    if unknown:
        raise ValueError(
            f"{spec.name} has no rule on {sorted(unknown)}; its rules: {list(spec.positive_columns)}"
        )
    table = to_clean_columns(raw, spec)
    keys = trip_key(table)
    pickup = table[spec.pickup]
    table = table.append_column("trip_key", keys).append_column(
        "pickup_date", pickup.cast(pa.date32())
    )

    broken = [(PICKUP_OUTSIDE_MONTH, ~_in_month(pickup, month_start, month_end))]
    broken += [
        (not_positive(name), ~_positive(table[name]))
        for name in spec.positive_columns
        if name not in relaxed
    ]
    broken.append((DUPLICATE_ROW, _duplicated(table, keys)))

    reason = np.full(table.num_rows, None, dtype=object)
    for name, mask in reversed(broken):  # the first rule broken wins
        reason[mask] = name
    rejected_mask = pa.array(reason != None)  # noqa: E711 (element-wise)
    return CleanMonth(
        clean=table.filter(pc.invert(rejected_mask)),
        rejected=table.filter(rejected_mask).append_column(
            "reject_reason", pa.array(reason[reason != None], type=pa.string())  # noqa: E711
        ),
    )


def _duplicated(table: pa.Table, keys: pa.Array) -> np.ndarray:
    """Rows equal in every trip column to an earlier row; only rows sharing a trip_key are compared."""
    duplicated = np.zeros(table.num_rows, dtype=bool)
    candidates = np.flatnonzero(pd.Series(keys.to_numpy()).duplicated(keep=False).to_numpy())
    if len(candidates):
        trips = table.drop_columns(["trip_key", "pickup_date"]).take(candidates).to_pandas()
        duplicated[candidates] = trips.duplicated().to_numpy()
    return duplicated


def _in_month(pickup: pa.ChunkedArray, start: datetime, end: datetime) -> np.ndarray:
    inside = pc.and_(
        pc.greater_equal(pickup, pa.scalar(start, pickup.type)),
        pc.less(pickup, pa.scalar(end, pickup.type)),
    )
    return pc.fill_null(inside, False).to_numpy(zero_copy_only=False)


def _positive(values: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.greater(values, 0), False).to_numpy(zero_copy_only=False)
