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
import pyarrow.dataset as ds
from pyiceberg.expressions import AlwaysTrue

from taxi_platform.cleaning import MonthCleaner, rejected_schema, row_hashes
from taxi_platform.datasets import DatasetSpec
from taxi_platform.definitions import defs
from taxi_platform.lake.resource import Lake
from taxi_platform.lake.staging import PARTITION_KEY


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


def lake_files(where: "Path | Lake", key: str) -> dict[str, int]:
    """{partition folder or partition key: rows} that the lake's table of `key` ("clean/green_trips")
    holds now, read from the table's metadata; `where`: a local data dir (its lake/) or a Lake."""
    lake = where if isinstance(where, Lake) else Lake(root=str(Path(where) / "lake"))
    asset = dg.AssetKey.from_user_string(key)
    versioned = lake.table(asset, versioned_files=True).exists()
    table = lake.table(asset, versioned)
    if not table.exists():
        return {}
    counts: dict[str, int] = {}
    for path, rows in table.files(AlwaysTrue())[1]:
        folder = path.split("/data/")[-1].rsplit("/", 1)
        name = folder[0] if len(folder) == 2 else "table"
        if name.startswith(f"{PARTITION_KEY}="):
            name = name.split("=", 1)[1]
        if versioned:
            rows = lake.read(asset, name, versioned_files=True).count_rows()
        counts[name] = counts.get(name, 0) + rows
    return dict(sorted(counts.items()))


def lake_table(data_dir: Path, key: str, partition: str | None = None, column: str | None = None) -> pa.Table:
    """What the lake's table of `key` holds now (one partition of it), read through its log."""
    from taxi_platform.datasets import DATASETS

    lake = Lake(root=str(Path(data_dir) / "lake"))
    asset = dg.AssetKey.from_user_string(key)
    months = next(iter(DATASETS.values())).partitions_def if partition else None
    return lake.read(asset, partition, months, column).to_table()


def unpublished_files(data_dir: Path, key: str) -> list[str]:
    """Parquet files under the asset's lake folder that no version of its table has published (what a
    failed write would leave staged); files of replaced versions are history, not unpublished."""
    lake = Lake(root=str(Path(data_dir) / "lake"))
    asset = dg.AssetKey.from_user_string(key)
    folder = Path(lake.path(asset))
    on_disk = {p for p in folder.rglob("*.parquet") if "metadata" not in p.parts}
    published = set()
    for versioned in (False, True):
        table = lake.table(asset, versioned)
        if not table.exists() or not table.load().snapshots():
            continue
        files = {
            Path(f.removeprefix("file://"))
            for f in table.load().inspect.all_files().column("file_path").to_pylist()
        }
        published |= files
        if versioned and files:
            named = ds.dataset([str(f) for f in files]).to_table(columns=["file"])["file"]
            published |= {folder / name for name in named.to_pylist()}
    return sorted(str(p.relative_to(folder)) for p in on_disk - published)


def lake_digests(data_dir: Path, key: str) -> dict[str, tuple[int, str]]:
    """{partition: (rows, sha256 of its rows in a fixed order)} of every partition the lake's table of
    `key` holds now, as its readers see it."""
    digests = {}
    lake = Lake(root=str(Path(data_dir) / "lake"))
    asset = dg.AssetKey.from_user_string(key)
    versioned = lake.table(asset, versioned_files=True).exists()
    partitions = sorted({name.split("=")[-1][:7] for name in lake_files(lake, key)})
    for partition in partitions:
        column = "pickup_date" if not versioned and key.endswith("_trips") else None
        table = (
            lake_table(data_dir, key, partition, column)
            if not versioned
            else lake.read(asset, partition, versioned_files=True).to_table()
        )
        rows = sorted(map(repr, table.to_pylist()))
        digests[partition] = (table.num_rows, hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return digests


def load_input(
    manager: dg.IOManager,
    key: tuple[str, ...],
    partitions_def: dg.PartitionsDefinition,
    month: str | None = None,
    key_range: dg.PartitionKeyRange | None = None,
    metadata: dict | None = None,
):
    """What `manager` gives a downstream step of the asset `key` (its definition metadata `metadata`):
    one month, a range, or the whole table."""
    asset_key = dg.AssetKey(list(key))
    with (
        dg.build_output_context(asset_key=asset_key, definition_metadata=metadata) as upstream,
        dg.build_input_context(
            asset_key=asset_key,
            partition_key=month,
            asset_partition_key_range=key_range,
            asset_partitions_def=partitions_def if month or key_range else None,
            upstream_output=upstream,
        ) as context,
    ):
        return manager.load_input(context)
