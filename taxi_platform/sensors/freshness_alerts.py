"""`freshness_alerts`: evaluates each dataset's `freshness` check (taxi_platform.checks.freshness) and
alerts once when a dataset's due month is missing. Its cursor holds each dataset's last recorded
evaluation (due month, fresh or not): an evaluation is recorded, and a stale one alerted, only when it
changes, so a dataset stays alerted until it is fresh again or the next month falls due missing too."""

import json

import dagster as dg
from dagster._time import get_current_datetime

from taxi_platform import notifications
from taxi_platform.checks import freshness
from taxi_platform.datasets import DATASETS
from taxi_platform.notifications import Alerter


def build_freshness_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="freshness_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Evaluates each dataset's freshness check; alerts once when its due month is missing.",
    )
    def freshness_alerts(context: dg.SensorEvaluationContext, alerter: Alerter):
        cursor = context.cursor or ""
        recorded: dict[str, dict] = json.loads(cursor) if _is_json(cursor) else {}
        now = get_current_datetime()
        evaluations = []
        for spec in DATASETS.values():
            state = freshness.evaluate(context.instance, spec, now)
            if state is None:
                continue
            seen = {"due_month": state.due_month, "fresh": state.fresh}
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
            cursor=json.dumps(recorded, sort_keys=True),
            skip_reason=None if evaluations else "no dataset's freshness changed",
        )

    return freshness_alerts


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
