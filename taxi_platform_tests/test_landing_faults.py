"""The landing zone under faults, on real files: a file still being copied, a run tag that leads out of
`landing/`, a file dropped again unchanged or corrected in place, a cursor that cannot be read."""

import hashlib
import os
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.lake.resource import Lake
from taxi_platform.sensors.landed_file_mover import build_landed_file_mover
from taxi_platform.sources.landing import LANDED_FILE_TAG, OutsideLanding, inside_landing
from taxi_platform_tests.test_sensors import JOBS, NOW, Logged, landing_tick

pytestmark = [pytest.mark.faults, pytest.mark.fast]

NAME = "green_tripdata_2020-11.csv.gz"


def land(lake: Path, data: bytes, name: str = NAME) -> Path:
    file = lake / "landing" / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    return file


def run_key(file: Path) -> str:
    return f"landing:{file.name}:{hashlib.sha256(file.read_bytes()).hexdigest()}"


def test_a_file_still_being_copied_is_taken_only_once_it_held_still_for_the_window(tmp_path):
    lake = tmp_path / "lake"
    file = land(lake, b"first half,")
    first, _ = landing_tick(lake, stable_seconds=30, now=NOW)
    assert first.run_requests == []
    assert first.skip_message == f"landing/: not yet still for 30 s (being copied?): ['{NAME}']"

    with file.open("ab") as copying:
        copying.write(b"second half")
    grown, _ = landing_tick(
        lake, first.cursor, stable_seconds=30, now=NOW + 40
    )  # changed: the window restarts
    assert grown.run_requests == []
    almost, _ = landing_tick(lake, grown.cursor, stable_seconds=30, now=NOW + 69)
    assert almost.run_requests == []

    taken, _ = landing_tick(lake, almost.cursor, stable_seconds=30, now=NOW + 70)
    (run,) = taken.run_requests
    assert (run.partition_key, run.run_key) == ("2020-11", run_key(file))
    assert file.read_bytes() == b"first half,second half"


def mover_after_success(lake: Path, tag: str) -> list[tuple[str, str]]:
    """The mover's reaction to a successful run tagged with `tag` as its landed file: what it logged."""

    @dg.op
    def ingest() -> None:
        """Stands for the ingest run: the mover reads only its tags and its success."""

    @dg.job
    def landed_run():
        ingest()

    mover, logged = build_landed_file_mover(JOBS, 30), Logged()
    with dg.instance_for_test() as instance:
        result = landed_run.execute_in_process(instance=instance, tags={LANDED_FILE_TAG: tag})
        with dg.build_run_status_sensor_context(
            sensor_name=mover.name,
            dagster_event=result.get_run_success_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"lake": Lake(root=str(lake))},
        ) as context:
            context.log.addHandler(logged)
            mover(context)
    return logged.messages


def test_the_mover_moves_a_landed_file_and_refuses_any_path_outside_landing(tmp_path):
    lake = tmp_path / "lake"
    landed = land(lake, b"landed")
    assert mover_after_success(lake, landed.as_posix()) == [
        ("INFO", f"{landed.as_posix()} -> {(lake / 'landing/processed' / NAME).as_posix()}")
    ]
    assert not landed.exists() and (lake / "landing/processed" / NAME).read_bytes() == b"landed"

    elsewhere = lake / "elsewhere" / NAME
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"not landed")
    passwd = tmp_path / "etc/passwd"  # stands for /etc/passwd: a failing mover must not move the real one
    passwd.parent.mkdir()
    passwd.write_text("root:x:0:0")
    escape = lake / "landing" / "green_tripdata_2020-12.csv.gz"
    escape.symlink_to(elsewhere)
    for tag in (f"{lake}/landing/../elsewhere/{NAME}", passwd.as_posix(), escape.as_posix()):
        ((level, message),) = mover_after_success(lake, tag)
        assert level == "ERROR" and "nothing moved" in message and tag in message
        assert message.endswith(f"is not a file directly in the landing folder {lake / 'landing'}/")
    assert elsewhere.read_bytes() == b"not landed" and passwd.read_text() == "root:x:0:0"
    assert escape.is_symlink()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "etc",
        "etc/passwd",
        "lake",
        "lake/elsewhere",
        f"lake/elsewhere/{NAME}",
        "lake/landing",
        "lake/landing/green_tripdata_2020-12.csv.gz",
        "lake/landing/processed",
        f"lake/landing/processed/{NAME}",
    ]

    result, _ = landing_tick(lake)  # the landing sensor does not take the symlink either
    assert result.run_requests == []
    assert (
        result.skip_message.startswith("landing/: cannot take: ")
        and "green_tripdata_2020-12" in result.skip_message
    )


def test_only_a_path_directly_in_landing_is_inside_it(tmp_path):
    lake = tmp_path / "lake"
    landing = lake / "landing"
    landed = land(lake, b"landed")
    assert inside_landing(landed.as_posix(), str(lake)) == landed.as_posix()
    assert inside_landing(f"{landing}/../landing/{NAME}", str(lake)) == landed.as_posix()
    (tmp_path / "elsewhere").mkdir()
    (landing / "elsewhere").symlink_to(tmp_path / "elsewhere")
    for path in (
        f"{landing}/../elsewhere/{NAME}",
        "../elsewhere",
        "/etc/passwd",
        f"{landing}/processed/{NAME}",
        f"{landing}/elsewhere/{NAME}",  # through a symlinked folder
        landing.as_posix(),
    ):
        with pytest.raises(OutsideLanding, match="is not a file directly in the landing folder") as refused:
            inside_landing(path, str(lake))
        assert str(refused.value).startswith(path)

    bucket = "gs://bucket/taxi"
    assert inside_landing(f"{bucket}/landing/{NAME}", bucket) == f"{bucket}/landing/{NAME}"
    for uri in (
        f"{bucket}/landing/../elsewhere/{NAME}",
        f"{bucket}/landing/..",
        f"{bucket}/landing/processed/{NAME}",
        f"gs://other/taxi/landing/{NAME}",
        f"{landing}/{NAME}",  # a local path for a lake in a bucket
    ):
        with pytest.raises(
            OutsideLanding, match=r"is not a file directly in the landing folder gs://bucket/taxi/landing/$"
        ):
            inside_landing(uri, bucket)


def test_an_unchanged_file_dropped_again_is_not_requested_and_a_corrected_one_is(tmp_path):
    lake = tmp_path / "lake"
    file = land(lake, b"trips, as first sent")
    first, _ = landing_tick(lake)
    (run,) = first.run_requests
    assert run.run_key == run_key(file)

    land(lake, b"trips, as first sent")  # dropped again: new modification time, the same bytes
    os.utime(file, ns=(1, 2))
    again, _ = landing_tick(lake, first.cursor)
    assert again.run_requests == []
    assert (
        again.skip_message == f"landing/: already requested, running or failed (see their runs): ['{NAME}']"
    )

    before = file.stat()
    land(lake, b"trips, now corrected")  # the same size, and the old modification time put back
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = file.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    corrected, _ = landing_tick(lake, again.cursor)
    (rerun,) = corrected.run_requests
    assert rerun.run_key == run_key(file) != run.run_key
    settled, _ = landing_tick(lake, corrected.cursor)
    assert settled.run_requests == []


@pytest.mark.parametrize(
    "cursor", ["{not json", '{"green_tripdata_2020-11.csv.gz": "an old version id"}', "[]"]
)
def test_an_unreadable_cursor_is_replaced_with_a_warning(tmp_path, cursor):
    lake = tmp_path / "lake"
    file = land(lake, b"trips")
    result, logged = landing_tick(lake, cursor)
    ((level, message),) = logged
    assert level == "WARNING" and message.startswith("landing_sensor: unreadable cursor")
    (run,) = result.run_requests  # requested under its content's run key: Dagster runs it once
    assert run.run_key == run_key(file)

    again, logged = landing_tick(lake, result.cursor)
    assert (again.run_requests, logged) == ([], [])
