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
