"""Freshness: each dataset's newest due month, and whether clean/<dataset>_trips holds it. When a month
is due and how it shows: README.md, Operating > Checks (PUBLICATION_LAG_MONTHS: the TLC's two months).

The `freshness` check is WARN, not blocking: a late month is the TLC's delay, not bad data. The
`freshness_alerts` sensor (taxi_platform.sensors.freshness_alerts) evaluates it every tick; it also runs
in each ingest run (the ingest job selects the checks of its assets), and from the UI on demand.

Why not Dagster's freshness factories (dagster 1.13), which were considered:
- `FreshnessPolicy` (time window or cron, evaluated by the freshness daemon) judges the time of the
  asset's latest materialization, whatever its partition: reloading 2019-01 would make a dataset fresh
  while its due month is missing, and a dataset holding its due month would go stale when no month was
  loaded lately. It cannot say which month is overdue.
- `build_time_partition_freshness_checks` is partition-aware, but expects the partition that ended
  before the latest deadline tick: a lag below one partition, never the TLC's two months. It and
  `build_sensor_for_freshness_checks` (which launches a run per evaluation) are superseded in 1.13,
  and calling them warns (an error in our tests).
So the rule is ours and the machinery Dagster's: an asset check, its results recorded by a sensor
through `SensorResult(asset_events=...)`, alerts from the sensor's cursor.
"""

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
from dagster._time import get_current_datetime

from taxi_platform.datasets import NEW_YORK, DatasetSpec

PUBLICATION_LAG_MONTHS = 2  # the TLC publishes a month about this many months after it ends
FRESHNESS_CHECK = "freshness"


@dataclass(frozen=True)
class Freshness:
    """A dataset's freshness at one time."""

    spec: DatasetSpec
    due_month: str  # the newest month due
    due_since: datetime
    next_due: datetime | None  # when the month after becomes due (None: never, releases only)
    newest_month: str | None  # the newest month clean/<dataset>_trips holds
    fresh: bool  # clean/<dataset>_trips holds the due month

    @property
    def asset_key(self) -> dg.AssetKey:
        return self.spec.clean_key

    @property
    def description(self) -> str:
        since = f"{self.due_since:%Y-%m-%d}"
        if not self.fresh:
            return f"Overdue: {self.spec.name} {self.due_month} is due since {since} and not loaded."
        upcoming = f"; the next month is due on {self.next_due:%Y-%m-%d}" if self.next_due else ""
        return f"Fresh: {self.spec.name} {self.due_month}, due since {since}, is loaded{upcoming}."

    @property
    def metadata(self) -> dict[str, dg.MetadataValue]:
        metadata = {
            "due_month": dg.MetadataValue.text(self.due_month),
            "due_since": dg.MetadataValue.timestamp(self.due_since),
            "newest_month": dg.MetadataValue.text(self.newest_month or "none"),
        }
        if self.next_due:
            metadata["next_due"] = dg.MetadataValue.timestamp(self.next_due)
        return metadata

    def result(self) -> dg.AssetCheckResult:
        """The check's result, in a run."""
        return dg.AssetCheckResult(
            passed=self.fresh,
            severity=dg.AssetCheckSeverity.WARN,
            description=self.description,
            metadata=self.metadata,
        )

    def evaluation(self) -> dg.AssetCheckEvaluation:
        """The check's result, recorded by a sensor (without a run)."""
        return dg.AssetCheckEvaluation(
            asset_key=self.asset_key,
            check_name=FRESHNESS_CHECK,
            passed=self.fresh,
            severity=dg.AssetCheckSeverity.WARN,
            description=self.description,
            metadata=self.metadata,
        )


def due_month(spec: DatasetSpec, now: datetime) -> tuple[str, datetime] | None:
    """The newest month due at `now` and since when it is due; None before any month is due."""
    local = now.astimezone(ZoneInfo(NEW_YORK))
    due = local.year * 12 + local.month - 1 - (1 + PUBLICATION_LAG_MONTHS)
    last = _last_due(spec)
    if last is not None:
        due = min(due, last)
    if due < _index(spec.first_month):
        return None
    return _name(due), _start(due + 1 + PUBLICATION_LAG_MONTHS)


def evaluate(instance: dg.DagsterInstance, spec: DatasetSpec, now: datetime) -> Freshness | None:
    """The dataset's freshness at `now`, from the months its clean asset holds; None: nothing is due."""
    due = due_month(spec, now)
    if due is None:
        return None
    month, since = due
    months = instance.get_materialized_partitions(spec.clean_key)
    index = _index(month)
    return Freshness(
        spec=spec,
        due_month=month,
        due_since=since,
        next_due=None if index == _last_due(spec) else _start(index + 2 + PUBLICATION_LAG_MONTHS),
        newest_month=max(months, default=None),
        fresh=month in months,
    )


def build_freshness_check(spec: DatasetSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=spec.clean_key,
        name=FRESHNESS_CHECK,
        description=f"Fails while the newest {spec.name} month due is not loaded (the TLC publishes a "
        f"month about {PUBLICATION_LAG_MONTHS} months after it ends); evaluated by freshness_alerts.",
    )
    def freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        state = evaluate(context.instance, spec, get_current_datetime())
        if state is None:
            return dg.AssetCheckResult(passed=True, description=f"No {spec.name} month is due yet.")
        return state.result()

    return freshness


def _last_due(spec: DatasetSpec) -> int | None:
    """The last month ever due: the releases' last for a dataset not continued on the TLC, else None."""
    if spec.continues_on_tlc:
        return None
    if spec.releases is None:
        raise ValueError(f"{spec.name}: a dataset not continued on the TLC needs its releases")
    return _index(spec.releases.last)


def _index(month: str) -> int:
    year, number = month.split("-")
    return int(year) * 12 + int(number) - 1


def _name(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _start(index: int) -> datetime:
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=ZoneInfo(NEW_YORK))
