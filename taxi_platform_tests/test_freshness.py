"""Freshness: the month due, the `freshness` checks in the ingest runs and from the sensor, and the
sensor's alerts to a real webhook receiver: at fixed times (Dagster's clock frozen), and under the real
daemon."""

import dataclasses
import json
import os
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time

from taxi_platform.checks.freshness import FRESHNESS_CHECK, due_month, evaluate
from taxi_platform.datasets import DATASETS, NEW_YORK
from taxi_platform.definitions import defs
from taxi_platform.notifications import Alerter
from taxi_platform.sensors.freshness_alerts import build_freshness_sensor
from taxi_platform_tests.receivers import WebhookReceiver
from taxi_platform_tests.ui import DagsterServices, sensor_ticks, wait_for, write_instance

NY = ZoneInfo(NEW_YORK)
GREEN = DATASETS["green"]
FRESHNESS_ALERTS = build_freshness_sensor(minimum_interval_seconds=30)
JAN_15 = datetime(2021, 1, 15, 12, tzinfo=NY)  # 2020-10 is due, since 2021-01-01
FEB_10 = datetime(2021, 2, 10, 12, tzinfo=NY)  # 2020-11 is due, since 2021-02-01
STALE = ("yellow", "fhv", "fhvhv")  # no month of theirs is ever loaded here


@pytest.mark.fast
def test_a_month_is_due_two_months_after_it_ends_in_new_york_time():
    assert due_month(GREEN, datetime(2024, 6, 1, tzinfo=NY)) == ("2024-03", datetime(2024, 6, 1, tzinfo=NY))
    may_31_late_evening = datetime(2024, 6, 1, 3, 59, tzinfo=UTC)  # June 1st in UTC, not yet in New York
    assert due_month(GREEN, may_31_late_evening) == ("2024-02", datetime(2024, 5, 1, tzinfo=NY))
    # green's first month, 2013-08, is due from November 1st
    assert due_month(GREEN, datetime(2013, 10, 31, tzinfo=NY)) is None


@pytest.mark.fast
def test_a_dataset_from_the_releases_only_is_never_due_a_month_after_them(instance):
    releases_only = dataclasses.replace(GREEN, continues_on_tlc=False)
    assert due_month(releases_only, JAN_15) == ("2020-10", datetime(2021, 1, 1, tzinfo=NY))
    state = evaluate(instance, releases_only, datetime(2026, 3, 1, tzinfo=NY))
    assert state is not None
    assert (state.due_month, state.due_since, state.next_due) == (
        "2021-07",
        datetime(2021, 10, 1, tzinfo=NY),
        None,
    )
    assert not state.fresh and state.newest_month is None
    with pytest.raises(ValueError, match="fhvhv: a dataset not continued on the TLC needs its releases"):
        due_month(dataclasses.replace(DATASETS["fhvhv"], continues_on_tlc=False), JAN_15)


def ingest_green(instance: dg.DagsterInstance, month: str, now: datetime) -> dg.ExecuteInProcessResult:
    with freeze_time(now):
        return (
            defs().resolve_job_def("green_ingest").execute_in_process(partition_key=month, instance=instance)
        )


def tick(
    instance: dg.DagsterInstance, alerter: Alerter, now: datetime, cursor: str | None
) -> dg.SensorResult:
    """One tick of freshness_alerts at `now`; its check evaluations are recorded as the daemon does."""
    with (
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"alerter": alerter}) as context,
        freeze_time(now),
    ):
        result = FRESHNESS_ALERTS(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def latest_evaluations(instance: dg.DagsterInstance) -> dict[str, tuple[bool, str]]:
    """Each dataset's latest freshness evaluation, as the UI shows it: passed, and its description."""
    keys = [dg.AssetCheckKey(spec.clean_key, FRESHNESS_CHECK) for spec in DATASETS.values()]
    summaries = instance.event_log_storage.get_asset_check_summary_records(keys)
    latest = {}
    for key, summary in summaries.items():
        record = summary.last_completed_check_execution_record
        evaluation = record.event.asset_check_evaluation if record and record.event else None
        assert evaluation is not None, f"{key.to_user_string()} was never evaluated"
        latest[key.asset_key.path[1].removesuffix("_trips")] = (evaluation.passed, evaluation.description)
    return latest


def alerts_of(hook: WebhookReceiver) -> list[dict]:
    return [json.loads(delivery.body) for delivery in hook.on("/json")]


def overdue_title(dataset: str, month: str) -> str:
    return f"taxi_platform: {dataset} is overdue: {month} is not loaded"


@pytest.mark.fast
def test_a_stale_dataset_alerts_once_naming_its_month_and_a_fresh_one_never(taxi_env, instance):
    ran = ingest_green(instance, "2020-10", JAN_15)
    (in_run,) = [c for c in ran.get_asset_check_evaluations() if c.check_name == FRESHNESS_CHECK]
    assert in_run.passed and in_run.metadata["due_month"] == dg.MetadataValue.text("2020-10")

    with WebhookReceiver() as hook:
        alerter = Alerter(urls=[f"json://{hook.address}/json"], ui_url="http://ui.example:3000")
        first = tick(instance, alerter, JAN_15, cursor=None)
        assert len(first.asset_events) == len(DATASETS)
        assert sorted(a["title"] for a in alerts_of(hook)) == sorted(
            overdue_title(d, "2020-10") for d in STALE
        )
        (yellow,) = [a for a in alerts_of(hook) if a["title"] == overdue_title("yellow", "2020-10")]
        assert yellow["message"].splitlines() == [
            "Dataset: yellow",
            "Due month: 2020-10",
            "Due since: 2021-01-01 00:00 EST",
            "Newest month loaded: none",
            "Asset: clean/yellow_trips",
            "Open in Dagster: http://ui.example:3000/assets/clean/yellow_trips?view=checks",
        ]
        shown = latest_evaluations(instance)
        assert shown["yellow"] == (False, "Overdue: yellow 2020-10 is due since 2021-01-01 and not loaded.")
        assert shown["green"] == (
            True,
            "Fresh: green 2020-10, due since 2021-01-01, is loaded; the next month is due on 2021-02-01.",
        )

        again = tick(instance, alerter, JAN_15, cursor=first.cursor)  # nothing changed: nothing said
        assert not again.asset_events and again.skip_reason is not None
        assert len(alerts_of(hook)) == len(STALE)

        february = tick(instance, alerter, FEB_10, cursor=again.cursor)  # 2020-11 is due, and missing
        new = [a["title"] for a in alerts_of(hook)[len(STALE) :]]
        assert sorted(new) == sorted(overdue_title(d, "2020-11") for d in ("green", *STALE))
        assert latest_evaluations(instance)["green"][0] is False

        ingest_green(instance, "2020-11", FEB_10)
        fresh_again = tick(instance, alerter, FEB_10, cursor=february.cursor)
        assert [e.asset_key for e in fresh_again.asset_events] == [GREEN.clean_key]
        assert latest_evaluations(instance)["green"][0] is True
        assert len(alerts_of(hook)) == 2 * len(STALE) + 1  # green turning fresh says nothing

        garbled = tick(instance, alerter, FEB_10, cursor="not json")  # starts over: each stale one again
        assert len(garbled.asset_events) == len(DATASETS)
    new = [a["title"] for a in alerts_of(hook)[2 * len(STALE) + 1 :]]
    assert sorted(new) == sorted(overdue_title(d, "2020-11") for d in STALE)


def due_at(instant: datetime) -> tuple[str, datetime]:
    """The month due at `instant`, reckoned here: three months before New York's current month, due
    since that month's first day."""
    local = instant.astimezone(NY)
    year, month = divmod(local.year * 12 + local.month - 1 - 3, 12)
    return f"{year}-{month + 1:02d}", datetime(local.year, local.month, 1, tzinfo=NY)


@pytest.mark.daemon
@pytest.mark.slow
def test_under_the_daemon_each_stale_dataset_alerts_once_and_its_check_shows_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    write_instance(home)
    with WebhookReceiver() as hook:
        env = {
            **os.environ,
            "TAXI_DATA_DIR": str(tmp_path / "data"),
            "TAXI_SENSOR_INTERVAL_SECONDS": "1",
            "TAXI_ALERT_URLS": f"json://{hook.address}/json",
        }
        env.pop("TAXI_PROFILE", None), env.pop("TAXI_SOURCE", None)
        with (
            DagsterServices(home, env, webserver=False) as dagster,
            dg.DagsterInstance.from_config(str(home)) as instance,
        ):
            wait_for(
                "an alert for each dataset",
                lambda: len(hook.on("/json")) >= len(DATASETS),
                timeout=120,
                details=lambda: dagster.log("daemon"),
            )
            alerted = len(sensor_ticks(instance, "freshness_alerts"))
            wait_for(
                "two more ticks of freshness_alerts",
                lambda: len(sensor_ticks(instance, "freshness_alerts")) >= alerted + 2,
                timeout=60,
                details=lambda: dagster.log("daemon"),
            )
            shown = latest_evaluations(instance)
            alerting_tick = sensor_ticks(instance, "freshness_alerts")[-1]  # the first: it alerted
    # The daemon runs on the machine's clock: what was due is reckoned from the instant of its tick,
    # never from the test's own clock (which may be in another month by then).
    due = due_at(datetime.fromtimestamp(alerting_tick.timestamp, UTC))
    assert sorted(a["title"] for a in alerts_of(hook)) == sorted(overdue_title(d, due[0]) for d in DATASETS)
    assert shown == {
        name: (False, f"Overdue: {name} {due[0]} is due since {due[1]:%Y-%m-%d} and not loaded.")
        for name in DATASETS
    }
