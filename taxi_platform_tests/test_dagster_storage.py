"""docker/dagster.yaml puts Dagster's runs and events on a real PostgreSQL server."""

import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import psycopg
import pytest

from taxi_platform_tests.helpers import materialize_with

pytestmark = [pytest.mark.postgres]
DOCKER_DAGSTER_YAML = Path(__file__).parents[1] / "docker" / "dagster.yaml"
ZONES = dg.AssetKey(["reference", "taxi_zones"])


@pytest.fixture
def postgres_instance(postgres_url, tmp_path, monkeypatch):
    database = f"dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    server = urlparse(postgres_url)
    for name, value in {
        "HOST": server.hostname,
        "PORT": str(server.port or 5432),
        "USER": server.username or "postgres",
        "PASSWORD": server.password or "",
        "DB": database,
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    shutil.copy(DOCKER_DAGSTER_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        yield instance, server._replace(path=f"/{database}").geturl()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


def test_runs_and_events_are_stored_in_postgres(taxi_env, postgres_instance):
    instance, database_url = postgres_instance
    result = materialize_with(instance, "reference/taxi_zones")
    assert result.success
    with psycopg.connect(database_url) as conn:
        runs = conn.execute("SELECT run_id, status FROM runs").fetchall()
        materialized = conn.execute(
            "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            [result.run_id],
        ).fetchall()
    assert runs == [(result.run_id, "SUCCESS")]
    assert materialized == [(ZONES.to_string(),)]
    assert instance.get_latest_materialization_event(ZONES).run_id == result.run_id
