"""`vacuum_lake` and its daily schedule: the lake's versions older than the retention
(TAXI_LAKE_RETENTION_DAYS) are forgotten, and the files no remaining version reads are removed, with
those a killed writer left; the current version is never touched (`Lake.vacuum`). README, "Operating".
"""

import dagster as dg

from taxi_platform.assets.zones import ZONES
from taxi_platform.datasets import DATASETS
from taxi_platform.lake.resource import Lake


@dg.op(description="Vacuum every table of the lake; each table's removed files are counted in the log.")
def vacuum_lake_op(context: dg.OpExecutionContext, lake: Lake) -> dg.Output:
    tables = [(ZONES, False)]
    tables += [(spec.raw_key, True) for spec in DATASETS.values()]
    tables += [(key, False) for spec in DATASETS.values() for key in (spec.clean_key, spec.rejected_key)]
    removed, metadata_removed = {}, 0
    for key, versioned in tables:
        vacuumed = lake.vacuum(key, versioned)
        name = key.to_user_string()
        removed[name] = len(vacuumed.data_files)
        metadata_removed += len(vacuumed.metadata_files)
        context.log.info(
            f"{name}: {removed[name]} data files and {len(vacuumed.metadata_files)} metadata files removed"
        )
    return dg.Output(
        None,
        metadata={
            "files_removed": sum(removed.values()),
            "metadata_files_removed": metadata_removed,
            **removed,
        },
    )


@dg.job(name="vacuum_lake", description="Remove the lake's files that no version within the retention reads.")
def vacuum_lake():
    vacuum_lake_op()


vacuum_daily = dg.ScheduleDefinition(
    name="vacuum_lake_daily",
    job=vacuum_lake,
    cron_schedule="30 3 * * *",
    description="Vacuums the lake every night (versions are kept for TAXI_LAKE_RETENTION_DAYS).",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
