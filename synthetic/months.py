"""Synthetic TLC months for the tests and the benchmarks: the real schemas and quirks, reproducible from a seed.

    python -m synthetic.months --dataset yellow --month 2021-01 --rows 1400000 --out /tmp/src

Two kinds of data:
- `source_table(spec, month, rows, seed, form)`: a month as the TLC publishes it, with the original
  column names (`VendorID`, fhv's `PUlocationID`, `dropOff_datetime`, `SR_Flag`, ...) and the types the
  form declares in `taxi_platform/datasets.py` (`spec.source_schema(form)`); `write_source_month`
  writes it laid out like the sources, so a `SourceServer` (synthetic/source_server.py) can
  serve it to the platform:
      <root>/releases/<ds>/<ds>_tripdata_YYYY-MM.csv.gz   (the course's CSV.gz releases)
      <root>/trip-data/<ds>_tripdata_YYYY-MM.parquet      (the TLC's parquet)
      <root>/misc/taxi_zone_lookup.csv
  The quirks of the real files: rows sorted by pickup; whole-second pickups; about 7% of yellow/green
  rows with vendor, passenger count, rate code, flag and payment type blank (the "no meter" rows);
  passenger_count 0 and trip_distance 0 on a few percent; blank fhv location ids (most of them);
  a few pickups outside the month (previous month, next month, 2008/2009 like the real strays); a few
  exact duplicate rows next to their original. CSV: unquoted, blank = null, header as the real files.
- `synthetic_yellow(rows, seed)`: a yellow 2021-01 month already in the clean schema (with trip_key and
  pickup_date), for the Postgres load benchmark.

Files are cached under `cache_root()` by (dataset, month, rows, seed, form), since a 7.5M-row CSV.gz
takes a minute to write.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from taxi_platform.datasets import DATASETS, DatasetSpec

DEFAULT_SEED = 2021


@dataclass(frozen=True)
class Quirks:
    """How often the real files' oddities occur (shares of rows)."""

    out_of_month: float = 0.0002  # pickups outside the month (real yellow 2021-01: ~0.01-0.03%)
    duplicates: float = 0.00005  # exact copies of the row before


REAL = Quirks()
# Small test months see every reject reason: more strays and copies than the real files have.
FREQUENT = Quirks(out_of_month=0.004, duplicates=0.003)
NO_METER = 0.072  # yellow/green rows with vendor, passenger_count, ratecode, flag, payment blank
BOROUGHS = ("Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island", "EWR")
# 265 zones like the TLC's: boroughs by id, and the last rows' literal "NV", "NA" and "N/A" text.
ZONES_CSV = (
    '"LocationID","Borough","Zone","service_zone"\n'
    + "".join(f'{i},"{BOROUGHS[i % len(BOROUGHS)]}","Zone {i}","Boro Zone"\n' for i in range(1, 264))
    + '264,"Unknown","NV","N/A"\n265,"Unknown","NA","N/A"\n'
)
# Real TLC parquet spellings where they differ from the spec's (matched case-insensitively).
PARQUET_NAMES = {("yellow", "airport_fee"): "Airport_fee"}


def cache_root() -> Path:
    return Path(os.environ.get("TAXI_BENCH_CACHE") or Path(tempfile.gettempdir(), "taxi_platform_bench"))


# --------------------------------------------------------------------------------------------------
# Source months


def month_bounds(month: str) -> tuple[np.datetime64, np.datetime64]:
    start = np.datetime64(f"{month}-01T00:00:00", "s")
    end = (np.datetime64(month, "M") + 1).astype("datetime64[s]")
    return start, end


def source_table(
    spec: DatasetSpec,
    month: str,
    rows: int,
    seed: int = DEFAULT_SEED,
    form: str = "csv",
    quirks: Quirks = REAL,
) -> pa.Table:
    """A month of `spec` as its `form` (csv | parquet) declares it: source names, source types."""
    values = _trip_values(spec, month, rows, seed, form, quirks)
    schema = spec.source_schema(form)
    fields, arrays = [], []
    by_source = {c.source: c for c in spec.columns}
    for field in schema:
        column = by_source[field.name]
        if column.optional and column.source == "cbd_congestion_fee" and month < "2025-01":
            continue  # the TLC added it in 2025
        if column.name == "airport_fee" and form == "csv":
            continue  # the course's yellow releases lack it
        name = PARQUET_NAMES.get((spec.name, column.name), field.name) if form == "parquet" else field.name
        fields.append(pa.field(name, field.type))
        arrays.append(values[column.name].cast(field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _trip_values(
    spec: DatasetSpec, month: str, rows: int, seed: int, form: str, quirks: Quirks
) -> dict[str, pa.Array]:
    """Every column of the spec, by snake_case name, in its clean type; quirks included."""
    rng = np.random.default_rng([seed, sum(map(ord, spec.name)), int(month.replace("-", ""))])
    start, end = month_bounds(month)
    seconds = int((end - start).astype(np.int64))

    pickup_s = np.sort(rng.integers(0, seconds, rows))
    pickup = start + pickup_s
    stray = np.flatnonzero(rng.random(rows) < quirks.out_of_month)
    stray_at = rng.choice(
        [
            start - np.int64(86_400 * 20),
            end + np.int64(3_600 * 5),
            np.datetime64("2008-12-31T23:10:00", "s"),
            np.datetime64("2009-01-01T00:20:00", "s"),
        ],
        len(stray),
    )
    pickup[stray] = stray_at + rng.integers(0, 3_600, len(stray))
    duration = np.clip(rng.gamma(2.0, 400.0, rows), 1, 4 * 3600).astype(np.int64)
    dropoff = pickup + duration

    is_taxi = spec.name in ("yellow", "green")
    no_meter = (rng.random(rows) < NO_METER) if is_taxi else np.zeros(rows, bool)
    zone_weights = rng.pareto(1.2, 265) + 0.01
    zone_weights /= zone_weights.sum()
    blank_zone = (rng.random(rows) < 0.8) if spec.name == "fhv" else np.zeros(rows, bool)

    def ints(choices, p=None, mask=None):
        return pa.array(rng.choice(choices, rows, p=p).astype(np.int64), pa.int64(), mask=mask)

    def money(x):
        return np.round(x, 2)

    def strings(vocabulary, p=None, mask=None):
        index = pa.array(rng.choice(len(vocabulary), rows, p=p).astype(np.int32), mask=mask)
        return pa.DictionaryArray.from_arrays(index, pa.array(vocabulary)).dictionary_decode()

    def zones(mask=None):
        return ints(np.arange(1, 266), zone_weights, mask)

    def ts(values):
        return pa.array(values.astype("datetime64[us]"), pa.timestamp("us"))

    distance = money(np.clip(rng.lognormal(0.6, 0.85, rows), 0.01, 150.0))
    distance[rng.random(rows) < 0.015] = 0.0
    payment = rng.choice([1, 2, 3, 4], rows, p=[0.72, 0.26, 0.01, 0.01])
    fare = money(2.5 + 2.5 * distance + 0.5 * duration / 60)
    extra = rng.choice([0.0, 0.5, 1.0, 2.5, 3.0], rows, p=[0.45, 0.3, 0.1, 0.1, 0.05])
    tip = np.where(payment == 1, money(fare * rng.uniform(0.0, 0.3, rows)), 0.0)
    tolls = np.where(rng.random(rows) < 0.05, 6.12, 0.0)
    congestion = rng.choice([2.5, 0.0], rows, p=[0.88, 0.12])
    total = money(fare + extra + 0.5 + tip + tolls + 0.3 + congestion)
    flags = ["N", "Y"]
    bases = [f"B0{n:04d}" for n in rng.choice(np.arange(1, 3200), 400, replace=False)]

    v: dict[str, pa.Array] = {
        "vendor_id": ints([1, 2], [0.3, 0.7], no_meter),
        spec.pickup: ts(pickup),
        spec.dropoff: ts(dropoff),
        "passenger_count": ints([0, 1, 2, 3, 4, 5, 6], [0.02, 0.70, 0.14, 0.04, 0.02, 0.05, 0.03], no_meter),
        "trip_distance": pa.array(distance),
        "ratecode_id": ints([1, 2, 3, 4, 5, 99], [0.95, 0.025, 0.005, 0.005, 0.014, 0.001], no_meter),
        "store_and_fwd_flag": strings(flags, [0.99, 0.01], no_meter),
        "pu_location_id": zones(blank_zone),
        "do_location_id": zones(blank_zone),
        "payment_type": pa.array(payment.astype(np.int64), mask=no_meter),
        "fare_amount": pa.array(fare),
        "extra": pa.array(extra),
        "mta_tax": pa.array(np.full(rows, 0.5)),
        "tip_amount": pa.array(tip),
        "tolls_amount": pa.array(tolls),
        "ehail_fee": pa.nulls(rows, pa.float64()),
        "improvement_surcharge": pa.array(np.full(rows, 0.3)),
        "total_amount": pa.array(total),
        "congestion_surcharge": pa.array(congestion),
        "trip_type": ints([1, 2], [0.97, 0.03], no_meter),
        "airport_fee": pa.array(np.where(rng.random(rows) < 0.05, 1.25, 0.0)),
        "cbd_congestion_fee": pa.array(np.where(rng.random(rows) < 0.3, 0.75, 0.0)),
        # fhv, fhvhv
        "dispatching_base_num": strings(bases),
        "affiliated_base_number": strings(bases, mask=rng.random(rows) < 0.1),
        "sr_flag": pa.array(np.ones(rows, np.int64), mask=rng.random(rows) < 0.9),
        "hvfhs_license_num": strings(["HV0002", "HV0003", "HV0004", "HV0005"], [0.02, 0.7, 0.03, 0.25]),
        "originating_base_num": strings(bases, mask=rng.random(rows) < 0.25),
        "request_datetime": ts(pickup - rng.integers(60, 900, rows)),
        "on_scene_datetime": pa.array(
            (pickup - rng.integers(0, 300, rows)).astype("datetime64[us]"),
            pa.timestamp("us"),
            mask=rng.random(rows) < 0.7,
        ),
        "trip_miles": pa.array(distance),
        "trip_time": pa.array(duration),
        "base_passenger_fare": pa.array(fare),
        "tolls": pa.array(tolls),
        "bcf": pa.array(money(fare * 0.025)),
        "sales_tax": pa.array(money(fare * 0.08875)),
        "tips": pa.array(tip),
        "driver_pay": pa.array(money(fare * 0.72)),
        **{
            name: strings(flags, [0.95, 0.05])
            for name in (
                "shared_request_flag",
                "shared_match_flag",
                "access_a_ride_flag",
                "wav_request_flag",
                "wav_match_flag",
            )
        },
    }
    columns = {c.name: v[c.name] for c in spec.columns}
    # A few exact duplicates: row i+1 becomes a copy of row i.
    copies = np.flatnonzero(rng.random(rows - 1) < quirks.duplicates) + 1
    if len(copies):
        order = np.arange(rows)
        order[copies] = copies - 1
        take = pa.array(order)
        columns = {name: array.take(take) for name, array in columns.items()}
    return columns


def write_source_month(
    root: Path,
    spec: DatasetSpec,
    month: str,
    rows: int,
    seed: int = DEFAULT_SEED,
    forms=("csv", "parquet"),
    quirks: Quirks = REAL,
) -> dict[str, Path]:
    """Write the month in each form under `root`, laid out like the sources; {form: path}."""
    root = Path(root)
    paths = {}
    misc = root / "misc" / "taxi_zone_lookup.csv"
    if not misc.exists():
        misc.parent.mkdir(parents=True, exist_ok=True)
        misc.write_text(ZONES_CSV)
    for form in forms:
        if form == "csv":
            path = root / "releases" / spec.name / spec.file_name(month, "csv")
        else:
            path = root / "trip-data" / spec.file_name(month, "parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        table = source_table(spec, month, rows, seed, form, quirks)
        partial = path.with_name(path.name + ".partial")
        if form == "csv":
            _write_csv_gz(table, partial)
        else:
            pq.write_table(table, partial)
        partial.replace(path)
        paths[form] = path
    return paths


def _write_csv_gz(table: pa.Table, path: Path) -> None:
    """Like the releases: header unquoted, values unquoted, blank = null, gzip."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0) as out:
        out.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(
            table, out, pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=65_536)
        )


def cached_source_month(
    spec: DatasetSpec, month: str, rows: int, seed: int = DEFAULT_SEED, forms=("csv", "parquet")
) -> Path:
    """The root of a source folder holding the month (generated once, then reused)."""
    root = cache_root() / f"{spec.name}_{month}_{rows}_{seed}"
    done = [form for form in forms if (root / f".done_{form}").exists()]
    missing = [form for form in forms if form not in done]
    if missing:
        write_source_month(root, spec, month, rows, seed, missing)
        for form in missing:
            (root / f".done_{form}").touch()
    return root


def cached_source_months(
    spec: DatasetSpec, months: list[str], rows: int, seed: int = DEFAULT_SEED, forms=("csv",)
) -> Path:
    """One source folder holding several months of a dataset."""
    root = cache_root() / f"{spec.name}_{months[0]}_{months[-1]}_{rows}_{seed}"
    for month in months:
        marker = root / f".done_{month}_{'_'.join(forms)}"
        if not marker.exists():
            write_source_month(root, spec, month, rows, seed, forms)
            marker.touch()
    return root


def months_from(first: str, count: int) -> list[str]:
    start = np.datetime64(first, "M")
    return [str(start + i) for i in range(count)]


# --------------------------------------------------------------------------------------------------
# A clean yellow month (the Postgres load benchmark)


def synthetic_yellow(rows: int, seed: int = DEFAULT_SEED, month: str = "2021-01") -> pa.Table:
    """A yellow month of `rows` trips with the clean schema, reproducible from `seed`.

    Like the real 2021-01 release: whole-second naive pickups inside the month (sorted, as the TLC files
    roughly are), dropoffs a few minutes later (some in the next month), about 7% of rows with vendor_id,
    passenger_count, ratecode_id, store_and_fwd_flag and payment_type all null, fares with 2 decimals,
    'N'/'Y' flags, airport_fee and cbd_congestion_fee null (the CSV release lacks them), a unique
    random-looking 64-bit trip_key (the real one is a hash).
    """
    spec = DATASETS["yellow"]
    rng = np.random.default_rng(seed)
    schema = spec.clean_schema
    month_start, month_end = month_bounds(month)
    month_seconds = int((month_end - month_start).astype(np.int64))

    pickup_s = np.sort(rng.integers(0, month_seconds, rows))
    duration_s = np.clip(rng.gamma(2.0, 400.0, rows), 1, 4 * 3600).astype(np.int64)
    pickup = (month_start + pickup_s).astype("datetime64[us]")
    dropoff = (month_start + pickup_s + duration_s).astype("datetime64[us]")

    no_meter = rng.random(rows) < NO_METER

    def ints(values, nullable=True) -> pa.Array:
        return pa.array(values.astype(np.int64), pa.int64(), mask=no_meter if nullable else None)

    def money(values) -> np.ndarray:
        return np.round(values, 2)

    distance = money(np.clip(rng.lognormal(0.6, 0.85, rows), 0.01, 150.0))
    payment = rng.choice([1, 2, 3, 4], rows, p=[0.72, 0.26, 0.01, 0.01])
    fare = money(2.5 + 2.5 * distance + 0.5 * duration_s / 60)
    extra = rng.choice([0.0, 0.5, 1.0, 2.5, 3.0], rows, p=[0.45, 0.3, 0.1, 0.1, 0.05])
    mta_tax = np.full(rows, 0.5)
    tip = np.where(payment == 1, money(fare * rng.uniform(0.0, 0.3, rows)), 0.0)
    tolls = np.where(rng.random(rows) < 0.05, 6.12, 0.0)
    improvement = np.full(rows, 0.3)
    congestion = rng.choice([2.5, 0.0], rows, p=[0.88, 0.12])
    total = money(fare + extra + mta_tax + tip + tolls + improvement + congestion)
    zone_weights = rng.pareto(1.2, 265) + 0.01
    zone_weights /= zone_weights.sum()

    flag_index = pa.array((rng.random(rows) < 0.01).astype(np.int8), pa.int8(), mask=no_meter)
    flags = pa.DictionaryArray.from_arrays(flag_index, pa.array(["N", "Y"])).dictionary_decode()

    # A bijection of 0..rows-1 onto int64 (multiply by an odd constant mod 2**64, xor-shift): unique and
    # spread over the whole range like the real hash.
    keys = (np.arange(rows, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    keys ^= keys >> np.uint64(29)

    columns = {
        "vendor_id": ints(rng.choice([1, 2], rows, p=[0.3, 0.7])),
        "tpep_pickup_datetime": pa.array(pickup, pa.timestamp("us")),
        "tpep_dropoff_datetime": pa.array(dropoff, pa.timestamp("us")),
        "passenger_count": ints(rng.choice([1, 2, 3, 4, 5, 6], rows, p=[0.72, 0.14, 0.04, 0.02, 0.05, 0.03])),
        "trip_distance": pa.array(distance),
        "ratecode_id": ints(
            rng.choice([1, 2, 3, 4, 5, 99], rows, p=[0.95, 0.025, 0.005, 0.005, 0.014, 0.001])
        ),
        "store_and_fwd_flag": flags,
        "pu_location_id": ints(rng.choice(np.arange(1, 266), rows, p=zone_weights), nullable=False),
        "do_location_id": ints(rng.choice(np.arange(1, 266), rows, p=zone_weights), nullable=False),
        "payment_type": ints(payment),
        "fare_amount": pa.array(fare),
        "extra": pa.array(extra),
        "mta_tax": pa.array(mta_tax),
        "tip_amount": pa.array(tip),
        "tolls_amount": pa.array(tolls),
        "improvement_surcharge": pa.array(improvement),
        "total_amount": pa.array(total),
        "congestion_surcharge": pa.array(congestion),
        "airport_fee": pa.nulls(rows, pa.float64()),
        "cbd_congestion_fee": pa.nulls(rows, pa.float64()),
        "trip_key": pa.array(keys.view(np.int64), pa.int64()),
        "pickup_date": pa.array(pickup.astype("datetime64[D]"), pa.date32()),
    }
    if list(columns) != schema.names:
        raise AssertionError(f"synthetic columns {list(columns)} differ from the clean schema {schema.names}")
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    if pc.count_distinct(table["trip_key"]).as_py() != rows:
        raise AssertionError("synthetic trip_key is not unique")
    return table


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m synthetic.months", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="yellow", choices=sorted(DATASETS))
    parser.add_argument("--month", default="2021-01")
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--form", action="append", choices=["csv", "parquet"], help="default: both")
    parser.add_argument("--out", type=Path, required=True, help="the source folder to write into")
    args = parser.parse_args(argv)
    paths = write_source_month(
        args.out,
        DATASETS[args.dataset],
        args.month,
        args.rows,
        args.seed,
        tuple(args.form or ("csv", "parquet")),
    )
    for form, path in paths.items():
        print(f"{form}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
