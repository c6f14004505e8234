"""The sensors that tell the operator when something needs a person (all on by default).

- `run_failure_alerts`: one alert per failed run, whatever launched it (UI, sensor, schedule, backfill);
  step retries are not failures of the run.
- `check_failure_alerts`: a failed blocking or ERROR check, once (see CHECK_WINDOW_SECONDS).
- `tick_failure_alerts`: a sensor or schedule tick of this code location that errored.
- `freshness_alerts`: evaluates each dataset's `freshness` check (taxi_platform.checks.freshness) and alerts
  once when a dataset's due month is missing. Its cursor holds each dataset's last recorded evaluation
  (due month, fresh or not): an evaluation is recorded, and a stale one alerted, only when it changes, so
  a dataset stays alerted until it is fresh again or the next month falls due missing too.

Alerts go through the `alerter` resource (taxi_platform.notifications), which never raises.
"""

import json

import dagster as dg
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._time import get_current_datetime

from taxi_platform import notifications
from taxi_platform.checks import freshness
from taxi_platform.datasets import DATASETS
from taxi_platform.notifications import Alerter

BATCH = 200  # events or ticks read per tick of a sensor
# Failed checks are taken by the time their result was written, for this long back; a result is sent
# once (its execution id is kept in the cursor for as long). Results written while no sensor ran for
# longer than this are not sent.
CHECK_WINDOW_SECONDS = 600


def build_alert_sensors(minimum_interval_seconds: int) -> list[dg.SensorDefinition]:
    @dg.run_failure_sensor(
        name="run_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Alerts once per failed run, with its month, assets, first error line and link.",
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext, alerter: Alerter):
        run = context.dagster_run
        failures = context.get_step_failure_events()
        error = failures[0].step_failure_data.error if failures else None
        message = error.message if error else context.failure_event.message
        planned = context.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        ).records
        assets = sorted({r.asset_key.to_user_string() for r in planned if r.asset_key})
        alert = notifications.run_failed(run, assets, message, alerter.run_link(run.run_id))
        alerter.send(alert, context.log)

    @dg.sensor(
        name="check_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Alerts on every failed blocking or ERROR asset check.",
    )
    def check_failure_alerts(context: dg.SensorEvaluationContext, alerter: Alerter):
        now = get_current_datetime().timestamp()
        check_keys = context.repository_def.asset_graph.asset_check_keys if context.repository_def else []
        recent = sorted(
            (
                record
                for key in check_keys
                for record in _check_executions(context.instance, key, BATCH, failed_only=True)
                if record.event and record.event.timestamp > now - CHECK_WINDOW_SECONDS
            ),
            key=lambda record: record.event.timestamp if record.event else 0,
        )
        cursor = context.cursor or ""
        if not _is_json(cursor):  # the first tick starts from now: history is not news
            context.update_cursor(json.dumps({r.id: r.event.timestamp for r in recent if r.event}))
            return dg.SkipReason("started watching asset check results")
        seen = {int(i): at for i, at in json.loads(cursor).items() if at > now - CHECK_WINDOW_SECONDS}
        sent = 0
        for record in recent:
            evaluation = record.evaluation
            if record.id in seen or evaluation is None or record.event is None:
                continue
            seen[record.id] = record.event.timestamp
            if not (evaluation.blocking or evaluation.severity == dg.AssetCheckSeverity.ERROR):
                continue
            run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
            partition = evaluation.partition or (run.tags.get("dagster/partition") if run else None)
            alert = notifications.check_failed(
                evaluation.asset_key,
                evaluation.check_name,
                partition,
                "blocking" if evaluation.blocking else evaluation.severity.value,
                {name: value.value for name, value in evaluation.metadata.items()},
                alerter.run_link(record.run_id) if record.run_id else None,
            )
            alerter.send(alert, context.log)
            sent += 1
        context.update_cursor(json.dumps(seen))
        if not sent:
            return dg.SkipReason("no failed blocking or ERROR check since the last tick")

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

    return [run_failure_alerts, check_failure_alerts, tick_failure_alerts]


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


def _check_executions(instance: dg.DagsterInstance, key: dg.AssetCheckKey, limit: int, failed_only=False):
    """The newest executions of a check (any event log storage: the event-records query needs a
    run-aware cursor on the default, run-sharded SQLite storage)."""
    return instance.event_log_storage.get_asset_check_execution_history(
        key, limit=limit, status={AssetCheckExecutionRecordStatus.FAILED} if failed_only else None
    )


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
