"""The README's figures, reproduced from the real TLC files (the `realdata` tier).

The files come from `python -m taxi_platform_tests.real_data` (or TAXI_SAMPLE_DATA), verified by sha256;
without them these tests skip, saying so. Each month is materialized from a real HTTP server over the
files, and its figures must equal both the README's table and pandas' count of the same file.
"""

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthetic.source_server import SourceServer
from taxi_platform.checks.blocking import CHECKS
from taxi_platform_tests import real_data as fetching
from taxi_platform_tests.helpers import course_counts, green_trip_keys, materializations, materialize

README = Path(__file__).parent.parent / "README.md"
REASONS = [
    "pickup_outside_month",
    "passenger_count_not_positive",
    "trip_distance_not_positive",
    "duplicate_row",
]
FILES = {
    "2020-10": "releases/green/green_tripdata_2020-10.csv.gz",
    "2020-11": "releases/green/green_tripdata_2020-11.csv.gz",
    "2020-12": "releases/green/green_tripdata_2020-12.csv.gz",
    "2024-01": "trip-data/green_tripdata_2024-01.parquet",
}


def readme_figures() -> dict[str, dict[str, int]]:
    """The README's table of green months: {month: {raw, clean, and rows rejected per reason}}."""
    row = re.compile(r"^\| (\d{4}-\d{2})[^|]*((?:\| [\d,]+ )+)\|$")
    figures = {}
    for line in README.read_text().splitlines():
        if match := row.match(line):
            numbers = [int(cell.replace(",", "")) for cell in match[2].split("|")[1:]]
            figures[match[1]] = dict(zip(["raw", "clean", *REASONS], numbers, strict=True))
    return figures


@pytest.fixture
def real_source(real_data, tmp_path, monkeypatch) -> Iterator[Path]:
    """The local profile against a real HTTP server over the real files; returns the data dir."""
    with SourceServer(tmp_path / "overlay", real_data) as server:
        monkeypatch.setenv("TAXI_RELEASES_URL", f"{server.url}/releases")
        monkeypatch.setenv("TAXI_TLC_URL", server.url)
        monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.delenv("TAXI_SOURCE", raising=False)
        monkeypatch.delenv("TAXI_PROFILE", raising=False)
        yield tmp_path / "data"


@pytest.mark.fast
def test_the_readme_table_lists_each_real_month():
    assert sorted(readme_figures()) == sorted(FILES)


@pytest.mark.realdata
@pytest.mark.parametrize("month", list(FILES))
def test_a_real_month_reproduces_the_readme_figures(real_data, real_source, month):
    expected = readme_figures()[month]
    source = real_data / FILES[month]
    assert course_counts(source, month) == expected  # pandas agrees with the README
    assert int(fetching.manifest()[FILES[month]]["rows"]) == expected["raw"]

    result = materialize(*green_trip_keys(), partition=month)
    meta = materializations(result)
    raw, clean = meta[("raw/green_trips", month)], meta[("clean/green_trips", month)]
    assert raw["source_sha256"] == fetching.manifest()[FILES[month]]["sha256"]
    assert raw["source_kind"] == ("tlc" if FILES[month].endswith(".parquet") else "releases")
    assert {
        "raw": raw["dagster/row_count"],
        "clean": clean["dagster/row_count"],
        **{reason: clean[f"rejected_{reason}"] for reason in REASONS},
    } == expected
    assert (
        meta[("clean/green_trips_rejected", month)]["dagster/row_count"]
        == expected["raw"] - expected["clean"]
    )
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True] * len(CHECKS)


@pytest.mark.realdata
def test_the_real_zones_keep_na_and_unknown_as_text(real_source):
    result = materialize("reference/taxi_zones")
    rows = int(fetching.manifest()["misc/taxi_zone_lookup.csv"]["rows"])
    assert materializations(result)[("reference/taxi_zones", None)]["dagster/row_count"] == rows == 265
    zones = pq.read_table(real_source / "lake/reference/taxi_zones.parquet").to_pylist()
    assert zones[0] == {"location_id": 1, "borough": "EWR", "zone": "Newark Airport", "service_zone": "EWR"}
    assert zones[-2:] == [
        {"location_id": 264, "borough": "Unknown", "zone": "NV", "service_zone": "N/A"},
        {"location_id": 265, "borough": "Unknown", "zone": "NA", "service_zone": "N/A"},
    ]


@pytest.mark.fast
def test_files_missing_or_not_the_manifests_are_refused_naming_the_fetch_command(tmp_path, monkeypatch):
    """What the realdata tier's skip reason says: each wrong file, and the command that fetches them."""
    content = b"LocationID,Borough\r\n1,EWR\r\n"
    digest = hashlib.sha256(content).hexdigest()
    listing = tmp_path / "manifest.tsv"
    listing.write_text(
        f"path\turl\tbytes\tsha256\trows\nmisc/zones.csv\thttps://x/zones.csv\t{len(content)}\t{digest}\t1\n"
    )
    monkeypatch.setattr(fetching, "MANIFEST", listing)
    monkeypatch.setenv("TAXI_SAMPLE_DATA", str(tmp_path / "files"))
    file = tmp_path / "files/misc/zones.csv"
    for written, problem in [
        (None, "zones.csv is missing"),
        (content[:-1], f"zones.csv has {len(content) - 1} bytes, not {len(content)}"),
        (
            content.upper(),
            f"zones.csv has sha256 {hashlib.sha256(content.upper()).hexdigest()}, not {digest}",
        ),
    ]:
        if written is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(written)
        with pytest.raises(fetching.RealDataMissing) as raised:
            fetching.real_data_folder()
        assert str(raised.value) == f"{tmp_path / 'files'}: {problem} (fetch them: {fetching.FETCH_COMMAND})"
    file.write_bytes(content)
    assert fetching.real_data_folder() == tmp_path / "files"
