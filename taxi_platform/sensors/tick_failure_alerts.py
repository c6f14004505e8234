"""`tick_failure_alerts`: a sensor or schedule tick of this code location that errored (README.md,
Operating > Alerts)."""

import dagster as dg
from dagster._core.scheduler.instigation import TickStatus

from taxi_platform import notifications
from taxi_platform.notifications import Alerter
from taxi_platform.sensors.cursor import Cursor

FAILED_TICKS_PER_LOOK = 200  # the failed ticks of each sensor or schedule read per tick
# Per sensor or schedule, the time of its last failed tick alerted (or of the first look at it).
CURSOR = Cursor(
    "tick_failure_alerts", dict[str, float], afresh="each sensor and schedule is watched from now"
)


def build_tick_failure_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="tick_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Alerts when a sensor or schedule tick of this code location errors.",
    )
    def tick_failure_alerts(context: dg.SensorEvaluationContext, alerter: Alerter):
        seen = CURSOR.read(context) or {}
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
                limit=FAILED_TICKS_PER_LOOK,
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
        context.update_cursor(CURSOR.dump(dict(sorted(seen.items()))))
        if not sent:
            return dg.SkipReason("no failed sensor or schedule tick since the last look")

    return tick_failure_alerts
