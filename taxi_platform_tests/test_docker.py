"""docker/: what can be proven without a Docker engine (none runs on our machines)."""

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).parents[1] / "docker"
README = (Path(__file__).parents[1] / "README.md").read_text()


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_the_services_and_their_wiring():
    services = compose()["services"]
    assert {"postgres", "code", "webserver", "daemon", "fake-gcs", "bigquery-emulator"} <= set(services)
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]  # not on every interface
    for name in ("code", "webserver", "daemon"):
        env = services[name]["environment"]
        assert env["DAGSTER_HOME"] == "/opt/dagster/home" and env["DAGSTER_PG_HOST"] == "postgres"
        assert "./dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in services[name]["volumes"]
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("code", "daemon"):  # the ones that run assets see the same data and database
        assert "taxi-data:/data" in services[name]["volumes"]
        assert services[name]["environment"]["TAXI_POSTGRES_URL"].endswith("@postgres:5432/taxi")
    named = {
        v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")
    }
    assert named == set(compose()["volumes"])
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


def test_the_image_installs_the_way_the_readme_does():
    installed = re.search(r"RUN pip install --no-cache-dir (.+)", (DOCKER / "Dockerfile").read_text()).group(
        1
    )
    assert f"pip install {installed}" in README


def test_the_dagster_yaml_of_the_compose_file_uses_the_compose_database_settings():
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    db = instance["storage"]["postgres"]["postgres_db"]
    assert {db[k]["env"] for k in ("hostname", "port", "username", "password", "db_name")} <= set(
        compose()["services"]["daemon"]["environment"]
    )
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
