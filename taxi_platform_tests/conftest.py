import csv
import os
from pathlib import Path

import pytest

from taxi_platform_tests.bigquery import bigquery_emulator  # noqa: F401 (emulator fixtures)
from taxi_platform_tests.gcs import gcs, gcs_emulator  # noqa: F401
from taxi_platform_tests.source_server import SourceServer

TEAM_SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyc-tlc"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real TLC files: TAXI_SAMPLE_DATA, else the team's ../shared copy beside the project."""
    folder = Path(os.environ.get("TAXI_SAMPLE_DATA") or TEAM_SAMPLE_DATA)
    if not (folder / "MANIFEST.tsv").is_file():
        pytest.skip(f"no real TLC sample files at {folder}: set TAXI_SAMPLE_DATA")
    return folder


@pytest.fixture(scope="session")
def manifest(sample_data) -> dict[str, dict]:
    with open(sample_data / "MANIFEST.tsv") as f:
        return {row["path"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="session")
def overlay(tmp_path_factory) -> Path:
    """Files a test publishes on top of the real ones."""
    return tmp_path_factory.mktemp("published")


@pytest.fixture(scope="session")
def source_server(sample_data, overlay):
    with SourceServer(overlay, sample_data) as server:
        yield server


@pytest.fixture
def taxi_env(source_server, tmp_path, monkeypatch) -> Path:
    """The environment of a local-profile deployment against the test source; returns the data dir."""
    monkeypatch.setenv("TAXI_RELEASES_URL", f"{source_server.url}/releases")
    monkeypatch.setenv("TAXI_TLC_URL", source_server.url)
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TAXI_SOURCE", raising=False)
    monkeypatch.delenv("TAXI_PROFILE", raising=False)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> str:
    """A real PostgreSQL: TAXI_TEST_POSTGRES_URL (CI: the machine's server), else an embedded one."""
    url = os.environ.get("TAXI_TEST_POSTGRES_URL")
    if url:
        return url
    import pgserver

    return pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete").get_uri()


@pytest.fixture
def pg_schema(postgres_url, monkeypatch) -> str:
    """A fresh schema for the test's tables; the local profile is pointed at it."""
    import uuid

    import psycopg

    schema = f"taxi_test_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("TAXI_POSTGRES_URL", postgres_url)
    monkeypatch.setenv("TAXI_POSTGRES_SCHEMA", schema)
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
