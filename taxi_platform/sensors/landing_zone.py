"""The landing zone's sensors: `landing_sensor` requests the month of each file dropped into the lake's
`landing/`; `landed_file_mover` moves the file to `landing/processed/` once its run succeeded.

Moving only after the whole run succeeded (raw and clean stored, blocking checks passed) keeps a file
whose run failed in `landing/`, its error in that run; the mover's cursor only advances when the move
is done, so a move that fails is tried again, and moving twice is harmless. A file is requested once
per version (size and modification time): the landing sensor's cursor holds the version requested of
each file still in `landing/`; replacing the file requests it again. A badly named file is reported
on every tick (sensor log and skip reason) until it is renamed or removed; an unreadable one fails its
run, naming the file.
"""

import json
from collections.abc import Mapping

import dagster as dg

from taxi_platform.io_managers.lake import LakeIOManager
from taxi_platform.sources.landing import (
    LANDED_FILE_TAG,
    BadLandedName,
    list_landed,
    move_to_processed,
    parse,
)


def build_landing_sensor(jobs: Mapping, minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_sensor",
        jobs=list(jobs.values()),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests the month of each file dropped into the lake's landing/ folder "
        "(<dataset>_tripdata_<YYYY-MM>.csv.gz or .parquet), read from that file.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, lake_io_manager: dg.ResourceParam[LakeIOManager]):
        requested: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        present, run_requests, waiting, bad = {}, [], [], []
        for file in list_landed(lake_io_manager.root, lake_io_manager.gcs_endpoint):
            try:
                name = parse(file.name)
            except BadLandedName as error:
                context.log.warning(f"landing/ holds a file it cannot take: {error}")
                bad.append(str(error))
                continue
            present[file.name] = file.version
            if requested.get(file.name) == file.version:
                waiting.append(file.name)
                continue
            run_requests.append(
                dg.RunRequest(
                    run_key=f"landing:{file.name}:{file.version}",
                    job_name=jobs[name.spec.name].name,
                    partition_key=name.month,
                    tags={"taxi/trigger": "landed", LANDED_FILE_TAG: file.uri},
                )
            )
        cursor = json.dumps(present, sort_keys=True)
        if run_requests:
            return dg.SensorResult(run_requests=run_requests, cursor=cursor)
        reasons = [f"already requested, running or failed (see their runs): {waiting}"] if waiting else []
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
    def landed_file_mover(
        context: dg.RunStatusSensorContext, lake_io_manager: dg.ResourceParam[LakeIOManager]
    ):
        uri = context.dagster_run.tags.get(LANDED_FILE_TAG)
        if uri:
            moved = move_to_processed(uri, lake_io_manager.gcs_endpoint)
            context.log.info(f"{uri} -> {moved}" if moved else f"{uri} was already moved")

    return landed_file_mover
