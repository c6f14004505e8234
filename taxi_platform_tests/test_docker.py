"""docker/: what can be proven without a Docker engine (none runs on our machines)."""

import re
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "docker"

pytestmark = pytest.mark.fast


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_the_services_and_their_wiring():
    services = compose()["services"]
    assert {"postgres", "code", "webserver", "daemon", "fake-gcs", "bigquery-emulator"} <= set(services)
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]  # not on every interface
    for name in ("code", "webserver", "daemon"):
        env = services[name]["environment"]
        assert env["DAGSTER_HOME"] == "/opt/dagster/home" and env["DAGSTER_PG_HOST"] == "postgres"
        # docker/dagster.yaml, or another instance file of docker/ (DAGSTER_YAML=dagster-celery.yaml)
        assert (
            "./${DAGSTER_YAML:-dagster.yaml}:/opt/dagster/home/dagster.yaml:ro" in services[name]["volumes"]
        )
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("code", "daemon"):  # the ones that run assets see the same data and database
        assert "taxi-data:/data" in services[name]["volumes"]
        assert services[name]["environment"]["TAXI_POSTGRES_URL"].endswith("@postgres:5432/taxi")
    named = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if not v.startswith((".", "/"))  # not a host path
    }
    assert named == set(compose()["volumes"])
    for name in ("webserver", "daemon"):  # they launch, watch and terminate the run containers
        assert "/var/run/docker.sock:/var/run/docker.sock" in services[name]["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock" not in services["code"]["volumes"]
    assert all(
        s.get("profiles") == ["gcp-emulators"]
        for n, s in services.items()
        if n in ("fake-gcs", "bigquery-emulator")
    )


def test_the_workspace_reaches_the_code_server_the_image_starts():
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert workspace["host"] in compose()["services"]
    assert f'"-p", "{workspace["port"]}"' in dockerfile and f"EXPOSE {workspace['port']}" in dockerfile
    assert '"-m", "taxi_platform.definitions"' in dockerfile


def stages(dockerfile: str) -> dict[str, str]:
    """Each stage of the Dockerfile: its name, and its text up to the next stage."""
    parts = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", part).group(1): part for part in parts}


def test_the_images_install_the_locked_runtime_dependencies_only():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    by_name = stages(dockerfile)
    assert list(by_name) == ["base", "bigquery-emulator", "runtime"]  # runtime, the last, is the default
    installs = re.findall(r"^RUN pip install (.+)$", by_name["base"], flags=re.M)
    assert installs == ["--require-hashes -r requirements/runtime.txt", "--no-deps ."]
    assert re.findall(r"^RUN pip install (.+)$", by_name["bigquery-emulator"], flags=re.M) == [
        "--require-hashes -r requirements/bigquery-emulator.txt"
    ]
    # The runtime image launches the runs (the webserver, the daemon and each run's container).
    assert re.findall(r"^RUN pip install (.+)$", by_name["runtime"], flags=re.M) == [
        "--require-hashes -r requirements/deploy.txt"
    ]
    assert "[test]" not in dockerfile and "test.txt" not in dockerfile
    test_only = {"pytest", "playwright", "bqemulator", "ruff", "pyright", "pytest-cov", "dlt"}
    assert not test_only & set(lock("runtime.txt")) and not test_only & set(lock("deploy.txt"))
    assert not {"dagster-docker", "dagster-k8s", "dagster-celery"} & set(lock("runtime.txt"))
    services = compose()["services"]
    assert {name: s["build"]["target"] for name, s in services.items() if "build" in s} == {
        "code": "runtime",
        "webserver": "runtime",
        "daemon": "runtime",
        "bigquery-emulator": "bigquery-emulator",
    }


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)).lower()


def pins(requirements: list[str]) -> dict[str, str]:
    """The exact pins of a pyproject list (the self-reference to another extra has none)."""
    return {name(r): r.split("==")[1].split(";")[0].strip() for r in requirements if "==" in r}


def lock(file: str) -> dict[str, str]:
    text = (ROOT / "requirements" / file).read_text()
    return {
        name(m[0]): m[1] for m in re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", text, re.M)
    }


@pytest.mark.parametrize(
    ("file", "sections"),
    [
        ("runtime.txt", ["dependencies", "gcp"]),
        ("deploy.txt", ["dependencies", "gcp", "deploy", "celery"]),
        ("test.txt", ["dependencies", "test", "gcp", "bigquery-emulator", "deploy", "bench", "celery"]),
        ("bigquery-emulator.txt", ["dependencies", "gcp", "bigquery-emulator"]),
    ],
)
def test_every_pin_of_pyproject_is_in_its_lock_at_the_same_version(file, sections):
    """A pin changed in pyproject.toml without regenerating the locks (requirements/README.md) fails."""
    extras = PROJECT["optional-dependencies"]
    wanted = {}
    for section in sections:
        wanted |= pins(PROJECT["dependencies"] if section == "dependencies" else extras[section])
    locked = lock(file)
    assert {package: locked.get(package) for package in wanted} == wanted


def test_the_locks_agree_and_say_how_they_were_made():
    """runtime, deploy and bigquery-emulator are resolved within test: one version a package in all four,
    each regenerated by a command requirements/README.md gives."""
    test = lock("test.txt")
    for file in ("runtime.txt", "deploy.txt", "bigquery-emulator.txt"):
        assert {p: test.get(p) for p in lock(file)} == lock(file)
    readme = (ROOT / "requirements" / "README.md").read_text()
    for file in ("test.txt", "runtime.txt", "deploy.txt", "bigquery-emulator.txt"):
        command = re.search(r"^#    (uv pip compile .+)$", (ROOT / "requirements" / file).read_text(), re.M)
        assert command.group(1) in readme


def test_the_dagster_yaml_of_the_compose_file_uses_the_compose_database_settings():
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    db = instance["storage"]["postgres"]["postgres_db"]
    assert {db[k]["env"] for k in ("hostname", "port", "username", "password", "db_name")} <= set(
        compose()["services"]["daemon"]["environment"]
    )
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_both_instances_monitor_runs_alike_with_settings_dagster_accepts(tmp_path, monkeypatch):
    """Run monitoring ends a run stuck starting or canceling, or past its runtime limit, and frees the
    concurrency slots a finished run still holds (a killed run's would block its pools)."""
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert yaml.safe_load((DOCKER / "dagster.yaml").read_text())["run_monitoring"] == local["run_monitoring"]
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # its storage paths are relative to the working directory
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert instance.run_monitoring_max_runtime_seconds > 0
