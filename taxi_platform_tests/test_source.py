"""The source resource against a real HTTP server serving the real TLC files."""

import pytest

from taxi_platform.datasets import DATASETS
from taxi_platform.sources.public import MonthNotPublished, SourceError, TaxiSource

GREEN, FHVHV = DATASETS["green"], DATASETS["fhvhv"]


def source_for(server, **config) -> TaxiSource:
    return TaxiSource(
        releases_url=f"{server.url}/releases", tlc_url=server.url, backoff_seconds=0.01, **config
    )


def test_auto_takes_the_releases_for_their_months_and_the_tlc_for_the_rest():
    source = TaxiSource()
    assert source.locate(GREEN, "2020-10").url == (
        "https://github.com/DataTalksClub/nyc-tlc-data/releases/download/green/green_tripdata_2020-10.csv.gz"
    )
    assert source.locate(GREEN, "2019-01").form == "csv"
    assert source.locate(GREEN, "2021-07").form == "csv"
    assert source.locate(GREEN, "2018-12").url == (
        "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_2018-12.parquet"
    )
    assert source.locate(GREEN, "2021-08").kind == "tlc"
    assert source.locate(FHVHV, "2020-01").kind == "tlc"  # the releases carry no fhvhv


def test_taxi_source_forces_one_source():
    assert TaxiSource(source="tlc").locate(GREEN, "2020-10").form == "parquet"
    assert TaxiSource(source="releases").locate(GREEN, "2024-01").form == "csv"
    with pytest.raises(ValueError, match="'auto', 'releases' or 'tlc'"):
        TaxiSource(source="s3")


def test_download_streams_the_file_and_records_its_identity(source_server, manifest, tmp_path):
    file = source_for(source_server).locate(GREEN, "2020-10")
    download = source_for(source_server).download(file.url, tmp_path / "f", file.label, file.form)
    expected = manifest["releases/green/green_tripdata_2020-10.csv.gz"]
    assert download.bytes == int(expected["bytes"]) == (tmp_path / "f").stat().st_size
    assert download.sha256 == expected["sha256"]
    assert download.etag and download.last_modified


def test_a_missing_month_is_not_published(source_server, tmp_path):
    source = source_for(source_server)
    file = source.locate(GREEN, "2019-03")
    with pytest.raises(
        MonthNotPublished, match=r"green 2019-03 is not published: .*2019-03\.csv\.gz answered 404"
    ):
        source.download(file.url, tmp_path / "f", file.label, file.form)


def test_server_errors_are_retried_until_the_file_comes(source_server, tmp_path):
    source = source_for(source_server)
    file = source.locate(GREEN, "2020-11")
    path = file.url.removeprefix(source_server.url)
    source_server.fail(path, "500", "500")
    before = len(source_server.requests)
    download = source.download(file.url, tmp_path / "f", file.label, file.form)
    assert download.bytes == 1573495
    assert len(source_server.requests) - before == 3


def test_server_errors_that_persist_fail_with_url_and_month(source_server, tmp_path):
    source = source_for(source_server, attempts=2)
    file = source.locate(GREEN, "2020-12")
    source_server.fail(file.url.removeprefix(source_server.url), "500", "500")
    with pytest.raises(
        SourceError, match=r"green 2020-12: .*2020-12\.csv\.gz failed after 2 tries: HTTP 500"
    ):
        source.download(file.url, tmp_path / "f", file.label, file.form)


def test_an_html_page_is_refused(source_server, tmp_path):
    source = source_for(source_server)
    file = source.locate(GREEN, "2020-09")
    source_server.fail(file.url.removeprefix(source_server.url), "html")
    with pytest.raises(SourceError, match=r"green 2020-09: .*2020-09\.csv\.gz returned an HTML page"):
        source.download(file.url, tmp_path / "f", file.label, file.form)


def test_a_file_of_the_wrong_form_is_refused(source_server, tmp_path):
    source = source_for(source_server)
    url = f"{source_server.url}/releases/green/green_tripdata_2020-09.csv.gz"
    with pytest.raises(SourceError, match="green 2020-09: .* is not a parquet file"):
        source.download(url, tmp_path / "f", "green 2020-09", "parquet")
