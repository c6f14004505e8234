"""`landed_file_mover`: moves a landed file to `landing/processed/` once its run succeeded (README.md,
Automation).

Its cursor only advances when the move is done, so a move that fails is tried again, and moving twice is
harmless. It moves only a file directly in `landing/` (`inside_landing`): a run tagged with any other
path is logged as an error and nothing is moved.
"""

from collections.abc import Mapping

import dagster as dg

from taxi_platform.lake.resource import Lake
from taxi_platform.sources.landing import LANDED_FILE_TAG, OutsideLanding, move_to_processed


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
