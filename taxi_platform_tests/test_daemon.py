"""The platform keeping itself current under the real Dagster daemon: a month published, republished and
dropped into the landing zone flows through raw, clean, Postgres and the warehouse with nobody clicking.

The months are synthetic (synthetic/months.py), written into the test's own source folder
as it goes; the figures they must reach are counted from those files with pandas (`course_counts`).
"""

import gzip
import json
import os
import shutil
import subprocess
import time

import dagster as dg
import duckdb
import psycopg
import pytest
from dagster._core.scheduler.instigation import TickStatus

from synthetic.months import FREQUENT, write_source_month
from synthetic.source_server import SourceServer
from taxi_platform.datasets import DATASETS
from taxi_platform_tests.helpers import course_counts, failed_runs
from taxi_platform_tests.receivers import SmtpReceiver, WebhookReceiver
from taxi_platform_tests.ui import BIN, DagsterServices, quiet, sensor_ticks, wait_for, write_instance

pytestmark = [pytest.mark.daemon, pytest.mark.postgres, pytest.mark.slow]

GREEN = DATASETS["green"]
KEYS = {layer: dg.AssetKey([layer, "green_trips"]) for layer in ("raw", "clean", "postgres", "warehouse")}
ROWS = {"2020-10": 2_400, "2020-11": 2_600, "2020-12": 2_800}
# The sensors that could start a run of a month once it is done.
SENSORS = ["green_source_sensor", "landing_sensor", "taxi_automation"]
# Each loaded month also re-creates the month's dbt staging views (a dbt run, its pool shared with the
# warehouse loads): seconds on an idle machine, more than a minute under a load of 15.
SETTLE = 300
# How long each step of the flow may take: a month's ingest, its loads and the dbt models built on them,
# one run after another through the warehouse_loads pool, beside the other xdist worker's tests (the
# Celery ones start a daemon and two workers of their own) on 2 cores. A bound: each wait ends as soon
# as its condition holds.
FLOW_TIMEOUT = 300


def publish(folder, month: str):
    """The month's CSV.gz release, written into `folder` laid out like the source; its path."""
    return write_source_month(folder, GREEN, month, ROWS[month], forms=("csv",), quirks=FREQUENT)["csv"]


def materializations(instance, layer: str, month: str) -> list:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=KEYS[layer], asset_partitions=[month]), limit=100
    ).records


def row_count(record) -> int:
    return record.asset_materialization.metadata["dagster/row_count"].value


def postgres_count(url: str, schema: str, month: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT count(*) FROM \"{schema}\".green_trips WHERE to_char(pickup_date, 'YYYY-MM') = %s",
            [month],
        ).fetchone()[0]


def test_published_republished_and_landed_months_flow_to_the_warehouse(tmp_path, postgres_url, pg_schema):
    home, data, published = tmp_path / "home", tmp_path / "data", tmp_path / "source"
    home.mkdir()
    write_instance(home)
    clean = {}  # month: its clean rows, counted from its file
    path = publish(published, "2020-10")  # green up to 2020-10
    clean["2020-10"] = course_counts(path, "2020-10")["clean"]

    with SourceServer(published) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "TAXI_RELEASES_URL": f"{server.url}/releases",
            "TAXI_TLC_URL": server.url,
            "TAXI_DATA_DIR": str(data),
            "TAXI_SENSOR_INTERVAL_SECONDS": "2",
            "TAXI_LANDING_STABLE_SECONDS": "0",  # the landed file is complete when dropped
            "TAXI_SOURCE_CHECKS_PER_TICK": "1000",  # every month each tick: 2020-11 is an old month
        }
        env.pop("TAXI_PROFILE", None), env.pop("TAXI_SOURCE", None)
        subprocess.run(
            [BIN / "dagster", "sensor", "start", "green_source_sensor", "-w", home / "workspace.yaml"],
            env=env,
            check=True,
            capture_output=True,
        )
        with (
            DagsterServices(home, env, webserver=False) as dagster,
            dg.DagsterInstance.from_config(str(home)) as instance,
        ):

            def details() -> str:
                return (
                    f"failed runs:\n{failed_runs(instance) or 'none'}\ndaemon log:\n{dagster.log('daemon')}"
                )

            wait_for(
                "the first sync: 2020-10 in the warehouse",
                lambda: materializations(instance, "warehouse", "2020-10"),
                timeout=FLOW_TIMEOUT,
                details=details,
            )

            path = publish(published, "2020-11")
            clean["2020-11"] = course_counts(path, "2020-11")["clean"]
            wait_for(
                "2020-11 in Postgres and the warehouse",
                lambda: all(materializations(instance, layer, "2020-11") for layer in KEYS),
                timeout=FLOW_TIMEOUT,
                details=details,
            )
            (cleaned,) = materializations(instance, "clean", "2020-11")
            (stored,) = materializations(instance, "warehouse", "2020-11")
            assert row_count(cleaned) == row_count(stored) == clean["2020-11"]
            assert postgres_count(postgres_url, pg_schema, "2020-11") == clean["2020-11"]

            # Republished: the same trips, compressed anew (other bytes, so another ETag).
            path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=9, mtime=0))
            wait_for(
                "2020-11 republished, in every layer again",
                lambda: all(len(materializations(instance, layer, "2020-11")) == 2 for layer in KEYS),
                timeout=FLOW_TIMEOUT,
                details=details,
            )
            # Nothing runs again: every run has ended, and each sensor has since ticked twice, asking
            # for nothing.
            wait_for(
                "the sensors to settle", lambda: quiet(instance, SENSORS), timeout=SETTLE, details=details
            )
            assert {
                layer: len(materializations(instance, layer, "2020-11")) for layer in KEYS
            } == dict.fromkeys(KEYS, 2)
            assert postgres_count(postgres_url, pg_schema, "2020-11") == clean["2020-11"]

            landing = data / "lake/landing"
            landing.mkdir(parents=True, exist_ok=True)
            path = publish(tmp_path / "to_land", "2020-12")
            clean["2020-12"] = course_counts(path, "2020-12")["clean"]
            part = landing / f"{path.name}.part"
            shutil.copy(path, part)
            part.rename(landing / path.name)
            wait_for(
                "the landed 2020-12 in the warehouse and moved",
                lambda: (
                    materializations(instance, "warehouse", "2020-12")
                    and (landing / "processed" / path.name).exists()
                ),
                timeout=FLOW_TIMEOUT,
                details=details,
            )
            assert not (landing / path.name).exists()
            (raw_12,) = materializations(instance, "raw", "2020-12")
            assert raw_12.asset_materialization.metadata["source_kind"].value == "landing"
            wait_for(
                "postgres 2020-12",
                lambda: materializations(instance, "postgres", "2020-12"),
                timeout=FLOW_TIMEOUT,
                details=details,
            )
            assert postgres_count(postgres_url, pg_schema, "2020-12") == clean["2020-12"]
            wait_for(
                "the sensors to settle", lambda: quiet(instance, SENSORS), timeout=SETTLE, details=details
            )
            assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert dagster.exit_codes == {"daemon": 0}, dagster.log("daemon")
    assert not dagster.outlived, "processes of the daemon outlived it (its code server, run workers)"

    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT strftime(pickup_date, '%Y-%m'), count(*) FROM taxi.green_trips GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert dict(rows) == clean


def test_a_month_launched_from_the_cli_that_fails_alerts_once_within_two_minutes(
    tmp_path, postgres_url, pg_schema
):
    """The operator's path: a clean DAGSTER_HOME, the daemon, `dagster job launch` of a month whose
    source answers with an HTML page; one JSON alert and one email arrive, naming dataset and month."""
    home, published = tmp_path / "home", tmp_path / "source"
    home.mkdir()
    write_instance(home)
    path = publish(published, "2020-10")
    with SourceServer(published) as server, WebhookReceiver() as hook, SmtpReceiver() as mail:
        server.fail(f"/{path.relative_to(published).as_posix()}", "html")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "TAXI_RELEASES_URL": f"{server.url}/releases",
            "TAXI_TLC_URL": server.url,
            "TAXI_DATA_DIR": str(tmp_path / "data"),
            "TAXI_ALERT_URLS": f"json://{hook.address}/, {mail.url()}",
            "TAXI_SENSOR_INTERVAL_SECONDS": "2",
        }
        env.pop("TAXI_PROFILE", None), env.pop("TAXI_SOURCE", None)
        with (
            DagsterServices(home, env, webserver=False) as dagster,
            dg.DagsterInstance.from_config(str(home)) as instance,
        ):
            subprocess.run(
                [BIN / "dagster", "job", "launch", "-w", home / "workspace.yaml", "-j", "green_ingest"]
                + ["--tags", '{"dagster/partition": "2020-10"}'],
                env=env,
                check=True,
                capture_output=True,
            )
            wait_for(
                "the alert of the failed run, by webhook and by email",
                lambda: run_alerts(hook) and run_emails(mail),
                timeout=120,
                details=lambda: f"runs:\n{failed_runs(instance)}\ndaemon log:\n{dagster.log('daemon')}",
            )
            (run,) = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.FAILURE
            # One alert per failed run: the alert sensor has ticked twice more since, sending nothing.
            alerted = time.time()
            wait_for(
                "two more ticks of run_failure_alerts",
                lambda: (
                    len(
                        [
                            t
                            for t in sensor_ticks(instance, "run_failure_alerts")
                            if t.timestamp > alerted and t.status == TickStatus.SKIPPED
                        ]
                    )
                    >= 2
                ),
                timeout=60,
            )
    (message,) = run_alerts(hook)  # besides the freshness alerts of the datasets not loaded
    (email,) = run_emails(mail)
    for text in (message, email):
        assert "green" in text and "2020-10" in text and "HTML page" in text and run.run_id in text


def run_emails(mail: SmtpReceiver) -> list[str]:
    """The subject and text of each run-failure email the SMTP server took."""
    return [f"{m['subject']}\n{mail.text(m)}" for m in mail.messages if "run failed" in m["subject"]]


def run_alerts(hook: WebhookReceiver) -> list[str]:
    """The title and message of each run-failure alert the receiver took."""
    bodies = [json.loads(d.body) for d in hook.deliveries]
    return [f"{b['title']}\n{b['message']}" for b in bodies if "run failed" in b.get("title", "")]
