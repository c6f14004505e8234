"""`tick_failure_alerts`: a sensor or schedule tick of this code location that errored."""

import json

import dagster as dg
from dagster._core.scheduler.instigation import TickStatus

from taxi_platform import notifications
from taxi_platform.notifications import Alerter

BATCH = 200  # failed ticks read per sensor or schedule and tick


def build_tick_failure_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="tick_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Alerts when a sensor or schedule tick of this code location errors.",
    )
    def tick_failure_alerts(context: dg.SensorEvaluationContext, alerter: Alerter):
        cursor = context.cursor or ""
        seen: dict[str, float] = json.loads(cursor) if _is_json(cursor) else {}
        repository = context.repository_def
        if repository is None:
            raise dg.DagsterInvariantViolationError(
                "tick_failure_alerts needs its code location's definitions"
            )
        names = {d.name for d in (*repository.sensor_defs, *repository.schedule_defs)}
        sent = 0
        for state in context.instance.all_instigator_state():
            name = state.instigator_name
            if name not in names or name == "tick_failure_alerts":
                continue
            since = seen.get(name)
            ticks = context.instance.get_ticks(
                state.instigator_origin_id,
                state.selector_id,
                after=since,
                limit=BATCH,
                statuses=[TickStatus.FAILURE],
            )
            if since is None:  # the first look at an instigator starts from now
                seen[name] = max((t.timestamp for t in ticks), default=0.0)
                continue
            for tick in sorted(ticks, key=lambda t: t.timestamp):
                kind = state.instigator_type.value.lower()
                error = tick.error.message if tick.error else None
                alerter.send(notifications.tick_failed(kind, name, error), context.log)
                seen[name] = max(seen[name], tick.timestamp)
                sent += 1
        context.update_cursor(json.dumps(seen, sort_keys=True))
        if not sent:
            return dg.SkipReason("no failed sensor or schedule tick since the last look")

    return tick_failure_alerts


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
