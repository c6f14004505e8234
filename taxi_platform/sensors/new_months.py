"""`<dataset>_source_sensor`: months newly published or republished at the public source. What it
does and how to use it: README.md, Automation.

Per tick: the newest RECENT_MONTHS months, where the TLC publishes, then a sweep of older months from
where the last tick stopped, newest first, wrapping around, so a republished old month is found too. A
month is requested when its file's version (ETag, Last-Modified, size) is neither the version this
sensor last requested nor the one its raw partition was materialized from. A failed run is not requested
again until the file changes (its step retries transient errors; re-execute it from the UI). Cursor:
`SourceState`.
"""

from dataclasses import dataclass, field

import dagster as dg

from taxi_platform.datasets import DatasetSpec
from taxi_platform.sensors.cursor import Cursor
from taxi_platform.sources.public import FileVersion, SourceUnavailable, TaxiSource

RECENT_MONTHS = 3


@dataclass
class SourceState:
    """What a source sensor knows: the version it last requested of each month, and the month the next
    tick's sweep starts from."""

    requested: dict[str, str] = field(default_factory=dict)  # month: FileVersion.id
    sweep: str | None = None


def months_to_check(months: list[str], sweep: str | None, budget: int) -> tuple[list[str], str | None]:
    """The months to HEAD this tick (at most `budget`), and where the next tick's sweep starts."""
    if budget >= len(months):
        return list(months), None
    recent, older = months[-RECENT_MONTHS:], months[:-RECENT_MONTHS]
    count = min(max(budget - len(recent), 0), len(older))
    start = older.index(sweep) if sweep in older else len(older) - 1
    swept = [older[(start - i) % len(older)] for i in range(count)]
    return recent[::-1] + swept, older[(start - count) % len(older)]


def materialized_version(instance: dg.DagsterInstance, key: dg.AssetKey, month: str) -> str | None:
    """The version id of the source file the month's raw partition was last materialized from."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[month]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        return None
    return FileVersion.of_materialization(materialization.metadata).id


def build_source_sensor(
    spec: DatasetSpec,
    job,
    minimum_interval_seconds: int,
    checks_per_tick: int,
) -> dg.SensorDefinition:
    cursor = Cursor(
        f"{spec.name}_source_sensor",
        SourceState,
        afresh="a month is requested again only if its version was neither materialized nor "
        "requested under the same run key",
    )

    @dg.sensor(
        name=f"{spec.name}_source_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        description=f"Requests the {spec.name} months newly published or republished at the source "
        f"(HEAD requests only, at most {checks_per_tick} a tick).",
    )
    def source_sensor(context: dg.SensorEvaluationContext, taxi_source: TaxiSource):
        state = cursor.read(context) or SourceState()
        requested = state.requested
        months = list(spec.partitions_def.get_partition_keys())
        checked, sweep = months_to_check(months, state.sweep, checks_per_tick)
        run_requests, unchanged, unpublished, unreachable = [], 0, 0, 0
        for month in checked:
            file = taxi_source.locate(spec, month)
            try:
                version = taxi_source.probe(file)
            except SourceUnavailable as error:
                context.log.warning(f"{error}; checked again on a later tick")
                unreachable += 1
                continue
            if version is None:
                unpublished += 1
                continue
            if requested.get(month) == version.id or (
                materialized_version(context.instance, spec.raw_key, month) == version.id
            ):
                requested[month] = version.id
                unchanged += 1
                continue
            trigger = "republished" if month in requested else "published"
            requested[month] = version.id
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{spec.table}:{month}:{version.id}",
                    partition_key=month,
                    tags={"taxi/trigger": trigger, "taxi/source_version": version.id},
                )
            )
            context.log.info(f"{file.label} {trigger}: {file.url} ({version})")
        kept = cursor.dump(SourceState(dict(sorted(requested.items())), sweep))
        if run_requests:
            return dg.SensorResult(run_requests=run_requests, cursor=kept)
        return dg.SensorResult(
            skip_reason=f"{spec.name}: no new or changed month among the {len(checked)} checked: "
            f"{unchanged} unchanged since requested or materialized, {unpublished} not published, "
            f"{unreachable} unreachable" + (f"; the next tick sweeps from {sweep}" if sweep else ""),
            cursor=kept,
        )

    return source_sensor
