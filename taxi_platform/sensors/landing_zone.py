"""The landing zone's sensors: `landing_sensor` requests the month of each file dropped into the lake's
`landing/`; `landed_file_mover` moves the file to `landing/processed/` once its run succeeded.

A file is taken once it holds still: the same size, modification time (and, in a folder, status change
time) seen at least `stable_seconds` ago, so a file still being copied is left alone. Its run key is the
file's name and sha256 (read once per version, when it is stable): a corrected file is requested again
even with the size and modification time of the old one, an unchanged one never twice (Dagster launches
a sensor's run key once, so neither a reset cursor nor the same file dropped again runs it twice).
A badly named file, or one whose path leads out of `landing/` (a symlink), is reported on every tick
(sensor log and skip reason) until it is renamed or removed; an unreadable one fails its run, naming it.

Moving only after the whole run succeeded keeps a file whose run failed in `landing/`, its error in that
run; the mover's cursor only advances when the move is done, so a move that fails is tried again, and
moving twice is harmless. The mover moves only a file directly in `landing/` (`inside_landing`): a run
tagged with any other path is logged as an error and nothing is moved.

Cursor (JSON, the landing sensor's whole state): per file still in `landing/`, its `Seen` record. An
unreadable cursor is logged as a warning and replaced.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dagster as dg
from pydantic import TypeAdapter, ValidationError

from taxi_platform.lake.resource import Lake
from taxi_platform.profiles import SensorSettings
from taxi_platform.sources.landing import (
    LANDED_FILE_TAG,
    BadLandedName,
    OutsideLanding,
    inside_landing,
    list_landed,
    move_to_processed,
    parse,
    sha256_of,
)


@dataclass
class Seen:
    """What the landing sensor knows of a file in `landing/`."""

    version: str  # LandedFile.version
    since: float  # when this version was first seen (seconds since the epoch)
    sha256: str | None = None  # of this version, read once it was stable
    requested: str | None = None  # the sha256 last requested


CURSOR = TypeAdapter(dict[str, Seen])


def read_cursor(context: dg.SensorEvaluationContext) -> dict[str, Seen]:
    """The files the landing sensor has seen; none, with a warning, when its cursor is unreadable."""
    if not context.cursor:
        return {}
    try:
        return CURSOR.validate_json(context.cursor)
    except ValidationError as error:
        context.log.warning(
            f"landing_sensor: unreadable cursor ({error.error_count()} error(s), first: "
            f"{error.errors()[0]['msg']}), starting afresh: files in landing/ are requested again "
            "once stable, under run keys of their content, so none runs twice"
        )
        return {}


def build_landing_sensor(
    jobs: Mapping,
    minimum_interval_seconds: int,
    stable_seconds: int = SensorSettings.landing_stable_seconds,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """`stable_seconds`: how long a file must hold still before it is taken; `clock`: the current time."""

    @dg.sensor(
        name="landing_sensor",
        jobs=list(jobs.values()),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests the month of each file dropped into the lake's landing/ folder "
        "(<dataset>_tripdata_<YYYY-MM>.csv.gz or .parquet), read from that file, once it has held "
        f"still for {stable_seconds} s.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, lake: Lake):
        root, gcs_endpoint = lake.root, lake.gcs_endpoint
        before, now = read_cursor(context), clock()
        seen: dict[str, Seen] = {}
        run_requests, settling, waiting, bad = [], [], [], []
        for file in list_landed(root, gcs_endpoint):
            try:
                name = parse(file.name)
                inside_landing(file.uri, root)
            except (BadLandedName, OutsideLanding) as error:
                context.log.warning(f"landing/ holds a file it cannot take: {error}")
                bad.append(str(error))
                continue
            known = before.get(file.name)
            if known is None or known.version != file.version:
                known = Seen(file.version, now, requested=known.requested if known else None)
            seen[file.name] = known
            if now - known.since < stable_seconds:
                settling.append(file.name)
                continue
            if known.sha256 is None:
                try:
                    known.sha256 = sha256_of(file.uri, gcs_endpoint)
                except OSError as error:
                    context.log.warning(f"landing/{file.name} cannot be read: {error}")
                    bad.append(f"{file.name}: cannot be read: {error}")
                    continue
            if known.sha256 == known.requested:
                waiting.append(file.name)
                continue
            known.requested = known.sha256
            run_requests.append(
                dg.RunRequest(
                    run_key=f"landing:{file.name}:{known.sha256}",
                    job_name=jobs[name.spec.name].name,
                    partition_key=name.month,
                    tags={"taxi/trigger": "landed", LANDED_FILE_TAG: file.uri},
                )
            )
        cursor = CURSOR.dump_json(seen).decode()
        if run_requests:
            return dg.SensorResult(run_requests=run_requests, cursor=cursor)
        reasons = [f"not yet still for {stable_seconds} s (being copied?): {settling}"] if settling else []
        reasons += [f"already requested, running or failed (see their runs): {waiting}"] if waiting else []
        reasons += [f"cannot take: {'; '.join(bad)}"] if bad else []
        return dg.SensorResult(skip_reason="landing/: " + (" | ".join(reasons) or "no files"), cursor=cursor)

    return landing_sensor


def build_landed_file_mover(jobs: Mapping, minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="landed_file_mover",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=list(jobs.values()),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Moves a landed file to landing/processed/ once its run succeeded.",
    )
    def landed_file_mover(context: dg.RunStatusSensorContext, lake: Lake):
        uri = context.dagster_run.tags.get(LANDED_FILE_TAG)
        if not uri:
            return
        try:
            moved = move_to_processed(uri, lake.root, lake.gcs_endpoint)
        except OutsideLanding as error:
            context.log.error(f"run {context.dagster_run.run_id}: nothing moved: {error}")
            return
        context.log.info(f"{uri} -> {moved}" if moved else f"{uri} was already moved")

    return landed_file_mover
