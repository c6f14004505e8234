"""`<dataset>_monthly`: the ingest job of the newest complete month, on the first of each month, for
users who prefer a schedule to the source sensor (off by default). It runs in the time zone of the
dataset's partitions; the TLC publishes a month some weeks after it ends, so the run fails with "not
published" until then: the source sensor does not have that problem."""

import dagster as dg

from taxi_platform.datasets import DatasetSpec


def build_monthly_schedule(spec: DatasetSpec, job):
    return dg.build_schedule_from_partitioned_job(
        job,
        name=f"{spec.name}_monthly",
        description=f"Ingests the newest complete {spec.name} month on the first of each month.",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
