"""Running the code location's assets the way Dagster does, and reading what they stored."""

import gzip
import hashlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from taxi_platform.cleaning import MonthCleaner, rejected_schema, row_hashes
from taxi_platform.datasets import DatasetSpec
from taxi_platform.definitions import defs


@dataclass(frozen=True)
class CleanMonth:
    clean: pa.Table
    rejected: pa.Table  # the clean columns plus reject_reason
    rejected_counts: dict[str, int]  # rows per rule, every rule of the dataset


def clean_month(
    raw: pa.Table,
    spec: DatasetSpec,
    month_start: datetime,
    month_end: datetime,
    relaxed: frozenset[str] = frozenset(),
) -> CleanMonth:
    """The cleaning rules applied to a whole month held in memory, batch by batch as the ingest step
    streams it through MonthCleaner."""
    cleaner = MonthCleaner(spec, month_start, month_end, relaxed)
    parts = [cleaner.split(batch) for batch in raw.to_batches()]
    clean = pa.Table.from_batches([c for c, _ in parts], spec.clean_schema)
    rejected = pa.Table.from_batches([r for _, r in parts], rejected_schema(spec))
    return CleanMonth(clean, rejected, cleaner.rejected_counts)


def trip_key(table: pa.Table) -> pa.Array:
    """The trip_key of each row of a table in the clean columns."""
    return pa.array(row_hashes(table)[0])


def materialize(*keys: str, **options):
    """Materialize the assets named by `keys` ("raw/green_trips") for one month or a range in one run."""
    return materialize_with(None, *keys, **options)


def materialize_with(
    instance,
    *keys: str,
    partition: str | None = None,
    months: tuple[str, str] | None = None,
    run_config: dict | None = None,
    raise_on_error: bool = True,
    resources: dict | None = None,
    checks: tuple[dg.AssetChecksDefinition, ...] = (),
):
    """`materialize` on a given Dagster instance (None: an ephemeral one); `resources` override
    the profile's; `checks` are asset checks to run with the assets."""
    definitions = defs()
    tags = {}
    if months:
        tags = {
            "dagster/asset_partition_range_start": months[0],
            "dagster/asset_partition_range_end": months[1],
        }
    return dg.materialize(
        [*definitions.assets, *checks],
        selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in keys)),
        resources={**definitions.resources, **(resources or {})},
        partition_key=partition,
        tags=tags,
        run_config=run_config,
        raise_on_error=raise_on_error,
        instance=instance,
    )


def green_trip_keys() -> tuple[str, ...]:
    return ("raw/green_trips", "clean/green_trips", "clean/green_trips_rejected")


def materializations(result) -> dict[tuple[str, str | None], dict]:
    """{(asset key, partition): metadata values} of a run's materializations."""
    return {
        (e.materialization.asset_key.to_user_string(), e.materialization.partition): {
            name: value.value for name, value in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def retries(result) -> list:
    """The run's STEP_UP_FOR_RETRY events."""
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def failure_message(result) -> str:
    """Every message of the run's step failure, causes included."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def failure_description(result) -> str | None:
    """The description of the `dagster.Failure` that failed the run's one failed step."""
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    return data.description if data else None


def course_month(csv_gz_or_parquet, month: str) -> tuple[int, pd.DataFrame, dict[str, int]]:
    """The month cleaned the course's way, with pandas, independently of the platform: the raw row
    count, the clean rows, and the rows rejected per reason, each row counted for the first rule it
    breaks (pickup outside the month, passenger_count not > 0 or blank, trip_distance not > 0, an
    exact copy of a kept row)."""
    path = str(csv_gz_or_parquet)
    df = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, low_memory=False)
    pickup = pd.to_datetime(df["lpep_pickup_datetime"])
    start = pd.Timestamp(f"{month}-01")
    in_month = (pickup >= start) & (pickup < start + pd.offsets.MonthBegin(1))
    passengers = in_month & (df["passenger_count"] > 0)
    passes = passengers & (df["trip_distance"] > 0)
    clean = df[passes].drop_duplicates()
    rejected = {
        "pickup_outside_month": int((~in_month).sum()),
        "passenger_count_not_positive": int((in_month & ~passengers).sum()),
        "trip_distance_not_positive": int((passengers & ~passes).sum()),
        "duplicate_row": int(passes.sum()) - len(clean),
    }
    return len(df), clean, rejected


def course_counts(csv_gz_or_parquet, month: str) -> dict[str, int]:
    """The month's figures computed the course's way (see `course_month`): raw, clean and the rows
    rejected per reason."""
    raw, clean, rejected = course_month(csv_gz_or_parquet, month)
    return {"raw": raw, "clean": len(clean), **rejected}


def course_days(csv_gz_or_parquet, month: str) -> dict[str, int]:
    """{"YYYY-MM-DD": clean rows} of the month, by pickup day (the course's way, see `course_month`)."""
    _, clean, _ = course_month(csv_gz_or_parquet, month)
    days = pd.to_datetime(clean["lpep_pickup_datetime"]).dt.strftime("%Y-%m-%d").value_counts()
    return {day: int(rows) for day, rows in sorted(days.items())}


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def release_csv_gz(table: pa.Table) -> bytes:
    """A table of the CSV form as the releases write it: header and values unquoted, blank = null."""
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(quoting_style="none"))
    header, _, rows = buffer.getvalue().decode().partition("\n")
    return gzip_csv(header.replace('"', "") + "\n" + rows)


def gzip_csv(text: str) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write(text.encode())
    return buffer.getvalue()


def failed_runs(instance) -> str:
    """The step failures of every failed run on the instance, one line each ("" when none)."""
    messages = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
        for event in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            messages.append(
                f"{run.job_name} {run.tags.get('dagster/partition')}: "
                f"{event.dagster_event.step_failure_data.error.message}"
            )
    return "\n".join(messages)


def dagster_materialize(*keys: str, month: str, home: Path) -> subprocess.CompletedProcess:
    """`dagster asset materialize` of the keys for one month, as an operator runs it."""
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "taxi_platform.definitions",
        ]
        + ["--select", ",".join(keys), "--partition", month],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        timeout=600,
    )
