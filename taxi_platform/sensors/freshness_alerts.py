"""`freshness_alerts`: evaluates each dataset's `freshness` check (taxi_platform.checks.freshness) and
alerts once when its due month is missing (README.md, Operating > Alerts and Checks). An evaluation is
recorded, and a stale one alerted, only when it differs from the dataset's last recorded one (the
cursor), so a dataset stays alerted until it is fresh again or the next month falls due missing too."""

from dataclasses import dataclass

import dagster as dg
from dagster._time import get_current_datetime

from taxi_platform import notifications
from taxi_platform.checks import freshness
from taxi_platform.datasets import DATASETS
from taxi_platform.notifications import Alerter
from taxi_platform.sensors.cursor import Cursor


@dataclass(frozen=True)
class Recorded:
    """A dataset's last recorded freshness evaluation."""

    due_month: str
    fresh: bool


CURSOR = Cursor(
    "freshness_alerts",
    dict[str, Recorded],  # by dataset name
    afresh="every dataset's freshness is recorded again, and each stale one alerted again",
)


def build_freshness_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="freshness_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Evaluates each dataset's freshness check; alerts once when its due month is missing.",
    )
    def freshness_alerts(context: dg.SensorEvaluationContext, alerter: Alerter):
        recorded = CURSOR.read(context) or {}
        now = get_current_datetime()
        evaluations = []
        for spec in DATASETS.values():
            state = freshness.evaluate(context.instance, spec, now)
            if state is None:
                continue
            seen = Recorded(state.due_month, state.fresh)
            if recorded.get(spec.name) == seen:
                continue
            evaluations.append(state.evaluation())
            recorded[spec.name] = seen
            if not state.fresh:
                alert = notifications.dataset_overdue(
                    spec.name,
                    state.asset_key,
                    state.due_month,
                    state.due_since,
                    state.newest_month,
                    alerter.asset_checks_link(state.asset_key),
                )
                alerter.send(alert, context.log)
        return dg.SensorResult(
            asset_events=evaluations,
            cursor=CURSOR.dump(dict(sorted(recorded.items()))),
            skip_reason=None if evaluations else "no dataset's freshness changed",
        )

    return freshness_alerts
