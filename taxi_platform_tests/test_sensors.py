"""The source and landing-zone sensors, tick by tick, against a real HTTP source and a real lake folder."""

import gzip
import hashlib
import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from synthetic.source_server import SourceServer
from taxi_platform.datasets import DATASETS, GREEN
from taxi_platform.definitions import defs
from taxi_platform.jobs import build_ingest_job
from taxi_platform.lake.resource import Lake
from taxi_platform.profiles import SensorSettings, sensor_settings
from taxi_platform.sensors.landing_zone import build_landing_sensor
from taxi_platform.sensors.new_months import build_source_sensor, months_to_check
from taxi_platform.sources.landing import LANDED_FILE_TAG, move_to_processed
from taxi_platform.sources.public import TaxiSource
from taxi_platform_tests.helpers import (
    course_counts,
    failure_message,
    green_trip_keys,
    materializations,
    retries,
)

pytestmark = pytest.mark.fast

JOBS = {"green": build_ingest_job(GREEN)}
DEFS = defs()  # the code location the run requests resolve against


def months() -> list[str]:
    """Green's months now, by the platform's own partitions (New York time), as the sensors see them."""
    return list(GREEN.partitions_def.get_partition_keys())


def published_months(root: Path) -> list[str]:
    """The green months a source folder publishes: CSV.gz releases, and the TLC's parquet."""
    files = [
        *root.glob("releases/green/green_tripdata_*.csv.gz"),
        *root.glob("trip-data/green_tripdata_*.parquet"),
    ]
    return sorted(file.name.removeprefix("green_tripdata_")[:7] for file in files)


@pytest.fixture
def server(published, tmp_path):
    """A source of its own, so a test can republish a month without touching other tests' files."""
    with SourceServer(tmp_path / "overlay", published) as server:
        yield server


@pytest.fixture
def published_green(published) -> list[str]:
    return published_months(published)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def source_of(server) -> TaxiSource:
    return TaxiSource(releases_url=f"{server.url}/releases", tlc_url=server.url)


def tick(sensor, instance, cursor=None, **resources):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, definitions=DEFS
    ) as context:
        result = sensor.evaluate_tick(context)
    return result, result.cursor


def requested(result) -> dict[str, dict]:
    return {r.partition_key: r for r in result.run_requests}


def republish(server, month: str) -> None:
    """Publish different bytes of the same data (a re-compressed file): a new ETag and size."""
    path = server.roots[0] / f"releases/green/green_tripdata_{month}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gzip.decompress(server.find(f"/releases/green/green_tripdata_{month}.csv.gz").read_bytes())
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))


@pytest.mark.parametrize(
    ("now", "last"),
    [
        (datetime(2024, 3, 1, 0, 30, tzinfo=UTC), "2024-01"),  # 19:30 on Feb 29 in New York
        (datetime(2024, 3, 1, 5, 0, tzinfo=UTC), "2024-02"),  # midnight in New York (EST)
        (datetime(2024, 7, 1, 3, 59, tzinfo=UTC), "2024-05"),  # 23:59 on June 30 in New York (EDT)
        (datetime(2024, 7, 1, 4, 0, tzinfo=UTC), "2024-06"),
    ],
)
def test_partitions_end_with_the_last_complete_month_in_new_york(now, last):
    for spec in DATASETS.values():
        keys = spec.partitions_def.get_partition_keys(current_time=now)
        assert (keys[0], keys[-1]) == (spec.first_month, last)


def test_the_first_tick_requests_every_published_month_and_the_same_cursor_nothing_more(
    server, instance, published_green
):
    sensor = build_source_sensor(GREEN, JOBS["green"], 60, checks_per_tick=1000)
    result, cursor = tick(sensor, instance, taxi_source=source_of(server))
    runs = requested(result)
    assert sorted(runs) == published_green
    assert runs["2020-11"].run_key.startswith("green_trips:2020-11:")
    assert runs["2020-11"].tags["taxi/trigger"] == "published"
    assert sorted(server.requests) == sorted(("HEAD", source_path(month)) for month in months())
    state = json.loads(cursor)
    assert sorted(state["requested"]) == published_green and state["sweep"] is None

    again, same = tick(sensor, instance, cursor, taxi_source=source_of(server))  # a restart: same cursor
    assert again.run_requests == [] and json.loads(same) == state
    checked = len(months())
    assert again.skip_message == (
        f"green: no new or changed month among the {checked} checked: {len(published_green)} unchanged "
        f"since requested or materialized, {checked - len(published_green)} not published, 0 unreachable"
    )


def source_path(month: str) -> str:
    """The path the test source serves a green month at (the releases for their months, else the TLC)."""
    if GREEN.releases and month in GREEN.releases:
        return f"/releases/green/green_tripdata_{month}.csv.gz"
    return f"/trip-data/green_tripdata_{month}.parquet"


def test_an_unreachable_month_is_counted_and_checked_again_later(server, instance, published_green):
    sensor = build_source_sensor(GREEN, JOBS["green"], 60, checks_per_tick=1000)
    server.fail(source_path("2020-11"), "503")
    result, cursor = tick(sensor, instance, taxi_source=source_of(server))
    assert sorted(requested(result)) == [m for m in published_green if m != "2020-11"]
    again, _ = tick(sensor, instance, cursor, taxi_source=source_of(server))
    assert sorted(requested(again)) == ["2020-11"]


def test_a_republished_month_is_requested_once_with_a_new_run_key(server, instance):
    sensor = build_source_sensor(GREEN, JOBS["green"], 60, checks_per_tick=1000)
    first, cursor = tick(sensor, instance, taxi_source=source_of(server))
    republish(server, "2020-11")
    second, cursor = tick(sensor, instance, cursor, taxi_source=source_of(server))
    (run,) = second.run_requests
    assert run.partition_key == "2020-11" and run.tags["taxi/trigger"] == "republished"
    assert run.run_key != requested(first)["2020-11"].run_key
    third, _ = tick(sensor, instance, cursor, taxi_source=source_of(server))
    assert third.run_requests == []


def test_a_month_materialized_from_the_same_file_is_not_requested(server, instance, published_green):
    source = source_of(server)
    version = source.probe(source.locate(GREEN, "2020-10"))
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            ["raw", "green_trips"],
            partition="2020-10",
            metadata={
                "source_etag": version.etag,
                "source_last_modified": version.last_modified,
                "source_bytes": version.bytes,
            },
        )
    )
    sensor = build_source_sensor(GREEN, JOBS["green"], 60, checks_per_tick=1000)
    result, cursor = tick(sensor, instance, taxi_source=source)
    assert sorted(requested(result)) == [m for m in published_green if m != "2020-10"]
    assert "2020-10" in json.loads(cursor)["requested"]  # adopted: a later republication is noticed


def test_each_tick_sends_a_bounded_number_of_heads_and_the_sweep_covers_every_month(
    server, instance, published_green
):
    sensor = build_source_sensor(GREEN, JOBS["green"], 60, checks_per_tick=24)
    cursor, seen, ticks = None, [], 0
    while sorted(seen) != published_green:
        before = len(server.requests)
        result, cursor = tick(sensor, instance, cursor, taxi_source=source_of(server))
        assert len(server.requests) - before == 24
        seen += list(requested(result))
        ticks += 1
        assert ticks <= -(-(len(months()) - 3) // 21), "the sweep must cover every month"
    assert len(seen) == len(set(seen))  # each month requested once


def test_the_sweep_takes_the_newest_months_then_continues_where_it_stopped():
    months = [f"2020-{m:02d}" for m in range(1, 11)]
    checked, sweep = months_to_check(months, None, 5)
    assert checked == ["2020-10", "2020-09", "2020-08", "2020-07", "2020-06"] and sweep == "2020-05"
    checked, sweep = months_to_check(months, sweep, 5)
    assert checked == ["2020-10", "2020-09", "2020-08", "2020-05", "2020-04"] and sweep == "2020-03"
    checked, sweep = months_to_check(months, sweep, 6)
    assert checked[3:] == ["2020-03", "2020-02", "2020-01"] and sweep == "2020-07"  # wraps around
    assert months_to_check(months, sweep, 10) == (months, None)


NOW = datetime(2024, 7, 1, 12, tzinfo=UTC).timestamp()  # the landing sensor's clock in these tests


class Logged(logging.Handler):
    """What a sensor logged, as (level name, message)."""

    def __init__(self):
        super().__init__()
        self.messages: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelname, record.getMessage()))


def landing_tick(lake: Path, cursor: str | None = None, *, stable_seconds: int = 0, now: float = NOW):
    """One tick of the landing sensor at `now` over the lake folder `lake`: its result (with the new
    cursor) and what it logged."""
    sensor = build_landing_sensor(JOBS, 30, stable_seconds, clock=lambda: now)
    logged = Logged()
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            definitions=DEFS,
            resources={"lake": Lake(root=str(lake))},
        ) as context,
    ):
        context.log.addHandler(logged)
        result = sensor.evaluate_tick(context)
    return result, logged.messages


def test_a_landed_file_is_requested_once_and_badly_named_ones_are_reported(tmp_path, published):
    landing = tmp_path / "lake/landing"
    (landing / "processed").mkdir(parents=True)
    good = landing / "green_tripdata_2020-11.csv.gz"
    shutil.copy(published / "releases/green/green_tripdata_2020-11.csv.gz", good)
    for bad in ("notes.txt", "purple_tripdata_2020-01.parquet", "green_tripdata_2999-01.parquet"):
        (landing / bad).write_text("x")
    (landing / "processed/green_tripdata_2020-10.csv.gz").write_text("done")

    result, _ = landing_tick(tmp_path / "lake")
    (run,) = result.run_requests
    assert (run.job_name, run.partition_key) == ("green_ingest", "2020-11")
    assert run.tags[LANDED_FILE_TAG] == good.as_posix()
    assert run.run_key == f"landing:{good.name}:{hashlib.sha256(good.read_bytes()).hexdigest()}"

    os.utime(good, ns=(1, 1))  # touched, the same bytes: not requested again
    again, logged = landing_tick(tmp_path / "lake", result.cursor)
    assert again.run_requests == []
    assert again.skip_message == (
        "landing/: already requested, running or failed (see their runs): ['green_tripdata_2020-11.csv.gz'] | "
        "cannot take: green_tripdata_2999-01.parquet: 2999-01 is not a month of green (2013-08 to the last "
        "complete month); notes.txt: not named like a source file (<dataset>_tripdata_<YYYY-MM>.csv.gz or "
        ".parquet); purple_tripdata_2020-01.parquet: unknown dataset 'purple', not one of "
        "['fhv', 'fhvhv', 'green', 'yellow']"
    )
    assert [level for level, _ in logged] == ["WARNING"] * 3  # one a badly named file

    lake = str(tmp_path / "lake")
    assert move_to_processed(good.as_posix(), lake) == (landing / "processed" / good.name).as_posix()
    assert not good.exists() and (landing / "processed" / good.name).exists()
    assert move_to_processed(good.as_posix(), lake) is None  # moving twice is harmless
    gone, _ = landing_tick(tmp_path / "lake", again.cursor)
    assert "green_tripdata_2020-11.csv.gz" not in json.loads(gone.cursor)  # forgotten once moved


def test_the_landing_window_is_a_setting_of_its_own():
    assert sensor_settings({}).landing_stable_seconds == SensorSettings.landing_stable_seconds == 30
    settings = sensor_settings({"TAXI_LANDING_STABLE_SECONDS": "0", "TAXI_SENSOR_INTERVAL_SECONDS": "1"})
    assert (settings.landing_stable_seconds, settings.landing_interval_seconds) == (0, 1)
    with pytest.raises(ValueError, match="^TAXI_LANDING_STABLE_SECONDS must be 0 or more, not -1$"):
        sensor_settings({"TAXI_LANDING_STABLE_SECONDS": "-1"})


def run_landed(uri: str):
    definitions = defs()
    return dg.materialize(
        list(definitions.assets),
        selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in green_trip_keys())),
        resources=definitions.resources,
        partition_key="2020-11",
        tags={LANDED_FILE_TAG: uri},
        raise_on_error=False,
    )


def test_the_raw_asset_reads_the_landed_file_and_an_unreadable_one_fails_naming_it(
    taxi_env, published, source_server
):
    landing = taxi_env / "lake/landing"
    landing.mkdir(parents=True)
    good = landing / "green_tripdata_2020-11.csv.gz"
    shutil.copy(published / "releases/green/green_tripdata_2020-11.csv.gz", good)
    before = len(source_server.requests)
    result = run_landed(good.as_posix())
    meta = materializations(result)
    expected = course_counts(good, "2020-11")
    assert meta[("raw/green_trips", "2020-11")]["source_kind"] == "landing"
    assert meta[("raw/green_trips", "2020-11")]["dagster/row_count"] == expected["raw"]
    assert meta[("clean/green_trips", "2020-11")]["dagster/row_count"] == expected["clean"]
    assert len(source_server.requests) == before  # read from the landing zone, not the source

    broken = landing / "green_tripdata_2020-12.csv.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    failed = dg.materialize(
        [*defs().assets],
        selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in green_trip_keys())),
        resources=defs().resources,
        partition_key="2020-12",
        tags={LANDED_FILE_TAG: broken.as_posix()},
        raise_on_error=False,
    )
    assert not failed.success
    message = failure_message(failed)
    assert "green 2020-12 (landed)" in message and broken.as_posix() in message
    assert len(failed.get_step_failure_events()) == 1
    assert retries(failed) == []  # retrying cannot help

    wrong_month = run_landed(broken.as_posix())
    assert not wrong_month.success
    assert f"landed file {broken.as_posix()} is not green 2020-11" in failure_message(wrong_month)

    elsewhere = taxi_env / "green_tripdata_2020-11.csv.gz"  # a good file, outside landing/
    shutil.copy(good, elsewhere)
    outside = run_landed(elsewhere.as_posix())
    assert not outside.success and materializations(outside) == {}
    assert str(elsewhere) in failure_message(outside) and retries(outside) == []
