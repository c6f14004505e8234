"""IO managers: the lake, PostgreSQL and the warehouse; generic, no taxi knowledge.

A partitioned asset names its DATE column in definition metadata `PARTITION_COLUMN`: each IO
manager stores a partition's rows by that column's values inside the partition's time window. An asset
whose naive timestamps are local time names the zone (an IANA name) in `TIME_ZONE`, for the column
descriptions that say so.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pyarrow.dataset as ds

PARTITION_COLUMN = "partition_column"
TIME_ZONE = "time_zone"
# A dataset read from the lake names in its schema metadata the table metadata file it was read at: a
# warehouse's `<table>_lake` table over the lake is defined on it (the version the warehouse loaded).
LAKE_METADATA_FILE = b"lake_metadata_file"


def time_window(partitions_def: dg.PartitionsDefinition, key: str) -> dg.TimeWindow:
    """The time window of partition `key`: a `PARTITION_COLUMN` needs time-window partitions."""
    if not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        raise TypeError(f"{PARTITION_COLUMN} needs time-window partitions, not {partitions_def}")
    return partitions_def.time_window_for_partition_key(key)


# The statuses of a run whose steps may still publish.
RUNNING = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


def refuse_if_run_ended(context: dg.OutputContext) -> None:
    """Refuse to publish an output of a run that no longer runs (terminated, or failed meanwhile): on
    Celery the steps of a terminated run go on in their workers (dagster-celery revokes their tasks
    without terminating them), and their publish must not land after the run ended. A context built
    outside a run (a unit test's) has no run to ask."""
    try:
        instance = context.step_context.instance
    except dg.DagsterInvariantViolationError:
        return
    run = instance.get_run_by_id(context.run_id)
    if run is not None and run.status not in RUNNING:
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else []
        raise dg.Failure(
            description=f"{context.asset_key.to_user_string()} {', '.join(keys)} not published: run "
            f"{context.run_id} is {run.status.value}",
            allow_retries=False,  # the run is over: no retry of the step can publish
        )


def upstream_metadata(context: dg.InputContext) -> Mapping[str, Any]:
    """The definition metadata of the output an input loads."""
    if context.upstream_output is None:
        raise TypeError(f"{context.name}: an IO manager input needs the output it loads")
    return context.upstream_output.definition_metadata


def lake_metadata_file(rows) -> str | None:
    """The newest lake metadata file that `rows` (a dataset, or a dict of them by partition) were read
    at; None when they were not read from the lake. Its name starts with the table's metadata version."""
    parts = rows.values() if isinstance(rows, dict) else [rows]
    named = [
        part.schema.metadata[LAKE_METADATA_FILE]
        for part in parts
        if isinstance(part, ds.Dataset) and LAKE_METADATA_FILE in (part.schema.metadata or {})
    ]
    return max(named).decode() if named else None
