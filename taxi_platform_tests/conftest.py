import os
from pathlib import Path

import dagster as dg
import pytest

# gcsfs reads this at import (as profiles.load_profile sets it for the platform): its experimental
# file system needs an API the Cloud Storage emulator does not have.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from synthetic.months import FREQUENT, write_source_month
from synthetic.source_server import SourceServer
from taxi_platform.datasets import DATASETS
from taxi_platform.dbt_runner import TRANSFORM
from taxi_platform_tests.bigquery import bigquery_emulator  # noqa: F401 (emulator fixtures)
from taxi_platform_tests.gcs import gcs, gcs_emulator  # noqa: F401
from taxi_platform_tests.real_data import RealDataMissing, real_data_folder

GREEN = DATASETS["green"]
# The synthetic source: green's course releases (CSV.gz) for 2020-04..2020-12, the TLC's parquet for
# 2023-12 and 2024-01, and the zones; small months, every quirk of the real files present.
RELEASE_MONTHS = [f"2020-{m:02d}" for m in range(4, 13)]
PARQUET_MONTHS = ["2023-12", "2024-01"]


def month_rows(month: str) -> int:
    """Rows of a synthetic month: a few thousand, different each month."""
    year, number = map(int, month.split("-"))
    return 2_000 + 97 * ((year * 12 + number) % 17)


@pytest.fixture(scope="session", autouse=True)
def dbt_manifest():
    """The dbt project's manifest, parsed again (as `dagster dev` does) when a file of the project is
    newer than it."""
    project = TRANSFORM.project_dir
    files = [
        f
        for f in project.rglob("*")
        if f.is_file() and TRANSFORM.target_path.name not in f.relative_to(project).parts
    ]
    manifest = TRANSFORM.manifest_path
    if not manifest.exists() or max(f.stat().st_mtime for f in files) > manifest.stat().st_mtime:
        TRANSFORM.preparer.prepare(TRANSFORM)


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> Path:
    """A folder laid out like the public sources, holding synthetic months (see RELEASE_MONTHS)."""
    root = tmp_path_factory.mktemp("synthetic_source")
    for month in RELEASE_MONTHS:
        write_source_month(root, GREEN, month, month_rows(month), forms=("csv",), quirks=FREQUENT)
    for month in PARQUET_MONTHS:
        write_source_month(root, GREEN, month, month_rows(month), forms=("parquet",), quirks=FREQUENT)
    return root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real TLC files of the realdata tier, verified by sha256 (taxi_platform_tests/real_data.py)."""
    try:
        return real_data_folder()
    except RealDataMissing as error:
        pytest.skip(f"realdata: {error}")


@pytest.fixture(scope="session")
def overlay(tmp_path_factory) -> Path:
    """Files a test publishes on top of the synthetic ones."""
    return tmp_path_factory.mktemp("published")


@pytest.fixture(scope="session")
def session_source_server(published, overlay):
    with SourceServer(overlay, published) as server:
        yield server


@pytest.fixture
def source_server(session_source_server):
    """The session's source server for one test: no fault, outage or request of another test before it,
    and none of its own left after it."""
    session_source_server.reset()
    yield session_source_server
    session_source_server.reset()


@pytest.fixture
def publish(overlay):
    """Publish a file at the test source for one test: publish("releases/green/...", bytes)."""
    written = []

    def write(path: str, data: bytes) -> Path:
        file = overlay / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        written.append(file)
        return file

    yield write
    for file in written:
        file.unlink(missing_ok=True)


@pytest.fixture
def instance():
    """An ephemeral Dagster instance for one test, closed after it."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


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


# The fault-injection suite (tests marked `faults`): each test (each case of a parametrized one) is a
# fault; it survived when every phase of its test passed. The tally closes the run's output.
_FAULTS_SURVIVED: dict[str, bool] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "faults" not in report.keywords:
        return
    if report.passed:
        _FAULTS_SURVIVED.setdefault(report.nodeid, True)
    else:  # failed, or skipped: not shown to survive
        _FAULTS_SURVIVED[report.nodeid] = False


def pytest_unconfigure(config: pytest.Config) -> None:
    if _FAULTS_SURVIVED and not hasattr(config, "workerinput"):  # the xdist controller, or a plain run
        survived = sum(_FAULTS_SURVIVED.values())
        config.get_terminal_writer().line(f"faults survived: {survived}/{len(_FAULTS_SURVIVED)}")
