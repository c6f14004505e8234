"""Beyond one machine: the docker compose instance (DockerRunLauncher, the run queue) and the Kubernetes
path of docs/scale-out.md (the Helm chart's K8sRunLauncher, k8s_job_executor), loaded with Dagster's and
dagster-docker's / dagster-k8s's own config schemas. No Docker engine and no cluster is contacted."""

import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.execution.api import create_execution_plan
from dagster._core.instance.config import ConcurrencyConfig, dagster_instance_config
from dagster._core.launcher import RunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig
from dagster._core.utils import parse_env_var
from dagster._record import copy
from dagster._serdes import ConfigurableClassData
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext
from dagster_k8s import K8sRunLauncher, k8s_job_executor

from taxi_platform.definitions import defs
from taxi_platform.executors import QUEUES
from taxi_platform.io_managers.bigquery import BigQueryWarehouse
from taxi_platform_tests.test_docker import compose

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "docker"
DOC = (ROOT / "docs" / "scale-out.md").read_text()

pytestmark = pytest.mark.fast


def docker_instance(tmp_path) -> dict:
    """docker/dagster.yaml as Dagster validates it (its schema, and runs limits set in one place)."""
    shutil.copy(DOCKER / "dagster.yaml", tmp_path / "dagster.yaml")
    return dagster_instance_config(str(tmp_path))[0]


def rehydrate(entry: dict, base: type):
    """The class an instance config entry names, built from its config (checked by the class's schema)."""
    data = ConfigurableClassData(entry["module"], entry["class"], yaml.safe_dump(entry.get("config", {})))
    return data.rehydrate(as_type=base)


def run_queue(instance: dict) -> RunQueueConfig:
    """The run queue the daemon applies, combined from the coordinator and `concurrency` as Dagster does."""
    coordinator = rehydrate(instance["run_coordinator"], QueuedRunCoordinator)
    config = ConcurrencyConfig.from_concurrency_settings(
        instance.get("concurrency", {}), coordinator.get_run_queue_config()
    )
    return config.run_queue_config


def compose_value(value: str) -> str:
    """A compose environment value with `${NAME:-default}` taken at its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


DATASET_LIMIT = {"key": "dataset", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}


def test_compose_runs_each_run_in_a_container_of_the_code_image(tmp_path, monkeypatch):
    instance = docker_instance(tmp_path)
    launcher = rehydrate(instance["run_launcher"], RunLauncher)
    assert isinstance(launcher, DockerRunLauncher)
    spec = compose()
    services = spec["services"]
    code = services["code"]
    assert launcher.image == code["image"] == code["environment"]["DAGSTER_CURRENT_IMAGE"]
    assert all(services[name]["image"] == code["image"] for name in ("webserver", "daemon"))
    assert launcher.networks == [spec["networks"]["default"]["name"]]
    # The run containers mount what the code service mounts, by the volumes' fixed names.
    mounts = {
        v.split(":")[1]: spec["volumes"][v.split(":")[0]]["name"]
        for v in code["volumes"]
        if not v.startswith((".", "/"))
    }
    assert {m.split(":")[1]: m.split(":")[0] for m in launcher.container_kwargs["volumes"]} == mounts

    # A run's container gets the daemon's values of the listed variables (what launch_run computes):
    # every variable the code service runs with, and those the instance's storage reads.
    daemon_env = {k: compose_value(str(v)) for k, v in services["daemon"]["environment"].items()}
    for name, value in daemon_env.items():
        monkeypatch.setenv(name, value)
    context = DockerContainerContext.create_for_run(
        dg.DagsterRun(job_name="yellow_ingest", run_id="a-run"), launcher
    )
    run_env = dict(parse_env_var(name) for name in context.env_vars)
    storage = instance["storage"]["postgres"]["postgres_db"].values()
    storage_env = {v["env"] for v in storage if isinstance(v, dict)}
    code_env = set(code["environment"]) - {"DAGSTER_HOME", "DAGSTER_CURRENT_IMAGE"}
    assert storage_env | code_env == set(run_env)
    assert run_env == {name: daemon_env[name] for name in run_env}
    assert run_env["TAXI_POSTGRES_URL"].endswith("@postgres:5432/taxi")
    assert context.networks == launcher.networks


def test_compose_queues_runs_four_at_once_two_of_a_dataset(tmp_path):
    queue = run_queue(docker_instance(tmp_path))
    assert queue.max_concurrent_runs == 4
    assert queue.tag_concurrency_limits == [DATASET_LIMIT]
    # The tag is the one the ingest jobs carry (the lake's jobs, rollback, vacuum and conversion, have none).
    tagged = {job.tags.get("dataset") for job in defs().jobs} - {None}
    assert tagged == {"yellow", "green", "fhv", "fhvhv"}


def test_compose_runs_two_celery_workers_on_a_broker_that_outwaits_the_longest_step(tmp_path):
    services = compose()["services"]
    broker = services["rabbitmq"]
    assert broker["profiles"] == ["celery"] and "rabbitmq-diagnostics" in broker["healthcheck"]["test"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert len(workers) == 2
    names = set()
    for service in workers.values():
        command = service["command"]
        assert command[:4] == ["celery", "-A", "taxi_platform.worker", "worker"]
        assert set(command[command.index("-Q") + 1].split(",")) == set(QUEUES)  # every kind of work
        names.add(command[command.index("-n") + 1])
        assert service["image"] == services["code"]["image"] and service["profiles"] == ["celery"]
        assert "volumes" not in service  # no disk shared with another machine
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        env = {k: compose_value(str(v)) for k, v in service["environment"].items()}
        assert env["TAXI_CELERY_BROKER"] == "amqp://taxi:taxi@rabbitmq:5672//"
        assert env["TAXI_CELERY_BROKER"].split(":")[2].split("@")[0] == compose_value(
            broker["environment"]["RABBITMQ_DEFAULT_PASS"]
        )
        assert set(services["daemon"]["environment"]) <= set(env)  # the run's settings, and Dagster's
    assert len(names) == 2  # each worker names itself in the step events
    mounted = dict(v.split(":", 1) for v in broker["volumes"])
    assert mounted["./rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    conf = (DOCKER / "rabbitmq.conf").read_text().splitlines()
    settings = dict(line.split(" = ") for line in conf if " = " in line)
    assert int(settings["consumer_timeout"]) > 1000 * max(QUEUES.values())


def test_the_celery_instance_is_the_compose_one_with_step_logs_in_cloud_storage(tmp_path):
    """docker/dagster-celery.yaml: docker/dagster.yaml's instance (Dagster's schema checks it), with
    dagster-gcp's compute log manager, whose own schema accepts its settings."""
    from dagster._config import validate_config
    from dagster_gcp.gcs.compute_log_manager import GCSComputeLogManager

    shutil.copy(DOCKER / "dagster-celery.yaml", tmp_path / "dagster.yaml")
    celery = dagster_instance_config(str(tmp_path))[0]
    (tmp_path / "compose").mkdir()
    compose_instance = docker_instance(tmp_path / "compose")
    logs = celery.pop("compute_logs")
    assert celery == compose_instance
    assert (logs["module"], logs["class"]) == (GCSComputeLogManager.__module__, "GCSComputeLogManager")
    assert validate_config(GCSComputeLogManager.config_type(), logs["config"]).success
    assert logs["config"]["bucket"] == {"env": "TAXI_GCS_BUCKET"}  # the lake's bucket


def yaml_block(first_line: str) -> dict:
    """The ```yaml block of docs/scale-out.md whose first line is `first_line`."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", DOC, flags=re.M | re.S)
    (block,) = [b for b in blocks if b.splitlines()[0].startswith(first_line)]
    return yaml.safe_load(block)


VALUES = yaml_block("# values.yaml")
RELEASE_NAMESPACE = "dagster"


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def chart_instance(values: dict) -> dict:
    """The instance sections the Helm chart renders from `values` (helm/dagster/templates/helpers/
    instance/_run-launcher.tpl, _run-coordinator.tpl, _concurrency.tpl, _postgresql.tpl): keys in
    snake case, env ConfigMaps and Secrets by name, and the chart's own service account, instance
    ConfigMap and Postgres password Secret."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    by_name = {"envConfigMaps", "envSecrets"}
    launcher = {snake(key): value for key, value in k8s.items() if key not in by_name | {"runK8sConfig"}}
    launcher |= {snake(key): [source["name"] for source in k8s[key]] for key in by_name & set(k8s)}
    if "runK8sConfig" in k8s:
        launcher["run_k8s_config"] = {snake(key): value for key, value in k8s["runK8sConfig"].items()}
    launcher |= {
        "job_namespace": k8s.get("jobNamespace") or RELEASE_NAMESPACE,
        "service_account_name": "dagster",
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    if any(value not in (None, [], {}, "", False) for value in queued.values()):
        max_runs = queued.get("maxConcurrentRuns")
        coordinator["config"] = {"max_concurrent_runs": -1 if max_runs is None else max_runs} | {
            snake(key): value
            for key, value in queued.items()
            if key != "maxConcurrentRuns" and value not in (None, [], {}, "", False)
        }
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    postgres = values["postgresql"]
    return {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": postgres["postgresqlUsername"],
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "hostname": postgres["postgresqlHost"],
                    "db_name": postgres["postgresqlDatabase"],
                    "port": postgres["service"]["port"],
                    "params": {},
                    "scheme": postgres["postgresqlScheme"],
                }
            }
        },
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher},
        "run_coordinator": coordinator,
        "concurrency": {
            "pools": {snake(key): value for key, value in pools.items()},
            "runs": {snake(key): value for key, value in runs.items()},
        },
    }


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: unreachable, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {}}]
contexts: [{name: here, context: {cluster: unreachable, user: nobody}}]
current-context: here
"""


def test_the_helm_values_give_an_instance_dagster_and_dagster_k8s_accept(tmp_path):
    instance = chart_instance(VALUES)
    assert VALUES["concurrency"]["enabled"] and VALUES["dagsterDaemon"]["runCoordinator"]["enabled"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance))
    validated = dagster_instance_config(str(tmp_path))[0]  # also refuses run limits set twice
    assert validated["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"

    # Outside a cluster the launcher loads a kubeconfig instead (it only reads it).
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    launcher_entry = instance["run_launcher"]
    launcher_entry["config"] |= {
        "load_incluster_config": False,
        "kubeconfig_file": str(tmp_path / "kubeconfig"),
    }
    launcher = rehydrate(launcher_entry, RunLauncher)
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.postgres_password_secret == "dagster-postgresql"
    assert launcher.resources["requests"]["memory"] == "2Gi"
    assert launcher.image_pull_policy == "IfNotPresent"

    # The same run queue as docker compose, twice the runs.
    queue = run_queue(validated)
    assert queue.max_concurrent_runs == 8 and queue.tag_concurrency_limits == [DATASET_LIMIT]
    (tmp_path / "compose").mkdir()
    assert validated["concurrency"]["pools"] == docker_instance(tmp_path / "compose")["concurrency"]["pools"]


def test_the_code_server_runs_the_image_with_the_settings_the_doc_creates():
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f'"-m", "{deployment["codeServerArgs"][1]}"' in dockerfile
    assert f"EXPOSE {deployment['port']}" in dockerfile
    assert deployment["image"]["tag"] != "latest" and deployment["includeConfigInLaunchedRuns"]["enabled"]
    created = {
        name: kind for kind, name in re.findall(r"kubectl create (configmap|secret generic) ([\w-]+)", DOC)
    }
    assert [source["name"] for source in deployment["envConfigMaps"]] == ["taxi-platform-env"]
    assert created["taxi-platform-env"] == "configmap"
    assert [source["name"] for source in deployment["envSecrets"]] == ["taxi-platform-secrets"]
    assert (
        created["taxi-platform-secrets"]
        == created[VALUES["global"]["postgresqlSecretName"]]
        == "secret generic"
    )
    assert "--from-literal=TAXI_PROFILE=gcp" in DOC
    # Secrets come from the shell, never written out; the values file holds none.
    assert re.findall(r'--from-literal=([\w-]+)="\$(\w+)"', DOC) == [
        ("TAXI_POSTGRES_URL", "TAXI_POSTGRES_URL"),
        ("TAXI_ALERT_URLS", "TAXI_ALERT_URLS"),
        ("postgresql-password", "DAGSTER_PG_PASSWORD"),
    ]
    assert (
        "postgresqlPassword" not in yaml.safe_dump(VALUES) and not VALUES["generatePostgresqlPasswordSecret"]
    )


@pytest.fixture
def gcp_definitions(monkeypatch) -> dg.Definitions:
    """The code location as the cluster loads it: the gcp profile of the doc's ConfigMap."""
    for name, value in re.findall(r"--from-literal=(TAXI_\w+)=([^\s\\\"]+)", DOC):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TAXI_POSTGRES_URL", "postgresql://taxi@cloud-sql/taxi")  # the doc's secret
    return defs()


def test_every_job_of_the_code_location_runs_on_the_k8s_job_executor_as_the_doc_configures_it(
    gcp_definitions,
):
    """Step pods share no disk: their outputs go to the bucket and BigQuery (the gcp profile), and the
    doc's run config sizes them."""
    resources = gcp_definitions.resources
    assert resources["lake"].root.startswith("gs://")
    assert isinstance(resources["warehouse_io_manager"], BigQueryWarehouse)
    run_config = yaml_block("# run config")
    on_k8s = copy(gcp_definitions, executor=k8s_job_executor)
    jobs = on_k8s.resolve_all_job_defs()
    assert {job.name for job in jobs} >= {f"{name}_ingest" for name in ("yellow", "green", "fhv", "fhvhv")}
    # The one job that needs config of its own: which month to put back.
    rollback = {"ops": {"rollback_month_op": {"config": {"dataset": "green", "month": "2020-10"}}}}
    for job in jobs:
        assert job.executor_def is k8s_job_executor
        config = run_config | rollback if job.name == "rollback_month" else run_config
        assert create_execution_plan(job, run_config=config).step_keys_to_execute
    with pytest.raises(dg.DagsterInvalidConfigError):
        create_execution_plan(jobs[0], run_config={"execution": {"config": {"max_concurent": 2}}})
