"""The one place that reads the environment: TAXI_PROFILE's resources and the sensors' settings.

Read when the definitions load (`load_profile`), never at import time.
- local: the lake in a folder, the warehouse in an embedded DuckDB file, both under TAXI_DATA_DIR.
- gcp: the lake on Google Cloud Storage, the warehouse on BigQuery; credentials from Application
  Default Credentials (or GOOGLE_APPLICATION_CREDENTIALS), never from files in the repository.
PostgreSQL is TAXI_POSTGRES_URL in both, or an embedded server under TAXI_DATA_DIR. Alerts go to the
Apprise URLs of TAXI_ALERT_URLS (commas or spaces between them), with links to TAXI_UI_URL.
The load ledger's code version is the package's version plus TAXI_GIT_COMMIT (set by the image build),
or the checkout's git commit when the code runs from one.
TAXI_EXECUTOR picks where steps run (taxi_platform/executors.py): in_process (the default), multiprocess,
or celery, on workers reached through the broker TAXI_CELERY_BROKER (results: TAXI_CELERY_BACKEND, else
the broker's rpc://), which refuses every store that lives on one machine.
"""

import importlib.metadata
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

from taxi_platform.dbt_runner import DbtWarehouseCli
from taxi_platform.executors import EXECUTORS, SingleMachineStore
from taxi_platform.io_managers.arrow_data import use_jemalloc
from taxi_platform.io_managers.postgres import PostgresIOManager
from taxi_platform.io_managers.warehouse import DuckDBSQL, DuckDBWarehouse
from taxi_platform.lake.lake_io_manager import LakeIOManager
from taxi_platform.lake.resource import Lake
from taxi_platform.notifications import Alerter
from taxi_platform.redaction import redact
from taxi_platform.sources.public import RELEASES_URL, SOURCE_CHOICES, TLC_URL, TaxiSource

PROFILES = ("local", "gcp")


@dataclass(frozen=True)
class SensorSettings:
    """Minimum intervals of the sensors, the HEAD requests a source sensor sends per tick, and how long
    a landed file must hold still (size and modification time) before it is taken."""

    source_interval_seconds: int = 600  # the TLC publishes monthly; a tick costs a few HEADs
    landing_interval_seconds: int = 30
    automation_interval_seconds: int = 30
    alert_interval_seconds: int = 30
    source_checks_per_tick: int = 24
    landing_stable_seconds: int = 30  # longer than a copy into landing/ pauses


@dataclass(frozen=True)
class Profile:
    resources: dict
    sensors: SensorSettings
    executor: dg.ExecutorDefinition


def load_profile(environ: Mapping[str, str] = os.environ) -> Profile:
    """The resources and sensor settings the environment asks for."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in environ:
        use_jemalloc()
    # gcsfs (the lake's Iceberg metadata in a bucket) reads this at import: its experimental file
    # system needs Google's storage-control API, which standard buckets and the emulator do without.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    return Profile(resources_for(environ), sensor_settings(environ), executor_for(environ))


@cache
def code_version() -> str:
    """`<package version>+<git commit>`, or the version alone when no commit is known."""
    version = importlib.metadata.version("taxi_platform")
    commit = os.environ.get("TAXI_GIT_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except OSError:  # no git here (the runtime image)
            commit = ""
    return f"{version}+{commit}" if commit else version


def sensor_settings(environ: Mapping[str, str]) -> SensorSettings:
    """TAXI_SENSOR_INTERVAL_SECONDS overrides every interval (e.g. 1 in tests);
    TAXI_SOURCE_CHECKS_PER_TICK bounds a source sensor's HEAD requests; TAXI_LANDING_STABLE_SECONDS
    (0 or more) is how long a landed file must hold still before it is taken."""
    defaults = SensorSettings()
    every = environ.get("TAXI_SENSOR_INTERVAL_SECONDS")
    stable = int(environ.get("TAXI_LANDING_STABLE_SECONDS", defaults.landing_stable_seconds))
    if stable < 0:
        raise ValueError(f"TAXI_LANDING_STABLE_SECONDS must be 0 or more, not {stable}")
    return SensorSettings(
        *(
            int(every) if every else default
            for default in (
                defaults.source_interval_seconds,
                defaults.landing_interval_seconds,
                defaults.automation_interval_seconds,
                defaults.alert_interval_seconds,
            )
        ),
        source_checks_per_tick=int(
            environ.get("TAXI_SOURCE_CHECKS_PER_TICK", defaults.source_checks_per_tick)
        ),
        landing_stable_seconds=stable,
    )


def executor_for(environ: Mapping[str, str] = os.environ) -> dg.ExecutorDefinition:
    """TAXI_EXECUTOR's executor. Celery's broker and backend are read when a run starts, from the
    variables (never written into a run's config); it refuses the stores that live on one machine."""
    name = environ.get("TAXI_EXECUTOR", "in_process")
    if name not in EXECUTORS:
        raise ValueError(f"TAXI_EXECUTOR must be one of {EXECUTORS}, not {name!r}")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if not environ.get("TAXI_CELERY_BROKER"):
        raise ValueError(
            "TAXI_EXECUTOR=celery needs TAXI_CELERY_BROKER, e.g. amqp://user:password@host:5672//"
        )
    stores = single_machine_stores(environ)
    if stores:
        raise SingleMachineStore(
            "TAXI_EXECUTOR=celery runs steps on workers that may be on other machines, which cannot "
            "reach " + "; ".join(stores)
        )
    from taxi_platform.celery_executor import celery_executor  # the celery extra: only this executor

    backend = {"env": "TAXI_CELERY_BACKEND"} if environ.get("TAXI_CELERY_BACKEND") else "rpc://"
    return celery_executor({"env": "TAXI_CELERY_BROKER"}, backend)


def celery_urls(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The broker and result backend of the Celery workers (taxi_platform/worker.py)."""
    return environ["TAXI_CELERY_BROKER"], environ.get("TAXI_CELERY_BACKEND") or "rpc://"


def single_machine_stores(environ: Mapping[str, str]) -> list[str]:
    """The stores of this environment that only processes on one machine reach, each with what to use
    instead."""
    data_dir = os.path.abspath(environ.get("TAXI_DATA_DIR", "data"))
    stores = []
    if environ.get("TAXI_PROFILE", "local") == "local":
        stores += [
            f"the lake in the folder {data_dir}/lake (use TAXI_PROFILE=gcp: the lake in Cloud Storage)",
            f"the DuckDB warehouse {data_dir}/warehouse.duckdb (use TAXI_PROFILE=gcp: BigQuery)",
        ]
    if not environ.get("TAXI_POSTGRES_URL"):
        stores.append(
            f"the embedded PostgreSQL under {data_dir}/postgres (set TAXI_POSTGRES_URL to a server)"
        )
    catalog = environ.get("TAXI_LAKE_CATALOG_URL", "")
    if catalog.startswith("sqlite"):
        stores.append(
            f"the lake's SQLite catalog {redact(catalog)} (set TAXI_LAKE_CATALOG_URL to a postgresql:// "
            "database, or unset it for TAXI_POSTGRES_URL's)"
        )
    return stores


def resources_for(environ: Mapping[str, str] = os.environ) -> dict:
    profile = environ.get("TAXI_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"TAXI_PROFILE must be one of {PROFILES}, not {profile!r}")
    data_dir = os.path.abspath(environ.get("TAXI_DATA_DIR", "data"))
    gcs_endpoint = environ.get("STORAGE_EMULATOR_HOST", "")
    source = environ.get("TAXI_SOURCE", "auto")
    if source not in SOURCE_CHOICES:
        raise ValueError(f"TAXI_SOURCE must be one of {SOURCE_CHOICES}, not {source!r}")
    resources = {
        "alerter": Alerter(
            urls=[url for url in re.split(r"[\s,]+", environ.get("TAXI_ALERT_URLS", "")) if url],
            ui_url=environ.get("TAXI_UI_URL", "http://localhost:3000"),
        ),
        "taxi_source": TaxiSource(
            releases_url=environ.get("TAXI_RELEASES_URL", RELEASES_URL),
            tlc_url=environ.get("TAXI_TLC_URL", TLC_URL),
            source=source,
            gcs_endpoint=gcs_endpoint,
        ),
        "postgres_io_manager": PostgresIOManager(
            # No URL: an embedded server under the data root, so nothing needs installing.
            url=dg.EnvVar("TAXI_POSTGRES_URL") if environ.get("TAXI_POSTGRES_URL") else "",
            embedded_dir=os.path.join(data_dir, "postgres"),
            db_schema=environ.get("TAXI_POSTGRES_SCHEMA", "taxi"),
        ),
    }
    dataset = environ.get("TAXI_WAREHOUSE_DATASET", "taxi")
    retention_days = float(environ.get("TAXI_LAKE_RETENTION_DAYS", "30"))
    if profile == "local":
        lake_root = os.path.join(data_dir, "lake")
        lake = Lake(
            root=lake_root,
            retention_days=retention_days,
            catalog_url=dg.EnvVar("TAXI_LAKE_CATALOG_URL") if environ.get("TAXI_LAKE_CATALOG_URL") else "",
        )
        sql = DuckDBSQL(path=os.path.join(data_dir, "warehouse.duckdb"), dataset=dataset)
        return {
            **resources,
            "lake": lake,
            "lake_io_manager": LakeIOManager(lake=lake),
            "warehouse_sql": sql,
            "warehouse_io_manager": DuckDBWarehouse(sql=sql, lake_root=lake_root),
            "dbt": DbtWarehouseCli(target=profile, warehouse=sql),
        }
    from dagster_gcp import BigQueryResource  # the Google clients: only this profile imports them

    from taxi_platform.io_managers.bigquery import BigQuerySQL, BigQueryWarehouse

    bucket, prefix = environ["TAXI_GCS_BUCKET"], environ.get("TAXI_GCS_PREFIX", "taxi")
    lake_root = f"gs://{bucket}/{prefix}".rstrip("/")
    sql = BigQuerySQL(
        bigquery=BigQueryResource(
            project=dg.EnvVar("TAXI_GCP_PROJECT"), location=environ.get("TAXI_BQ_LOCATION", "US")
        ),
        dataset=dataset,
    )
    # The lake's Iceberg catalog: its own database, or the platform's PostgreSQL (resolved when a run
    # starts, from a secret in a cluster: a run without either fails naming TAXI_POSTGRES_URL).
    catalog_url = "TAXI_LAKE_CATALOG_URL" if environ.get("TAXI_LAKE_CATALOG_URL") else "TAXI_POSTGRES_URL"
    lake = Lake(
        root=lake_root,
        gcs_endpoint=gcs_endpoint,
        retention_days=retention_days,
        catalog_url=dg.EnvVar(catalog_url),
    )
    return {
        **resources,
        "lake": lake,
        "lake_io_manager": LakeIOManager(lake=lake),
        "warehouse_sql": sql,
        # BigQuery reads the lake's Delta tables only through a BigLake connection.
        "warehouse_io_manager": BigQueryWarehouse(
            sql=sql,
            lake_root=lake_root if environ.get("TAXI_BQ_CONNECTION") else "",
            lake_connection=environ.get("TAXI_BQ_CONNECTION", ""),
        ),
        "dbt": DbtWarehouseCli(target=profile, warehouse=sql),
    }


def dbt_profile(environ: Mapping[str, str] = os.environ) -> str:
    """The dbt profiles.yml that the `dbt` resource of this environment runs with, for running dbt by
    hand (`python -m taxi_platform.profiles > <folder>/profiles.yml`)."""
    import yaml

    with resources_for(environ)["dbt"].process_config_and_initialize_cm() as dbt:
        return yaml.safe_dump(dbt.profile())


if __name__ == "__main__":
    print(dbt_profile(), end="")
