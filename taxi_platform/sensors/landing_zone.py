"""`landing_sensor`: requests the month of each file dropped into the lake's `landing/`. What it does and
how to use it: README.md, Automation and Reliability.

Holding still means the same size, modification time (and, in a folder, status change time) seen at
least `stable_seconds` ago. The sha256 in the run key is read once per version, once it is stable, so a
corrected file is requested again even with the size and modification time of the old one; Dagster
launches a sensor's run key once, so neither a reset cursor nor the same file dropped again runs it
twice. A file whose path leads out of `landing/` (a symlink) is reported like a badly named one; an
unreadable one fails its run, naming it. Cursor: per file still in `landing/`, its `Seen` record.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dagster as dg

from taxi_platform.lake.resource import Lake
from taxi_platform.profiles import SensorSettings
from taxi_platform.sensors.cursor import Cursor
from taxi_platform.sources.landing import (
    LANDED_FILE_TAG,
    BadLandedName,
    OutsideLanding,
    inside_landing,
    list_landed,
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


CURSOR = Cursor(
    "landing_sensor",
    dict[str, Seen],
    afresh="files in landing/ are requested again once stable, under run keys of their content, so "
    "none runs twice",
)


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
        before, now = CURSOR.read(context) or {}, clock()
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
        cursor = CURSOR.dump(seen)
        if run_requests:
            return dg.SensorResult(run_requests=run_requests, cursor=cursor)
        reasons = [f"not yet still for {stable_seconds} s (being copied?): {settling}"] if settling else []
        reasons += [f"already requested, running or failed (see their runs): {waiting}"] if waiting else []
        reasons += [f"cannot take: {'; '.join(bad)}"] if bad else []
        return dg.SensorResult(skip_reason="landing/: " + (" | ".join(reasons) or "no files"), cursor=cursor)

    return landing_sensor
