"""`run_failure_alerts`: one alert per failed run (README.md, Operating > Alerts). Alerts go through the
`alerter` resource (taxi_platform.notifications), which never raises."""

import dagster as dg

from taxi_platform import notifications
from taxi_platform.notifications import Alerter


def build_run_failure_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
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

    return run_failure_alerts
