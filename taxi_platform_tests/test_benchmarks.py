"""The synthetic months the benchmarks (and the tests) use, and smoke runs of the benchmarks (benchmarks/),
a few thousand rows each, so they cannot rot.

The timings at this size mean nothing (fixed costs dominate); what the smoke runs check is what the
benchmarks loaded, against figures computed here from the same synthetic source with pandas.
"""

import json
import os
from datetime import datetime
from decimal import Decimal

import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks import backfill, end_to_end, lake_ingest, marts, plot, postgres_load
from synthetic import months as synthetic
from taxi_platform.datasets import DATASETS
from taxi_platform.sources.reading import read_trips
from taxi_platform_tests.helpers import clean_month, course_counts

GREEN = DATASETS["green"]


@pytest.fixture
def bench_cache(tmp_path, monkeypatch):
    """The benchmarks' cache of generated months, in the test's folder."""
    monkeypatch.setenv("TAXI_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def source_csv(folder, month: str, rows: int) -> str:
    """The green CSV.gz release a benchmark generates for `month` (same rows and seed, same bytes),
    written again into `folder` for the test to count."""
    return str(synthetic.write_source_month(folder, GREEN, month, rows, forms=("csv",))["csv"])


def course_loaded_rows(csv_gz: str) -> int:
    """The rows the course's way keeps: passenger_count > 0 and trip_distance > 0 (blank fails)."""
    df = pd.read_csv(csv_gz, low_memory=False)
    return int(((df["passenger_count"] > 0) & (df["trip_distance"] > 0)).sum())


def pandas_month(path, spec, month: str) -> tuple[dict[str, int], int]:
    """A month's file cleaned with pandas, independently of the platform: the rows rejected per
    reason (each row for the first rule it breaks: pickup outside the month, then each positive
    column not > 0 or blank, then an exact copy of a kept row), and the clean rows."""
    source = {c.name: c.source for c in spec.columns}
    df = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path, low_memory=False)
    pickup = pd.to_datetime(df[source[spec.pickup]])
    start = pd.Timestamp(f"{month}-01")
    passes = (pickup >= start) & (pickup < start + pd.offsets.MonthBegin(1))
    rejected = {"pickup_outside_month": int((~passes).sum())}
    for name in spec.positive_columns:
        positive = passes & (df[source[name]] > 0)
        rejected[f"{name}_not_positive"] = int((passes & ~positive).sum())
        passes = positive
    clean = len(df[passes].drop_duplicates())
    rejected["duplicate_row"] = int(passes.sum()) - clean
    return rejected, clean


@pytest.mark.fast
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_synthetic_months_read_and_clean_like_real_ones(dataset, tmp_path):
    """Both forms parse with the platform's declared schemas, and each cleans to the figures pandas
    computes from that file; the quirks are there to be rejected."""
    spec, month = DATASETS[dataset], "2021-01"
    paths = synthetic.write_source_month(tmp_path, spec, month, 20_000, seed=7, quirks=synthetic.FREQUENT)
    assert paths["csv"] == tmp_path / "releases" / dataset / f"{dataset}_tripdata_{month}.csv.gz"
    assert paths["parquet"] == tmp_path / "trip-data" / f"{dataset}_tripdata_{month}.parquet"
    cleaned = {}
    for form, path in paths.items():
        raw = read_trips(path, spec, form, f"synthetic {dataset}").read_all()
        assert raw.num_rows == 20_000
        cleaned[form] = clean_month(raw, spec, datetime(2021, 1, 1), datetime(2021, 2, 1))
    for form, path in paths.items():
        rejected, clean = pandas_month(path, spec, month)
        assert rejected["pickup_outside_month"] > 0 and rejected["duplicate_row"] > 0
        assert (cleaned[form].rejected_counts, cleaned[form].clean.num_rows) == (rejected, clean), form
    # Reproducible from the seed.
    again = synthetic.source_table(spec, month, 20_000, seed=7, form="parquet")
    assert again.equals(synthetic.source_table(spec, month, 20_000, seed=7, form="parquet"))


@pytest.mark.fast
def test_synthetic_quirks_of_the_real_files():
    fhv = synthetic.source_table(DATASETS["fhv"], "2021-01", 5_000, form="csv")
    assert "PUlocationID" in fhv.column_names and "dropOff_datetime" in fhv.column_names
    assert fhv["PUlocationID"].null_count > 0  # blank ids
    yellow = synthetic.source_table(DATASETS["yellow"], "2021-01", 50_000, form="parquet")
    assert str(yellow.schema.field("VendorID").type) == "int32"
    assert yellow.num_rows - yellow.group_by(yellow.column_names).aggregate([]).num_rows > 0  # duplicates


@pytest.mark.postgres
@pytest.mark.slow
def test_end_to_end_smoke(postgres_url, bench_cache, tmp_path, capsys):
    """Every way on one small month: each loaded into PostgreSQL the rows pandas computes for its rules,
    the run ends with the four ratios and writes its figures as JSON."""
    month, rows = "2020-11", 20_000
    figures = end_to_end.main(
        ["--dataset", "green", "--month", month, "--rows", str(rows), "--url", postgres_url]
        + ["--results", str(tmp_path / "results")]
    )
    path = source_csv(tmp_path / "expected", month, rows)
    expected = course_counts(path, month)
    assert expected["raw"] == rows and 0 < expected["clean"] < rows
    ways = figures["ways"]
    assert list(ways) == ["floor", "course", "mage-style", "dlt-parquet", "dlt-csv", "platform"]
    assert {way: r["raw_rows"] for way, r in ways.items()} == dict.fromkeys(ways, rows)
    assert {way: r["postgres_rows"] for way, r in ways.items()} == {
        **dict.fromkeys(ways, expected["clean"]),
        "course": course_loaded_rows(path),  # the course keeps pickups outside the month and duplicates
    }
    assert {way: r["warehouse_rows"] for way, r in ways.items() if "warehouse_rows" in r} == dict.fromkeys(
        ["floor", "dlt-parquet", "dlt-csv", "platform"], expected["clean"]
    )
    assert ways["platform"]["checks_passed"] is True
    walls = figures["walls"]
    assert walls["dlt"] == min(ways["dlt-parquet"]["seconds"], ways["dlt-csv"]["seconds"])
    ratios = [
        f"speedup vs course: {walls['course'] / walls['platform']:.1f}x",
        f"speedup vs mage-style: {walls['mage-style'] / walls['platform']:.1f}x",
        f"speedup vs dlt: {walls['dlt'] / walls['platform']:.1f}x",
        f"time vs floor: {walls['platform'] / walls['floor']:.1f}x",
    ]
    assert capsys.readouterr().out.splitlines()[-4:] == ratios
    (written,) = (tmp_path / "results").glob("*.json")
    result = json.loads(written.read_text())
    assert set(result["ways"]) == set(ways)
    assert {way: r["postgres_rows"] for way, r in result["ways"].items()} == {
        way: r["postgres_rows"] for way, r in ways.items()
    }
    assert result["machine"]["cores"] == os.cpu_count()
    assert result["machine"]["postgres"] == figures["machine"]["postgres"] != ""
    assert set(result["machine"]["packages"]) >= {"dagster", "pyarrow", "dlt", "adbc-driver-postgresql"}


@pytest.mark.postgres
@pytest.mark.slow
def test_every_way_reads_the_form_the_platform_reads(postgres_url, bench_cache, tmp_path):
    """fhvhv months come as the TLC's parquet (25 columns; the CSV form has 7): every way reads that
    file, and keeps the same rows as the platform."""
    spec = DATASETS["fhvhv"]
    figures = end_to_end.main(
        ["--dataset", "fhvhv", "--month", "2021-01", "--rows", "3000", "--url", postgres_url]
        + ["--ways", "floor,mage-style,platform", "--results", str(tmp_path / "results")]
    )
    ways = figures["ways"]
    assert figures["source_form"] == "parquet"
    assert {way: r["raw_rows"] for way, r in ways.items()} == dict.fromkeys(ways, 3000)
    assert len({r["postgres_rows"] for r in ways.values()}) == 1
    # Every column of the file (the TLC's parquet: 24 in 2021), renamed, plus pickup_date.
    (parquet,) = bench_cache.glob(f"fhvhv_*/trip-data/{spec.file_name('2021-01', 'parquet')}")
    columns = len(pq.read_schema(parquet)) + 1
    assert columns > len(spec.source_schema("csv")) + 1
    assert {way: ways[way]["columns"] for way in ("floor", "mage-style")} == dict.fromkeys(
        ["floor", "mage-style"], columns
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_end_to_end_subset_says_na_and_plots(postgres_url, bench_cache, tmp_path, capsys):
    """`--ways` runs a subset; a ratio it cannot give reads n/a. The plot draws each way's rows/s."""
    figures = end_to_end.main(
        ["--dataset", "green", "--month", "2020-11", "--rows", "3000", "--url", postgres_url]
        + ["--ways", "floor,mage-style", "--results", str(tmp_path / "results")]
    )
    assert list(figures["ways"]) == ["floor", "mage-style"]
    expected = course_counts(source_csv(tmp_path / "expected", "2020-11", 3000), "2020-11")["clean"]
    assert [r["postgres_rows"] for r in figures["ways"].values()] == [expected, expected]
    assert capsys.readouterr().out.splitlines()[-4:] == [
        "speedup vs course: n/a",
        "speedup vs mage-style: n/a",
        "speedup vs dlt: n/a",
        "time vs floor: n/a",
    ]
    assert len(list((tmp_path / "results").glob("*.json"))) == 1
    lines = plot.main(["--results", str(tmp_path / "results"), "--dataset", "green"])
    assert lines == {way: [(3000, r["rows_per_second"])] for way, r in figures["ways"].items()}
    assert (tmp_path / "results" / plot.PLOT_NAME).stat().st_size > 0


@pytest.mark.postgres
@pytest.mark.slow
def test_backfill_smoke(postgres_url, bench_cache, tmp_path):
    """Six green months in two runs of three (green's months_per_run), one run per process."""
    months = [f"2020-{m:02d}" for m in range(7, 13)]
    figures = backfill.main(
        ["--dataset", "green", "--rows", "1000", "--months", "6", "--first", "2020-07"]
        + ["--modes", "two_processes", "--url", postgres_url]
    )
    assert figures["runs"] == [["2020-07", "2020-09"], ["2020-10", "2020-12"]]
    parallel = figures["modes"]["two_processes"]
    assert parallel["processes"] == 2 and parallel["executor"] == "in_process"
    assert [child["runs"][0]["months"] for child in parallel["children"]] == figures["runs"]
    assert parallel["month_rows"] == {
        month: course_counts(source_csv(tmp_path / "expected", month, 1000), month)["clean"]
        for month in months
    }


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_load_smoke(postgres_url):
    figures = postgres_load.main(["--rows", "3000", "--url", postgres_url])
    table = synthetic.synthetic_yellow(3000, synthetic.DEFAULT_SEED)
    expected = (
        3000,
        sum(table["trip_key"].to_pylist()),
        sum(Decimal(repr(x)) for x in table["total_amount"].to_pylist()),
    )
    loaded = {
        way: (f["rows"], f["trip_key_sum"], Decimal(f["total_amount_sum"]))
        for way, f in figures["loaded"].items()
    }
    assert loaded == {"a": expected, "b": expected, "c": expected}
    assert any("UNIQUE" in index and "(trip_key)" in index for index in figures["b_indexes"])


@pytest.mark.slow
def test_the_marts_benchmark_builds_the_same_marts_both_ways(tmp_path):
    """benchmarks.marts on two small months: the Python SQL marts and the dbt marts agree, and every
    trip of the warehouse is counted once."""
    figures = marts.main(
        ["--rows", "3000", "--months", "2", "--ways", "python-sql,dbt-marts"]
        + ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    )
    ways = figures["ways"]
    assert ways["python-sql"]["daily_rows"] == ways["dbt-marts"]["daily_rows"] > 0
    assert ways["python-sql"]["trips"] == ways["dbt-marts"]["trips"] == 6000
    assert [p.name.startswith("marts-") for p in (tmp_path / "results").iterdir()] == [True]


@pytest.mark.slow
def test_the_lake_ingest_benchmark_loads_the_same_rows_on_both_sides(bench_cache, tmp_path):
    """benchmarks.lake_ingest on a small synthetic month: the old lake (extracted from git history) and
    the Iceberg lake each publish the month pandas computes, twice, and read it back through their own
    IO managers."""
    month, rows = "2020-11", 3000
    figures = lake_ingest.main(
        ["--dataset", "green", "--month", month, "--rows", str(rows), "--repeats", "1", "--republish"]
        + ["--sample-data", str(tmp_path / "no-real-files"), "--results", str(tmp_path / "results")]
    )
    expected = course_counts(source_csv(tmp_path / "expected", month, rows), month)
    loaded = {side: (r["rows"], r["clean_trip_key_sum"]) for side, (r,) in figures["runs"].items()}
    assert loaded["old"] == loaded["iceberg"]
    assert loaded["old"][0] == {
        "raw": rows,
        "clean": expected["clean"],
        "rejected": rows - expected["clean"],
    }
    assert figures["runs"]["old"][0]["tree"] != figures["runs"]["iceberg"][0]["tree"]
    assert all(r["republish_step_seconds"] > 0 for (r,) in figures["runs"].values())
    assert [p.name.startswith("lake_ingest-") for p in (tmp_path / "results").iterdir()] == [True]
