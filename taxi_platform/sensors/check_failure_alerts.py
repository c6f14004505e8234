"""`check_failure_alerts`: a failed blocking or ERROR check, alerted once (README.md, Operating > Alerts;
see CHECK_WINDOW_SECONDS)."""

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._time import get_current_datetime

from taxi_platform import notifications
from taxi_platform.notifications import Alerter
from taxi_platform.sensors.cursor import Cursor

EXECUTIONS_PER_CHECK = 200  # the newest executions of each check read per tick
# Failed checks are taken by the time their result was written, for this long back; a result is sent
# once (its execution id is kept in the cursor for as long). Results written while no sensor ran for
# longer than this are not sent.
CHECK_WINDOW_SECONDS = 600
# The execution ids already seen, with the times their results were written.
CURSOR = Cursor(
    "check_failure_alerts", dict[int, float], afresh="it watches from now: earlier failures are not sent"
)


def build_check_failure_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
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
                for record in _check_executions(context.instance, key, EXECUTIONS_PER_CHECK, failed_only=True)
                if record.event and record.event.timestamp > now - CHECK_WINDOW_SECONDS
            ),
            key=lambda record: record.event.timestamp if record.event else 0,
        )
        before = CURSOR.read(context)
        if before is None:  # the first tick starts from now: history is not news
            context.update_cursor(CURSOR.dump({r.id: r.event.timestamp for r in recent if r.event}))
            return dg.SkipReason("started watching asset check results")
        seen = {i: at for i, at in before.items() if at > now - CHECK_WINDOW_SECONDS}
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
        context.update_cursor(CURSOR.dump(seen))
        if not sent:
            return dg.SkipReason("no failed blocking or ERROR check since the last tick")

    return check_failure_alerts


def _check_executions(instance: dg.DagsterInstance, key: dg.AssetCheckKey, limit: int, failed_only=False):
    """The newest executions of a check (any event log storage: the event-records query needs a
    run-aware cursor on the default, run-sharded SQLite storage)."""
    return instance.event_log_storage.get_asset_check_execution_history(
        key, limit=limit, status={AssetCheckExecutionRecordStatus.FAILED} if failed_only else None
    )
