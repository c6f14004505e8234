"""Running the code location's assets the way Dagster does, and reading what they stored."""

import gzip
import io

import dagster as dg
import pandas as pd

from taxi_platform.definitions import defs


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
):
    """`materialize` on a given Dagster instance (None: an ephemeral one); `resources` override
    the profile's."""
    definitions = defs()
    tags = {}
    if months:
        tags = {
            "dagster/asset_partition_range_start": months[0],
            "dagster/asset_partition_range_end": months[1],
        }
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
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


def failure_message(result) -> str:
    """Every message of the run's step failure, causes included."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def course_counts(csv_gz_or_parquet, month: str) -> dict[str, int]:
    """The month's figures computed the course's way, with pandas, independently of the platform."""
    path = str(csv_gz_or_parquet)
    df = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, low_memory=False)
    pickup = pd.to_datetime(df["lpep_pickup_datetime"])
    start = pd.Timestamp(f"{month}-01")
    in_month = (pickup >= start) & (pickup < start + pd.offsets.MonthBegin(1))
    passes = in_month & (df["passenger_count"] > 0) & (df["trip_distance"] > 0)
    clean = df[passes].drop_duplicates()
    return {"raw": len(df), "clean": len(clean), "pickup_outside_month": int((~in_month).sum())}


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
