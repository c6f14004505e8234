"""The cleaning rules: a month's raw rows, batch by batch, to its clean and rejected rows.

A raw row is rejected for the first rule it breaks, in this order:
1. `pickup_outside_month`: its pickup is missing or not inside the partition's month;
2. `<column>_not_positive`: for each of the dataset's positive columns (passenger_count and
   trip_distance for yellow and green, the course's rules), the value is missing or not > 0;
3. `duplicate_row`: an exact copy of an earlier row of the month (the first copy is kept). Rows are
   compared by two independent 64-bit hashes of all their values (trip_key and a check hash), so a
   month streams through in bounded memory; two different rows whose trip_key alone collides are
   both kept (and the trip_key_unique check then fails).
"""

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from taxi_platform.datasets import PICKUP_DATE, TRIP_KEY, DatasetSpec

PICKUP_OUTSIDE_MONTH = "pickup_outside_month"
DUPLICATE_ROW = "duplicate_row"
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_CHECK_FACTOR = np.uint64(0xBF58476D1CE4E5B9)  # odd: multiplying by it loses nothing
_NO_KEYS, _NO_CHECKS = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
_HOUR_US = 3_600_000_000


def not_positive(column: str) -> str:
    return f"{column}_not_positive"


def rejected_schema(spec: DatasetSpec) -> pa.Schema:
    """The clean columns plus reject_reason."""
    return spec.clean_schema.append(pa.field("reject_reason", pa.string()))


def reject_reasons(spec: DatasetSpec) -> list[str]:
    """Every reason a row of this dataset can be rejected for, in rule order."""
    return [PICKUP_OUTSIDE_MONTH, *map(not_positive, spec.positive_columns), DUPLICATE_ROW]


class MonthCleaner:
    """Splits one month's raw batches, in order, into clean and rejected rows; remembers the month's
    kept rows to find duplicates across batches."""

    def __init__(
        self,
        spec: DatasetSpec,
        month_start: datetime,
        month_end: datetime,
        relaxed: frozenset[str] = frozenset(),
    ):
        unknown = relaxed - set(spec.positive_columns)
        if unknown:
            raise ValueError(
                f"{spec.name} has no rule on {sorted(unknown)}; its rules: {list(spec.positive_columns)}"
            )
        self.spec, self.start, self.end, self.relaxed = spec, month_start, month_end, relaxed
        self.raw_rows = self.clean_rows = 0
        self.rejected_counts = dict.fromkeys(reject_reasons(spec), 0)
        self._seen = _SeenRows()

    def split(self, raw: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """The batch's clean rows, and its rejected rows with their reject_reason."""
        table = to_clean_columns(raw, self.spec)
        keys, checks = row_hashes(table)
        pickup = table[self.spec.pickup]
        table = table.append_column(TRIP_KEY, pa.array(keys)).append_column(
            PICKUP_DATE, pickup.cast(pa.date32())
        )
        broken = [(PICKUP_OUTSIDE_MONTH, ~_in_month(pickup, self.start, self.end))]
        broken += [
            (not_positive(name), ~_positive(table[name]))
            for name in self.spec.positive_columns
            if name not in self.relaxed
        ]
        reason = np.full(table.num_rows, None, dtype=object)
        for name, mask in reversed(broken):  # the first rule broken wins
            reason[mask] = name
        passing = reason == None  # noqa: E711 (element-wise)
        hours = pc.fill_null(pickup.cast(pa.timestamp("us")).cast(pa.int64()), 0).to_numpy() // _HOUR_US
        reason[self._duplicated(keys, checks, passing, hours)] = DUPLICATE_ROW
        rejected_mask = reason != None  # noqa: E711
        self.raw_rows += table.num_rows
        reasons = pa.array(reason[rejected_mask], type=pa.string())
        for count in reasons.value_counts().to_pylist():
            self.rejected_counts[count["values"]] += count["counts"]
        rejected = table.filter(pa.array(rejected_mask)).append_column("reject_reason", reasons)
        clean = table.filter(pa.array(~rejected_mask))
        self.clean_rows += clean.num_rows
        return clean, rejected

    @property
    def rejected_rows(self) -> int:
        return sum(self.rejected_counts.values())

    def _duplicated(
        self, keys: np.ndarray, checks: np.ndarray, passing: np.ndarray, hours: np.ndarray
    ) -> np.ndarray:
        """Passing rows equal to a passing row seen before (in this batch or an earlier one)."""
        rows = np.flatnonzero(passing)
        order = np.lexsort((checks[rows], keys[rows], hours[rows]))  # stable: equal rows keep their order
        hour, key, check = hours[rows][order], keys[rows][order], checks[rows][order]
        duplicated = np.zeros(len(key), dtype=bool)
        duplicated[1:] = (key[1:] == key[:-1]) & (check[1:] == check[:-1])  # (copies share the hour)
        starts = np.flatnonzero(np.diff(hour, prepend=hour[:1] - 1))
        for start, stop in zip(starts, [*starts[1:], len(hour)], strict=False):  # none if no row passes
            first = start + np.flatnonzero(~duplicated[start:stop])  # the hour's first copies
            duplicated[first] = self._seen.add_new(int(hour[start]), key[first], check[first])
        mask = np.zeros(len(keys), dtype=bool)
        mask[rows[order[duplicated]]] = True
        return mask


class _SeenRows:
    """The (trip_key, check) pairs of the rows kept so far, one sorted pair of arrays per pickup hour:
    copies of a row share its pickup, and the TLC's files come roughly in pickup order, so a batch
    searches and extends a few small arrays. (One sorted array for the month, extended by every
    batch, copied the whole month each time: 36-67 s of cleaning a 20M-row month.)"""

    def __init__(self):
        self.hours: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add_new(self, hour: int, keys: np.ndarray, checks: np.ndarray) -> np.ndarray:
        """Which of the hour's pairs (sorted by key) were added before; the others are added."""
        seen_keys, seen_checks = self.hours.get(hour, (_NO_KEYS, _NO_CHECKS))
        at = np.searchsorted(seen_keys, keys)  # sorted needles: a sequential walk
        upto = np.searchsorted(seen_keys, keys, side="right")
        seen = np.zeros(len(keys), dtype=bool)
        once = np.flatnonzero(upto - at == 1)
        seen[once] = seen_checks[at[once]] == checks[once]
        for i in np.flatnonzero(upto - at > 1):  # a trip_key that different rows share: rare
            seen[i] = checks[i] in seen_checks[at[i] : upto[i]]
        new = ~seen
        self.hours[hour] = (
            np.insert(seen_keys, at[new], keys[new]),
            np.insert(seen_checks, at[new], checks[new]),
        )
        return seen


def to_clean_columns(raw: pa.Table | pa.RecordBatch, spec: DatasetSpec) -> pa.Table | pa.RecordBatch:
    """Rename to snake_case and cast to the clean types; columns the file lacks become nulls."""
    by_folded = {name.lower(): name for name in raw.column_names}
    columns = {}
    for c in spec.columns:
        source = by_folded.get(c.source.lower())
        columns[c.name] = raw[source].cast(c.type) if source else pa.nulls(raw.num_rows, type=c.type)
    return pa.record_batch(columns) if isinstance(raw, pa.RecordBatch) else pa.table(columns)


def row_hashes(table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """Each row's trip_key, and a check hash combining the same column hashes another way.

    trip_key is a 64-bit hash of every column of the row: trips carry no id, so all they record is the
    key. Stable across runs and source forms for the same typed values (pandas' fixed-key siphash)."""
    combined = np.zeros(table.num_rows, dtype=np.uint64)
    check = np.zeros(table.num_rows, dtype=np.uint64)
    for position, column in enumerate(table.columns, start=1):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        missing = column.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_string(column.type):  # each distinct string hashed once: 10x faster
            codes = pc.dictionary_encode(pc.fill_null(column, ""))  # pyright: ignore[reportAttributeAccessIssue]
            hashed = _hash(codes.dictionary.to_numpy(zero_copy_only=False))[codes.indices.to_numpy()]
        else:
            hashed = _hash(pc.fill_null(column, 0).to_numpy(zero_copy_only=False))
        hashed[missing] = _NULL_HASH
        combined = combined * np.uint64(1_000_003) ^ hashed
        check += (hashed ^ np.uint64(position)) * _CHECK_FACTOR
    return combined.view(np.int64), check


def _hash(values: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(values, categorize=False)  # pyright: ignore[reportAttributeAccessIssue]  (pandas.util exports it lazily)


def _in_month(pickup: pa.ChunkedArray, start: datetime, end: datetime) -> np.ndarray:
    # pyarrow.compute defines its kernels at import, out of pyright's sight (here and in _positive).
    inside = pc.and_(  # pyright: ignore[reportAttributeAccessIssue]
        pc.greater_equal(pickup, pa.scalar(start, pickup.type)),  # pyright: ignore[reportAttributeAccessIssue]
        pc.less(pickup, pa.scalar(end, pickup.type)),  # pyright: ignore[reportAttributeAccessIssue]
    )
    return pc.fill_null(inside, False).to_numpy(zero_copy_only=False)


def _positive(values: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.greater(values, 0), False).to_numpy(zero_copy_only=False)  # pyright: ignore[reportAttributeAccessIssue]
