"""TAXI_EXECUTOR: where the steps run, chosen by the deployment; Celery refuses every store that only one
machine reaches, naming it and what to use instead, and sends each kind of work to its queue."""

import dagster as dg
import pytest
from dagster._core.execution.api import create_execution_plan
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

from taxi_platform.celery_executor import refuse_single_machine_instance
from taxi_platform.definitions import defs
from taxi_platform.executors import QUEUE_TAG, SingleMachineStore
from taxi_platform.profiles import executor_for
from taxi_platform_tests.test_scale_out import yaml_block

pytestmark = pytest.mark.fast
BROKER = "amqp://taxi:Br0kerPassw0rd@rabbit:5672//"
GCP = {
    "TAXI_PROFILE": "gcp",
    "TAXI_GCS_BUCKET": "taxi-lake",
    "TAXI_GCP_PROJECT": "taxi",
    "TAXI_POSTGRES_URL": "postgresql://taxi:Pg5ecretPass@db:5432/taxi",
    "TAXI_EXECUTOR": "celery",
    "TAXI_CELERY_BROKER": BROKER,
}


def test_steps_run_in_the_runs_process_unless_the_deployment_says_otherwise():
    assert executor_for({}) is dg.in_process_executor
    assert executor_for({"TAXI_EXECUTOR": "multiprocess"}) is dg.multiprocess_executor
    with pytest.raises(ValueError, match="TAXI_EXECUTOR must be one of"):
        executor_for({"TAXI_EXECUTOR": "dask"})
    with pytest.raises(ValueError, match="TAXI_EXECUTOR=celery needs TAXI_CELERY_BROKER"):
        executor_for({**GCP, "TAXI_CELERY_BROKER": ""})


def test_celery_refuses_each_store_of_one_machine_naming_what_to_use_instead():
    with pytest.raises(SingleMachineStore) as local:
        executor_for({"TAXI_EXECUTOR": "celery", "TAXI_CELERY_BROKER": BROKER, "TAXI_DATA_DIR": "/srv/taxi"})
    message = str(local.value)
    assert "the lake in the folder /srv/taxi/lake (use TAXI_PROFILE=gcp" in message
    assert "the DuckDB warehouse /srv/taxi/warehouse.duckdb (use TAXI_PROFILE=gcp: BigQuery)" in message
    assert "the embedded PostgreSQL under /srv/taxi/postgres (set TAXI_POSTGRES_URL" in message

    catalog = "sqlite:////srv/taxi/catalog.db"
    with pytest.raises(SingleMachineStore, match="the lake's SQLite catalog sqlite:////srv/taxi/catalog.db"):
        executor_for({**GCP, "TAXI_LAKE_CATALOG_URL": catalog})
    with pytest.raises(SingleMachineStore, match="Dagster instance keeps its runs in SQLite"):
        refuse_single_machine_instance(dg.DagsterInstance.ephemeral())


def test_on_celery_each_kind_of_work_goes_to_its_queue_and_no_url_is_in_a_runs_config(monkeypatch):
    for name, value in GCP.items():
        monkeypatch.setenv(name, value)
    definitions = defs()
    assert definitions.executor is not None and definitions.executor.name == "celery"
    queues = {}
    rollback = {"ops": {"rollback_month_op": {"config": {"dataset": "green", "month": "2020-10"}}}}
    for job in definitions.resolve_all_job_defs():
        plan = create_execution_plan(job, run_config=rollback if job.name == "rollback_month" else None)
        for key in plan.step_keys_to_execute:
            queues[key] = plan.get_step_by_key(key).tags.get(QUEUE_TAG)
    assert {queues[f"ingest_{name}_trips"] for name in ("yellow", "green", "fhv", "fhvhv")} == {"ingest"}
    assert queues["reference__taxi_zones"] == "ingest"
    assert {v for k, v in queues.items() if k.startswith("postgres__")} == {"postgres"}
    assert {v for k, v in queues.items() if k.startswith("warehouse__")} == {"warehouse"}
    assert queues["monthly_models"] == queues["dimensions"] == "warehouse"
    assert QUEUE_TAG == DAGSTER_CELERY_QUEUE_TAG  # the tag dagster-celery routes by
    # The run config docs/scale-out.md gives a Celery run, accepted by the executor's schema.
    ingest = definitions.resolve_job_def("green_ingest")
    assert create_execution_plan(
        ingest, run_config=yaml_block("# a Celery run's config")
    ).step_keys_to_execute
    with pytest.raises(dg.DagsterInvalidConfigError):
        create_execution_plan(ingest, run_config={"execution": {"config": {"time_limit": {"ingest": 1}}}})
