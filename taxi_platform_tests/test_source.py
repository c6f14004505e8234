"""The source resource and the landing zone against a real HTTP server and a real folder: locating a
month, probing its version, downloading it, and every way that can fail."""

import email.utils
import hashlib
import logging
import os
import re
from pathlib import Path

import dagster as dg
import pytest

from synthetic.source_server import HTML_PAGE, SourceServer
from taxi_platform.assets import permanent_errors_not_retried
from taxi_platform.datasets import DATASETS
from taxi_platform.retrying import RetrySettings
from taxi_platform.sources import landing
from taxi_platform.sources.public import (
    FileVersion,
    MonthNotPublished,
    SourceError,
    SourceFile,
    SourceUnavailable,
    TaxiSource,
)
from taxi_platform_tests.helpers import sha256_of

pytestmark = pytest.mark.fast

GREEN, FHVHV = DATASETS["green"], DATASETS["fhvhv"]


@pytest.fixture
def server(published, tmp_path):
    """A source of the test's own: its faults and requests are the test's alone."""
    with SourceServer(tmp_path / "overlay", published) as server:
        yield server


# Short waits without jitter, so that the waits are known: 0.01 s, 0.02 s, 0.04 s, 0.08 s, then 0.1 s.
QUICK = RetrySettings(tries=None, first_wait=0.01, max_wait=0.1, jitter=0, budget=5)


def source_for(server, retry: RetrySettings = QUICK, **config) -> TaxiSource:
    """The source against `server`, with short waits and limits so that no test takes long."""
    limits = {"deadline_seconds": 10}
    return TaxiSource(
        releases_url=f"{server.url}/releases", tlc_url=server.url, retry=retry, **(limits | config)
    )


class Retries(logging.Handler):
    """The retry warnings the source logs, in order."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def retries():
    handler, logger = Retries(), logging.getLogger("taxi_platform.sources.public")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def fetch(source: TaxiSource, month: str, folder: Path):
    return source.fetch(source.locate(GREEN, month), folder)


def path_of(server, source: TaxiSource, month: str) -> str:
    return source.locate(GREEN, month).url.removeprefix(server.url)


def test_auto_takes_the_releases_for_their_months_and_the_tlc_for_the_rest():
    source = TaxiSource()
    assert source.locate(GREEN, "2020-10") == SourceFile(
        "releases",
        "csv",
        "https://github.com/DataTalksClub/nyc-tlc-data/releases/download/green/green_tripdata_2020-10.csv.gz",
        "green 2020-10",
    )
    assert source.locate(GREEN, "2019-01").form == "csv"
    assert source.locate(GREEN, "2021-07").form == "csv"
    assert source.locate(GREEN, "2018-12") == SourceFile(
        "tlc",
        "parquet",
        "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_2018-12.parquet",
        "green 2018-12",
    )
    assert source.locate(GREEN, "2021-08").kind == "tlc"
    assert source.locate(FHVHV, "2020-01").kind == "tlc"  # the releases carry no fhvhv
    assert source.zones_url() == "https://d37ci6vzurychx.cloudfront.net/misc/taxi_zone_lookup.csv"


def test_taxi_source_forces_one_source():
    assert TaxiSource(source="tlc").locate(GREEN, "2020-10").form == "parquet"
    assert TaxiSource(source="releases").locate(GREEN, "2024-01").form == "csv"
    with pytest.raises(ValueError, match="'auto', 'releases' or 'tlc'"):
        TaxiSource(source="s3")  # pyright: ignore[reportArgumentType]


def test_download_streams_the_file_and_records_its_identity(server, published, tmp_path):
    served = published / "releases/green/green_tripdata_2020-10.csv.gz"
    download = fetch(source_for(server), "2020-10", tmp_path)
    assert download.path == tmp_path / served.name
    assert download.path.read_bytes() == served.read_bytes()
    assert (download.bytes, download.sha256) == (served.stat().st_size, sha256_of(served))
    assert download.etag == f'"{hashlib.md5(served.read_bytes()).hexdigest()}"'
    assert download.last_modified == email.utils.formatdate(served.stat().st_mtime, usegmt=True)
    assert {name: getattr(value, "value", value) for name, value in download.metadata.items()} == {
        "source_url": f"{server.url}/releases/green/green_tripdata_2020-10.csv.gz",
        "source_bytes": download.bytes,
        "source_sha256": download.sha256,
        "source_etag": download.etag,
        "source_last_modified": download.last_modified,
    }
    assert server.requests == [("GET", "/releases/green/green_tripdata_2020-10.csv.gz")]


@pytest.mark.faults
@pytest.mark.parametrize("status", ["404", "403"])  # CloudFront answers 403 for a missing object
def test_a_missing_month_is_not_published_and_not_retried(server, tmp_path, status):
    source = source_for(server)
    server.fail(path_of(server, source, "2020-10"), status)
    with pytest.raises(
        MonthNotPublished, match=rf"^green 2020-10 is not published: .*2020-10\.csv\.gz answered {status}$"
    ):
        fetch(source, "2020-10", tmp_path)
    assert len(server.requests) == 1
    # ... nor by the step: the asset layer fails it without its retry policy.
    server.fail(path_of(server, source, "2020-10"), status)
    with pytest.raises(dg.Failure) as raised, permanent_errors_not_retried():
        fetch(source, "2020-10", tmp_path)
    assert not raised.value.allow_retries
    assert len(server.requests) == 2


def test_a_month_the_source_lacks_is_not_published(server, tmp_path):
    with pytest.raises(
        MonthNotPublished, match=r"green 2019-03 is not published: .*2019-03\.csv\.gz answered 404"
    ):
        fetch(source_for(server), "2019-03", tmp_path)


@pytest.mark.faults
@pytest.mark.parametrize(
    "faults",
    [("500", "503"), ("429",), ("drop", "drop"), ("cut",)],
    ids=["server-errors", "rate-limited", "connection-dropped", "cut-mid-file"],
)
def test_passing_faults_are_retried_until_the_whole_file_comes(server, published, tmp_path, faults):
    source = source_for(server)
    server.fail(path_of(server, source, "2020-11"), *faults)
    download = fetch(source, "2020-11", tmp_path)
    served = published / "releases/green/green_tripdata_2020-11.csv.gz"
    assert (download.bytes, download.sha256) == (served.stat().st_size, sha256_of(served))
    assert len(server.requests) == len(faults) + 1


@pytest.mark.faults
def test_an_outage_shorter_than_the_retry_time_heals_in_the_download(server, published, tmp_path):
    source = source_for(server)
    path = path_of(server, source, "2020-11")
    server.outage(path, 2)
    download = fetch(source, "2020-11", tmp_path)
    served = published / "releases/green/green_tripdata_2020-11.csv.gz"
    assert (download.bytes, download.sha256) == (served.stat().st_size, sha256_of(served))
    assert download.path.read_bytes() == served.read_bytes()
    assert len(server.requests) > 1  # the outage was met, and outlasted
    assert set(server.requests) == {("GET", path)}


@pytest.mark.faults
@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (("500",), "HTTP 500"),
        (("429",), "HTTP 429"),
        (("drop",), "Connection aborted"),
        (("cut",), "connection broke after [0-9]+ bytes"),
    ],
    ids=["server-errors", "rate-limited", "connection-dropped", "cut-mid-file"],
)
def test_faults_that_outlast_the_tries_fail_with_url_month_and_tries(
    server, tmp_path, retries, faults, error
):
    source = source_for(server, RetrySettings(tries=4, first_wait=0.01, max_wait=0.1, jitter=0))
    path = path_of(server, source, "2020-12")
    server.fail(path, *faults * 20)
    with pytest.raises(
        SourceUnavailable,
        match=rf"^green 2020-12 \(http://127\.0\.0\.1:[0-9]+{path}\): failed after 4 tries over [0-9.]+ s \(tries 4\);"
        rf" the last: .*{error}",
    ):
        fetch(source, "2020-12", tmp_path)
    assert server.requests == [("GET", path)] * 4
    # One warning a retry, naming the month, the URL, the try and the wait: the settings' waits, in order.
    assert [re.sub(r"failed with .*;", "failed with E;", m) for m in retries] == [
        f"green 2020-12 ({server.url}{path}): try {n} of 4 failed with E; trying again in {wait} s"
        for n, wait in [(1, "0.01"), (2, "0.02"), (3, "0.04")]
    ]
    assert all(re.search(error, message) for message in retries)


@pytest.mark.faults
def test_an_outage_longer_than_the_retry_budget_is_left_to_the_step_retry(server, tmp_path, retries):
    # A budget of 0: the first try fails, and no other starts.
    source = source_for(server, RetrySettings(tries=None, first_wait=10, jitter=0, budget=0))
    server.outage(path_of(server, source, "2020-12"), 60)
    # The asset layer lets SourceUnavailable through to the step's retry policy.
    with (
        pytest.raises(
            SourceUnavailable,
            match=r"^green 2020-12 \(http://127\.0\.0\.1:[0-9]+/releases/green/green_tripdata_2020-12\.csv\.gz\)"
            r": failed after 1 try over [0-9.]+ s \(budget 0 s\); the last: HTTP 503$",
        ),
        permanent_errors_not_retried(),
    ):
        fetch(source, "2020-12", tmp_path)
    assert len(server.requests) == 1
    assert retries == []


@pytest.mark.faults
def test_a_trickling_source_is_cut_at_the_deadline_and_left_to_the_step_retry(server, tmp_path):
    source = source_for(server, deadline_seconds=0.5)
    path = path_of(server, source, "2020-10")
    server.fail(path, "trickle")
    with pytest.raises(
        SourceUnavailable,
        match=r"^green 2020-10: .*2020-10\.csv\.gz did not finish within its deadline \(deadline_seconds 0\.5\)$",
    ):
        fetch(source, "2020-10", tmp_path)
    assert len(server.requests) == 1  # not tried again in the download
    # The download cut the connection: the trickle ended before the whole file was sent.
    trickled, sent = server.trickles.get(timeout=10)
    assert trickled == path
    served = server.find(path)
    assert served is not None and 0 < sent < served.stat().st_size


@pytest.mark.faults
def test_another_answer_fails_at_once(server, tmp_path):
    source = source_for(server)
    server.fail(path_of(server, source, "2020-10"), "401")
    with pytest.raises(SourceError, match=r"^green 2020-10: .*2020-10\.csv\.gz answered HTTP 401$"):
        fetch(source, "2020-10", tmp_path)
    assert len(server.requests) == 1


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["html", "html_as_data"])
def test_an_html_page_is_refused_whatever_its_content_type(server, tmp_path, fault):
    source = source_for(server)
    server.fail(path_of(server, source, "2020-09"), fault)
    with pytest.raises(
        SourceError, match=r"^green 2020-09: .*2020-09\.csv\.gz returned an HTML page, not the data file$"
    ):
        fetch(source, "2020-09", tmp_path)
    assert len(server.requests) == 1


def test_a_file_of_the_wrong_form_is_refused(server, tmp_path):
    source = source_for(server)
    url = f"{server.url}/releases/green/green_tripdata_2020-09.csv.gz"
    with pytest.raises(
        SourceError, match=r"green 2020-09: .* is not a parquet file \(it starts with b'\\x1f\\x8b"
    ):
        source.download(url, tmp_path / "f", "green 2020-09", "parquet")
    url = f"{server.url}/trip-data/green_tripdata_2024-01.parquet"
    with pytest.raises(
        SourceError, match=r"green 2024-01: .* is not a gzip-compressed CSV \(it starts with b'PAR1"
    ):
        source.download(url, tmp_path / "f", "green 2024-01", "csv")


def test_probe_reads_the_version_with_one_head_request(server, published):
    source = source_for(server)
    file = source.locate(GREEN, "2020-10")
    served = published / "releases/green/green_tripdata_2020-10.csv.gz"
    version = source.probe(file)
    assert version == FileVersion(
        f'"{hashlib.md5(served.read_bytes()).hexdigest()}"',
        email.utils.formatdate(served.stat().st_mtime, usegmt=True),
        served.stat().st_size,
    )
    assert server.requests == [("HEAD", "/releases/green/green_tripdata_2020-10.csv.gz")]


@pytest.mark.faults
@pytest.mark.parametrize("status", ["404", "403"])
def test_probe_of_a_month_not_published_is_none(server, status):
    source = source_for(server)
    server.fail(path_of(server, source, "2020-10"), status)
    assert source.probe(source.locate(GREEN, "2020-10")) is None


@pytest.mark.faults
@pytest.mark.parametrize(
    ("fault", "error"), [("500", "answered HTTP 500"), ("drop", "failed: .*Connection aborted")]
)
def test_probe_of_an_unreachable_source_is_unavailable_and_not_retried(server, fault, error):
    source = source_for(server)
    server.fail(path_of(server, source, "2020-10"), fault)
    with pytest.raises(SourceUnavailable, match=rf"^green 2020-10: HEAD .*2020-10\.csv\.gz {error}"):
        source.probe(source.locate(GREEN, "2020-10"))
    assert len(server.requests) == 1


def test_a_version_id_changes_with_each_of_its_parts_and_reads_back_from_metadata():
    version = FileVersion('"abc"', "Tue, 01 Dec 2020 10:00:00 GMT", 1234)
    others = [
        FileVersion('"abd"', version.last_modified, version.bytes),
        FileVersion(version.etag, "Tue, 01 Dec 2020 10:00:01 GMT", version.bytes),
        FileVersion(version.etag, version.last_modified, 1235),
        FileVersion(None, None, None),
    ]
    assert len({version.id, *(other.id for other in others)}) == 5
    assert version.id == FileVersion('"abc"', "Tue, 01 Dec 2020 10:00:00 GMT", 1234).id
    assert str(version) == 'ETag "abc", Last-Modified Tue, 01 Dec 2020 10:00:00 GMT, 1234 bytes'
    metadata = {"source_etag": '"abc"', "source_last_modified": version.last_modified, "source_bytes": 1234}
    assert FileVersion.of_materialization(metadata) == version
    # A landed file's materialization: no ETag recorded.
    assert FileVersion.of_materialization({"source_etag": "", "source_bytes": 0}) == FileVersion(
        None, None, None
    )


# The landing zone ----------------------------------------------------------------------------------


def landed(folder: Path, name: str, data: bytes) -> Path:
    file = folder / "lake/landing" / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    return file


def test_a_landed_file_is_copied_and_identified(published, tmp_path):
    served = published / "releases/green/green_tripdata_2020-11.csv.gz"
    file = landed(tmp_path, served.name, served.read_bytes())
    os.utime(file, ns=(1_606_816_800_123_456_000, 1_606_816_800_123_456_000))
    source = TaxiSource()
    located = source.locate(GREEN, "2020-11", file.as_posix())
    assert located == SourceFile("landing", "csv", file.as_posix(), "green 2020-11 (landed)")
    download = source.fetch(located, tmp_path / "work")
    assert download.path.read_bytes() == served.read_bytes()
    assert (download.bytes, download.sha256, download.etag) == (
        served.stat().st_size,
        sha256_of(served),
        None,
    )
    assert download.last_modified == "2020-12-01T10:00:00.123456+00:00"  # the file's modification time


def test_a_landed_file_must_be_named_as_the_month_it_is_used_for(tmp_path):
    source = TaxiSource()
    with pytest.raises(
        SourceError, match=r"^landed file /x/green_tripdata_2020-11\.csv\.gz is not green 2020-10$"
    ):
        source.locate(GREEN, "2020-10", "/x/green_tripdata_2020-11.csv.gz")
    with pytest.raises(
        SourceError, match=r"^landed file /x/trips\.csv: trips\.csv: not named like a source file"
    ):
        source.locate(GREEN, "2020-10", "/x/trips.csv")


def test_a_landed_file_gone_or_of_the_wrong_form_is_refused(published, tmp_path):
    source = TaxiSource()
    gone = source.locate(
        GREEN, "2020-10", (tmp_path / "lake/landing/green_tripdata_2020-10.csv.gz").as_posix()
    )
    with pytest.raises(
        SourceError,
        match=r"^green 2020-10 \(landed\): cannot read .*green_tripdata_2020-10\.csv\.gz: landed file .* does not exist$",
    ):
        source.fetch(gone, tmp_path / "work")

    parquet = (published / "trip-data/green_tripdata_2024-01.parquet").read_bytes()
    file = landed(tmp_path, "green_tripdata_2020-10.csv.gz", parquet)
    with pytest.raises(SourceError, match=r"^green 2020-10 \(landed\): .* is not a gzip-compressed CSV"):
        source.fetch(source.locate(GREEN, "2020-10", file.as_posix()), tmp_path / "work")
    page = landed(tmp_path, "green_tripdata_2020-09.csv.gz", HTML_PAGE)
    with pytest.raises(SourceError, match=r"returned an HTML page, not the data file$"):
        source.fetch(source.locate(GREEN, "2020-09", page.as_posix()), tmp_path / "work")


def test_a_landed_name_says_dataset_month_and_form():
    assert landing.parse("green_tripdata_2020-10.csv.gz") == landing.LandedName(GREEN, "2020-10", "csv")
    assert landing.parse("fhvhv_tripdata_2019-02.parquet") == landing.LandedName(FHVHV, "2019-02", "parquet")
    shape = "not named like a source file (<dataset>_tripdata_<YYYY-MM>.csv.gz or .parquet)"
    for name, error in [
        ("green_tripdata_2020-10.csv", shape),
        ("green_2020-10.parquet", shape),
        (
            "purple_tripdata_2020-10.parquet",
            "unknown dataset 'purple', not one of ['fhv', 'fhvhv', 'green', 'yellow']",
        ),
        (
            "fhvhv_tripdata_2019-01.parquet",
            "2019-01 is not a month of fhvhv (2019-02 to the last complete month)",
        ),
        (
            "green_tripdata_2999-01.parquet",
            "2999-01 is not a month of green (2013-08 to the last complete month)",
        ),
    ]:
        with pytest.raises(landing.BadLandedName) as raised:
            landing.parse(name)
        assert str(raised.value) == f"{name}: {error}"


def test_the_landing_zone_lists_its_files_by_name_and_not_the_processed_ones(tmp_path):
    assert landing.list_landed(str(tmp_path / "lake")) == []  # no landing folder yet
    b = landed(tmp_path, "b.txt", b"bb")
    a = landed(tmp_path, "a.parquet", b"a")
    landed(tmp_path, "processed/c.parquet", b"c")
    listed = landing.list_landed(str(tmp_path / "lake"))
    assert [(f.uri, f.name, f.size, f.mtime_ns) for f in listed] == [
        (a.as_posix(), "a.parquet", 1, a.stat().st_mtime_ns),
        (b.as_posix(), "b.txt", 2, b.stat().st_mtime_ns),
    ]
    assert (
        listed[0].version
        != landing.LandedFile(a.as_posix(), "a.parquet", 1, a.stat().st_mtime_ns + 1).version
    )


@pytest.mark.faults
def test_a_retry_in_a_run_is_one_warning_in_the_runs_event_log(server, published, tmp_path):
    """The source serving a run logs its retries in the run's event log (its init context's log), once
    each: what, where, which try and the wait."""
    path = "/releases/green/green_tripdata_2020-11.csv.gz"
    server.fail(path, "503")

    @dg.asset
    def month(taxi_source: TaxiSource) -> int:
        return fetch(taxi_source, "2020-11", tmp_path).bytes

    with dg.instance_for_test() as instance:
        result = dg.materialize([month], resources={"taxi_source": source_for(server)}, instance=instance)
        warnings = [
            event.user_message
            for event in instance.all_logs(result.run_id)
            if event.level == logging.WARNING and event.step_key == "month"
        ]
    served = published / path.lstrip("/")
    assert result.output_for_node("month") == served.stat().st_size
    assert warnings == [
        f"green 2020-11 ({server.url}{path}): try 1 failed with HTTP 503; trying again in 0.01 s"
    ]
