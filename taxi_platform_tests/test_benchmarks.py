"""Smoke runs of the benchmarks (benchmarks/), a few thousand rows each, so they cannot rot.

The figures at this size mean nothing (fixed costs dominate); the runs prove the code paths work end to
end against a real PostgreSQL: the row counts each benchmark checks would raise on a mismatch.
"""

import sys
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import backfill, end_to_end, postgres_load  # noqa: E402
from taxi_platform_tests import synthetic  # noqa: E402
from taxi_platform.cleaning import clean_month  # noqa: E402
from taxi_platform.datasets import DATASETS  # noqa: E402
from taxi_platform.sources.reading import read_trips  # noqa: E402


@pytest.fixture
def bench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAXI_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_synthetic_months_read_and_clean_like_real_ones(dataset, tmp_path):
    """Both forms parse with the platform's declared schemas, agree, and carry the quirks."""
    from datetime import datetime

    spec, month = DATASETS[dataset], "2021-01"
    paths = synthetic.write_source_month(tmp_path, spec, month, 20_000, seed=7)
    assert paths["csv"] == tmp_path / "releases" / dataset / f"{dataset}_tripdata_{month}.csv.gz"
    assert paths["parquet"] == tmp_path / "trip-data" / f"{dataset}_tripdata_{month}.parquet"
    cleaned = {}
    for form, path in paths.items():
        raw = read_trips(path, spec, form, f"synthetic {dataset}").read_all()
        assert raw.num_rows == 20_000
        cleaned[form] = clean_month(raw, spec, datetime(2021, 1, 1), datetime(2021, 2, 1))
    reasons = cleaned["csv"].rejected_counts
    assert reasons == cleaned["parquet"].rejected_counts
    assert reasons["pickup_outside_month"] > 0
    assert cleaned["csv"].clean.num_rows == cleaned["parquet"].clean.num_rows
    # Reproducible from the seed.
    again = synthetic.source_table(spec, month, 20_000, seed=7, form="parquet")
    assert again.equals(synthetic.source_table(spec, month, 20_000, seed=7, form="parquet"))


def test_synthetic_quirks_of_the_real_files(tmp_path):
    fhv = synthetic.source_table(DATASETS["fhv"], "2021-01", 5_000, form="csv")
    assert "PUlocationID" in fhv.column_names and "dropOff_datetime" in fhv.column_names
    assert fhv["PUlocationID"].null_count > 0  # blank ids
    yellow = synthetic.source_table(DATASETS["yellow"], "2021-01", 50_000, form="parquet")
    assert yellow.schema.field("VendorID").type == pa.int32()
    assert yellow.num_rows - yellow.group_by(yellow.column_names).aggregate([]).num_rows > 0  # duplicates


def test_end_to_end_smoke(postgres_url, bench_cache):
    figures = end_to_end.main(["--rows", "3000", "--url", postgres_url])
    platform, course = figures["ways"]["platform"], figures["ways"]["course"]
    assert platform["raw_rows"] == course["raw_rows"] == 3000
    assert platform["postgres_rows"] == platform["warehouse_rows"] > 0
    assert platform["checks_passed"]
    assert 0 < course["postgres_rows"] < 3000
    assert platform["peak_rss"] > 50 << 20 and course["peak_rss"] > 50 << 20
    assert figures["speedup"] > 0


def test_backfill_smoke(postgres_url, bench_cache):
    figures = backfill.main(
        [
            "--dataset",
            "yellow",
            "--rows",
            "2000",
            "--months",
            "2",
            "--first",
            "2021-01",
            "--modes",
            "two_processes",
            "--url",
            postgres_url,
        ]
    )
    assert figures["runs"] == [["2021-01", "2021-01"], ["2021-02", "2021-02"]]
    parallel = figures["modes"]["two_processes"]
    assert parallel["processes"] == 2 and parallel["executor"] == "in_process"
    assert 3000 < parallel["postgres_rows"] < 4000  # both months, each once (checked per month inside)


def test_postgres_load_smoke(postgres_url):
    figures = postgres_load.main(["--rows", "3000", "--url", postgres_url])
    assert set(figures["seconds"]) == {"a", "b", "c"}
