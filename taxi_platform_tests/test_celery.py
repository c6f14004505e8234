"""Beyond one machine, run for real: the Celery executor (TAXI_EXECUTOR=celery) with two real workers on
the machine's RabbitMQ, a backfill spread across them by the real daemon, the lake in the Cloud Storage
emulator, the warehouse in the BigQuery emulator (the gcp profile), Dagster's instance and the taxi
database on PostgreSQL, the steps' logs in Cloud Storage; and the faults across machines.

The months are the session's synthetic ones (conftest.py); the figures they must reach are counted from
their files with pandas (`course_counts`).
"""

import hashlib
import json
import os
import subprocess
import time
import uuid
from urllib.parse import urlparse

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from google.cloud import bigquery

from taxi_platform.datasets import DATASETS
from taxi_platform.lake.resource import Lake
from taxi_platform_tests.celery_workers import Vhost, Workers, write_celery_instance
from taxi_platform_tests.helpers import course_counts, course_month, failed_runs
from taxi_platform_tests.ui import BIN, DagsterServices, free_port, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.emulators, pytest.mark.slow]

GREEN = DATASETS["green"]
MONTHS = ["2020-09", "2020-10", "2020-11", "2020-12"]
KEYS = [GREEN.raw_key, GREEN.clean_key, GREEN.rejected_key, GREEN.postgres_key, GREEN.warehouse_key]


class Deployment:
    """The environment every process of the Celery deployment runs with, its instance and its stores."""

    def __init__(self, home, env, database_url, schema, gcs, bq_dataset, vhost):
        self.home, self.env, self.database_url, self.schema = home, env, database_url, schema
        self.gcs, self.bq_dataset, self.vhost = gcs, bq_dataset, vhost

    def lake(self) -> Lake:
        return Lake(root=self.gcs.root, gcs_endpoint=self.gcs.emulator.url, catalog_url=self.database_url)


@pytest.fixture
def deployment(tmp_path, postgres_url, pg_schema, gcs, bigquery_emulator, source_server, monkeypatch):
    vhost = Vhost()
    database = f"taxi_celery_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    server = urlparse(postgres_url)
    database_url = server._replace(path=f"/{database}").geturl()
    home = tmp_path / "home"
    home.mkdir()
    write_celery_instance(home)
    bq_dataset = f"taxi_{gcs.prefix}"
    settings = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": server.hostname,
        "DAGSTER_PG_PORT": str(server.port or 5432),
        "DAGSTER_PG_USER": server.username or "postgres",
        "DAGSTER_PG_PASSWORD": server.password or "",
        "DAGSTER_PG_DB": database,
        "TAXI_PROFILE": "gcp",
        "TAXI_GCS_BUCKET": gcs.emulator.bucket,
        "TAXI_GCS_PREFIX": gcs.prefix,
        "TAXI_GCP_PROJECT": bigquery_emulator,
        "TAXI_WAREHOUSE_DATASET": bq_dataset,
        "TAXI_LAKE_CATALOG_URL": database_url,  # the lake's Iceberg catalog on PostgreSQL
        "TAXI_RELEASES_URL": f"{source_server.url}/releases",
        "TAXI_TLC_URL": source_server.url,
        "TAXI_EXECUTOR": "celery",
        "TAXI_CELERY_BROKER": vhost.url,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TAXI_SOURCE", raising=False)
    monkeypatch.delenv("TAXI_DATA_DIR", raising=False)
    env = dict(os.environ)
    try:
        yield Deployment(home, env, database_url, pg_schema, gcs, f"{bigquery_emulator}.{bq_dataset}", vhost)
    finally:
        vhost.delete()
        bigquery.Client(project=bigquery_emulator).delete_dataset(
            bq_dataset, delete_contents=True, not_found_ok=True
        )
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.fixture
def workers(deployment, tmp_path):
    """Two workers, `one@<host>` and `two@<host>`, on every queue; neither sees DAGSTER_HOME."""
    env = {k: v for k, v in deployment.env.items() if k != "DAGSTER_HOME"}
    pool = Workers(tmp_path / "workers", env)
    try:
        yield pool
    finally:
        pool.stop()


def submit_backfill(instance: dg.DagsterInstance, keys, months) -> str:
    """An asset backfill of `keys` over `months`, as the UI's launch submits it (the daemon runs it)."""
    from taxi_platform.definitions import defs

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=uuid.uuid4().hex[:8],
        asset_graph=defs().resolve_asset_graph(),
        partition_names=months,
        asset_selection=keys,
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def stop_automation(deployment) -> None:
    """Only the backfill launches runs here: the sinks' automation would follow the months too."""
    subprocess.run(
        [BIN / "dagster", "sensor", "stop", "taxi_automation", "-w", deployment.home / "workspace.yaml"],
        env=deployment.env,
        check=True,
        capture_output=True,
    )


def step_workers(instance, run_ids) -> dict[tuple[str, str], set[str]]:
    """{(run, step): the workers that started it} from the step events the workers recorded."""
    found: dict[tuple[str, str], set[str]] = {}
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            event = record.dagster_event
            worker = event.engine_event_data.metadata.get("Celery worker") if event else None
            if worker is not None:
                found.setdefault((run_id, event.step_key), set()).add(worker.value)
    return found


def postgres_counts(deployment) -> dict[str, int]:
    with psycopg.connect(os.environ["TAXI_POSTGRES_URL"]) as conn:
        rows = conn.execute(
            f"SELECT to_char(pickup_date, 'YYYY-MM'), count(*), count(DISTINCT trip_key) "
            f'FROM "{deployment.schema}".green_trips GROUP BY 1 ORDER BY 1'
        ).fetchall()
    assert all(n == distinct for _, n, distinct in rows), "duplicate trip_key in PostgreSQL"
    return {month: n for month, n, _ in rows}


def warehouse_counts(deployment) -> dict[str, int]:
    client = bigquery.Client(project=deployment.bq_dataset.split(".")[0])
    rows = client.query(
        f"SELECT FORMAT_DATE('%Y-%m', pickup_date) AS month, COUNT(*) AS n, COUNT(DISTINCT trip_key) AS k "
        f"FROM `{deployment.bq_dataset}.green_trips` GROUP BY month"
    ).result()
    rows = list(rows)
    assert all(r.n == r.k for r in rows), "duplicate trip_key in BigQuery"
    return {r.month: r.n for r in sorted(rows, key=lambda r: r.month)}


def ledger_rows(deployment) -> dict[tuple[str, str], int]:
    """{(sink asset, month): published ledger rows} in PostgreSQL's and BigQuery's load_audit."""
    with psycopg.connect(os.environ["TAXI_POSTGRES_URL"]) as conn:
        rows = conn.execute(
            f'SELECT asset_key, partition_key, count(*) FROM "{deployment.schema}".load_audit '
            "WHERE outcome = 'published' GROUP BY 1, 2"
        ).fetchall()
    client = bigquery.Client(project=deployment.bq_dataset.split(".")[0])
    rows += [
        (r.asset_key, r.partition_key, r.n)
        for r in client.query(
            f"SELECT asset_key, partition_key, COUNT(*) AS n FROM `{deployment.bq_dataset}.load_audit` "
            "WHERE outcome = 'published' GROUP BY 1, 2"
        ).result()
    ]
    return {(asset, month): n for asset, month, n in rows}


def lake_month(lake: Lake, month: str) -> tuple[int, str]:
    """The clean month as the lake's readers see it: its rows and `trips_md5` of them."""
    table = lake.read(GREEN.clean_key, month, GREEN.partitions_def, "pickup_date").to_table()
    frame = table.select(["lpep_pickup_datetime", "lpep_dropoff_datetime"]).to_pandas()
    return table.num_rows, trips_md5(frame)


def test_a_backfill_spreads_over_two_workers_with_every_figure_exact(deployment, workers, published):
    expected = {m: course_counts(published / f"releases/green/green_tripdata_{m}.csv.gz", m) for m in MONTHS}
    clean = {m: counts["clean"] for m, counts in expected.items()}
    one, two = workers.start("one"), workers.start("two")
    stop_automation(deployment)
    with (
        DagsterServices(deployment.home, deployment.env, webserver=False) as dagster,
        dg.DagsterInstance.from_config(str(deployment.home)) as instance,
    ):
        workers.wait_ready()
        backfill_id = submit_backfill(instance, KEYS, MONTHS)

        def done():
            status = instance.get_backfill(backfill_id).status
            return status not in (BulkActionStatus.REQUESTED,) and status

        status = wait_for(
            "the backfill to end",
            done,
            timeout=420,
            details=lambda: f"{failed_runs(instance)}\n{dagster.log('daemon')}\n{workers.logs()}",
        )
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert status == BulkActionStatus.COMPLETED_SUCCESS, failed_runs(instance) + workers.logs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        ran_on = step_workers(instance, [r.run_id for r in runs])
    # Every step ran once, on one worker, and both workers took steps.
    assert all(len(nodes) == 1 for nodes in ran_on.values()), ran_on
    assert set().union(*ran_on.values()) == {one, two}, ran_on

    lake = deployment.lake()
    assert {m: lake_month(lake, m)[0] for m in MONTHS} == clean
    assert postgres_counts(deployment) == clean
    assert warehouse_counts(deployment) == clean
    assert ledger_rows(deployment) == {
        (key.to_user_string(), m): 1 for key in (GREEN.postgres_key, GREEN.warehouse_key) for m in MONTHS
    }
    # Each step's logs, from whichever worker ran it, in Cloud Storage.
    logged = deployment.gcs.emulator.objects("compute-logs/storage")
    for run in runs:
        assert any(name.startswith(f"{run.run_id}/") for name in logged), (run.run_id, sorted(logged))


INGEST = ",".join(key.to_user_string() for key in KEYS[:3])
OCTOBER = "/releases/green/green_tripdata_2020-10.csv.gz"


def launch(deployment, select: str, month: str | None = None, run_config: dict | None = None, env=None):
    """`dagster asset materialize` as an operator runs it: that process is the run's, the steps go to the
    broker."""
    command = [BIN / "dagster", "asset", "materialize", "-m", "taxi_platform.definitions", "--select", select]
    command += ["--partition", month] if month else []
    command += ["--config-json", json.dumps(run_config)] if run_config else []
    return subprocess.Popen(
        command,
        env=env or deployment.env,
        cwd=deployment.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def the_run(instance) -> dg.DagsterRun:
    (run,) = instance.get_runs()
    return run


def run_messages(instance, run_id: str) -> str:
    """Every message of the run's events, with their errors and causes."""
    texts = []
    for record in instance.all_logs(run_id):
        texts.append(record.user_message or "")
        event = record.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        while error is not None:
            texts.append(error.to_string())
            error = error.cause
    return "\n".join(texts)


def run_seconds(instance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.end_time - record.start_time


@pytest.mark.faults
def test_a_worker_killed_mid_ingest_hands_the_step_to_the_other_and_the_month_is_published_once_whole(
    deployment, workers, published, source_server
):
    file = published / OCTOBER.lstrip("/")
    raw, clean_rows, _ = course_month(file, "2020-10")
    nodes = {workers.start("one"), workers.start("two")}
    workers.wait_ready()
    source_server.fail(OCTOBER, "trickle")  # the first download crawls: the step is in it when killed
    run_worker = launch(deployment, INGEST, "2020-10")
    with dg.DagsterInstance.from_config(str(deployment.home)) as instance:

        def started_on():
            runs = instance.get_runs()
            if not runs or ("GET", OCTOBER) not in source_server.requests:
                return None
            found = step_workers(instance, [runs[0].run_id])
            return next(iter(found.values()), None)

        (killed,) = wait_for("a worker in the ingest step", started_on, timeout=120, details=workers.logs)
        workers.kill(killed)
        output, _ = run_worker.communicate(timeout=240)
        run = the_run(instance)
        assert run_worker.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, output
        ran_on = step_workers(instance, [run.run_id])
    # Started on the killed worker, delivered again to the other; the steps after it (the checks of the
    # month) ran once.
    assert ran_on.pop((run.run_id, "ingest_green_trips")) == nodes
    assert ran_on and all(len(on) == 1 for on in ran_on.values()), ran_on

    lake = deployment.lake()
    assert len(lake.versions(GREEN.clean_key, "2020-10")) == 1  # published once
    assert lake_month(lake, "2020-10") == (len(clean_rows), trips_md5(clean_rows))
    assert lake.read(GREEN.raw_key, "2020-10", versioned_files=True).count_rows() == raw


@pytest.mark.faults
def test_a_broker_that_does_not_answer_fails_the_run_at_once_naming_it_without_its_password(
    deployment,
):
    password = "Sup3rS3cretBrokerPass"
    broker = f"amqp://taxi:{password}@127.0.0.1:{free_port()}//"
    env = deployment.env | {"TAXI_CELERY_BROKER": broker}
    run_worker = launch(deployment, "reference/taxi_zones", env=env)
    output, _ = run_worker.communicate(timeout=180)
    with dg.DagsterInstance.from_config(str(deployment.home)) as instance:
        run = the_run(instance)
        messages = run_messages(instance, run.run_id)
        seconds = run_seconds(instance, run.run_id)
    assert run_worker.returncode != 0 and run.status == dg.DagsterRunStatus.FAILURE
    assert "the Celery broker amqp://taxi:***@127.0.0.1:" in messages
    assert seconds < 20, seconds  # at once: no step was sent anywhere
    assert password not in messages and password not in output
    assert password not in json.dumps(run.run_config)


@pytest.mark.faults
def test_a_run_that_no_worker_takes_fails_at_run_monitorings_start_timeout_naming_the_queue(deployment):
    instance_yaml = deployment.home / "dagster.yaml"
    config = yaml.safe_load(instance_yaml.read_text())
    config["run_monitoring"]["start_timeout_seconds"] = 4
    instance_yaml.write_text(yaml.safe_dump(config))
    run_worker = launch(deployment, "reference/taxi_zones")
    output, _ = run_worker.communicate(timeout=180)
    with dg.DagsterInstance.from_config(str(deployment.home)) as instance:
        run = the_run(instance)
        messages = run_messages(instance, run.run_id)
        seconds = run_seconds(instance, run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE, output
    assert "no Celery worker consumes the queues ingest of this run's steps after 4 s" in messages
    assert 4 <= seconds < 30, seconds
    assert "amqp://guest:***@127.0.0.1:5672/" in messages and ":guest@" not in messages


@pytest.mark.faults
def test_a_step_past_its_queues_time_limit_is_stopped_once_and_the_run_fails(
    deployment, workers, source_server
):
    node = workers.start("one")
    workers.wait_ready()
    source_server.fail(OCTOBER, "trickle")  # minutes of download
    # Past the step's start (a worker's first step loads the code location: seconds under load).
    limits = {"execution": {"config": {"time_limits": {"ingest": 20}}}}
    run_worker = launch(deployment, INGEST, "2020-10", run_config=limits)
    output, _ = run_worker.communicate(timeout=180)
    with dg.DagsterInstance.from_config(str(deployment.home)) as instance:
        run = the_run(instance)
        messages = run_messages(instance, run.run_id)
        seconds = run_seconds(instance, run.run_id)
        ran_on = step_workers(instance, [run.run_id])
    assert run.status == dg.DagsterRunStatus.FAILURE, output
    assert "TimeLimitExceeded(20" in messages, messages[-3000:]
    assert seconds < 90, seconds
    assert list(ran_on.values()) == [{node}]  # not delivered again
    assert workers.processes[node].poll() is None  # the worker lives on; only the step's process was killed
    assert not deployment.lake().versions(GREEN.clean_key, "2020-10")


def trips_md5(clean) -> str:
    """An md5 of the clean trips' pickup and dropoff times, in a fixed order (pandas' frame, or the
    lake's rows: the same text either way)."""
    import pandas as pd

    pickups = pd.to_datetime(clean["lpep_pickup_datetime"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    dropoffs = pd.to_datetime(clean["lpep_dropoff_datetime"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    return hashlib.md5("\n".join(sorted(pickups + " " + dropoffs)).encode()).hexdigest()
