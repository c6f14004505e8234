"""Alerts through Apprise, to a real webhook receiver and a real SMTP server."""

import json
import logging

import dagster as dg
import pytest

from taxi_platform import notifications
from taxi_platform.notifications import Alert, Alerter
from taxi_platform.sensors.check_failure_alerts import build_check_failure_sensor
from taxi_platform.sensors.run_failure_alerts import build_run_failure_sensor
from taxi_platform.sensors.tick_failure_alerts import build_tick_failure_sensor
from taxi_platform_tests.helpers import green_trip_keys, materialize_with
from taxi_platform_tests.receivers import SmtpReceiver, WebhookReceiver, wait_for

pytestmark = pytest.mark.fast
LOG = logging.getLogger("test_alerts")
RUN_FAILURE = build_run_failure_sensor(minimum_interval_seconds=30)
CHECK_FAILURE = build_check_failure_sensor(minimum_interval_seconds=30)
TICK_FAILURE = build_tick_failure_sensor(minimum_interval_seconds=30)


@pytest.fixture
def receivers():
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        yield hook, smtp


def alerter_for(hook: WebhookReceiver, smtp: SmtpReceiver | None = None) -> Alerter:
    urls = [f"json://{hook.address}/json", f"form://{hook.address}/form"]
    return Alerter(urls=urls + ([smtp.url()] if smtp else []), ui_url="http://ui.example:3000")


def test_one_alert_reaches_the_webhook_the_form_and_the_mailbox_readably(receivers):
    hook, smtp = receivers
    alert = Alert(
        "taxi_platform: run failed: green 2020-10", {"Month": "2020-10", "Error": "boom"}, "http://x/runs/1"
    )
    assert alerter_for(hook, smtp).send(alert, LOG) is True
    body = json.loads(hook.on("/json")[0].body)
    assert body["title"] == alert.title
    assert body["message"] == "Month: 2020-10\nError: boom\nOpen in Dagster: http://x/runs/1"
    assert hook.on("/form")[0].fields()["message"] == body["message"]
    mail = wait_for(lambda: smtp.messages, 10, "the alert's mail")[0]
    assert mail["Subject"] == alert.title
    assert SmtpReceiver.text(mail).splitlines() == body["message"].splitlines()  # mail lines end in CRLF


def test_a_notifier_that_fails_is_logged_and_never_raises(caplog):
    with WebhookReceiver() as hook:
        down = hook.address
    alerter = Alerter(urls=[f"json://{down}/json", "not-a-scheme://x"])
    with caplog.at_level(logging.WARNING):
        assert alerter.send(Alert("taxi_platform: test", {"Error": "x"}), LOG) is False
    assert "not delivered" in caplog.text and "not-a-scheme://***" in caplog.text


def test_without_urls_an_alert_is_only_logged(caplog):
    with caplog.at_level(logging.WARNING):
        assert Alerter().send(Alert("taxi_platform: only logged", {"Error": "x"}), LOG) is False
    assert "ALERT taxi_platform: only logged" in caplog.text


def test_secrets_never_reach_an_alert():
    error = 'connection to "postgresql://taxi:hunter22@db:5432/taxi" failed: password=hunter22 token=abc'
    alert = notifications.check_failed(
        dg.AssetKey(["clean", "green_trips"]), "rows_balance", "2020-10", "blocking", {"why": error}, None
    )
    assert "hunter22" not in alert.body and "abc" not in alert.body
    assert "hunter22" not in notifications.first_line(error)


def test_a_failed_month_run_alerts_once_naming_the_dataset_month_assets_and_error(
    taxi_env, source_server, overlay, instance
):
    month_file = overlay / "releases/green/green_tripdata_2020-09.csv.gz"
    month_file.parent.mkdir(parents=True, exist_ok=True)
    month_file.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    try:
        result = materialize_with(instance, *green_trip_keys(), partition="2020-09", raise_on_error=False)
    finally:
        month_file.unlink()
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(iter(instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)))
    with WebhookReceiver() as hook:
        with dg.build_run_status_sensor_context(
            sensor_name="run_failure_alerts",
            dagster_event=failure.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
            resources={"alerter": alerter_for(hook)},
        ) as context:
            RUN_FAILURE(context.for_run_failure())
        (delivery,) = hook.on("/json")
    body = json.loads(delivery.body)
    assert body["title"] == "taxi_platform: run failed: clean/green_trips and more 2020-09"
    assert "Month: 2020-09" in body["message"]
    assert "Assets: clean/green_trips, clean/green_trips_rejected, raw/green_trips" in body["message"]
    error = "Error: green 2020-09: {}/releases/green/green_tripdata_2020-09.csv.gz returned an HTML page"
    assert error.format(source_server.url) in body["message"]
    assert f"Open in Dagster: http://ui.example:3000/runs/{result.run_id}" in body["message"]


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["2020-10"]))
def shrunk() -> None:
    return None


@dg.asset_check(asset=shrunk, blocking=True)
def enough_rows() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, metadata={"rows": 3, "previous_rows": 3000})


@dg.asset_check(asset=shrunk)
def only_a_warning() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)


def test_a_failed_blocking_check_alerts_with_its_metadata_and_a_warning_does_not(instance):
    definitions = dg.Definitions(assets=[shrunk], asset_checks=[enough_rows, only_a_warning])
    repository = definitions.get_repository_def()
    with WebhookReceiver() as hook:
        resources = {"alerter": alerter_for(hook)}

        def tick(cursor: str | None):
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, resources=resources, repository_def=repository
            ) as context:
                return CHECK_FAILURE(context), context.cursor

        first, cursor = tick(None)
        assert isinstance(first, dg.SkipReason) and "started watching" in first.skip_message
        assert cursor == "{}"  # nothing failed yet
        dg.materialize(
            [shrunk, enough_rows, only_a_warning],
            instance=instance,
            partition_key="2020-10",
            raise_on_error=False,
        )
        _, cursor = tick(cursor)
        (delivery,) = hook.on("/json")
        again, _ = tick(cursor)
    body = json.loads(delivery.body)
    assert body["title"] == "taxi_platform: check failed: enough_rows on shrunk 2020-10"
    assert "Check: enough_rows (blocking)" in body["message"] and "Month: 2020-10" in body["message"]
    assert "rows: 3" in body["message"] and "previous_rows: 3000" in body["message"]
    assert isinstance(again, dg.SkipReason)  # the cursor moved past it: one alert per failure
