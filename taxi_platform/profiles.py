"""The one place that reads the environment: it maps TAXI_PROFILE to the resources of that profile.

Called when the definitions load, never at import time.
- local: the lake in a folder, the warehouse in an embedded DuckDB file, both under TAXI_DATA_DIR.
- gcp: the lake on Google Cloud Storage, the warehouse on BigQuery; credentials from Application
  Default Credentials (or GOOGLE_APPLICATION_CREDENTIALS), never from files in the repository.
PostgreSQL is TAXI_POSTGRES_URL in both, or an embedded server under TAXI_DATA_DIR.
"""

import os
from collections.abc import Mapping

import dagster as dg

from taxi_platform.io_managers.lake import LakeIOManager
from taxi_platform.io_managers.postgres import PostgresIOManager
from taxi_platform.io_managers.warehouse import DuckDBWarehouse
from taxi_platform.sources.public import RELEASES_URL, TLC_URL, TaxiSource

PROFILES = ("local", "gcp")


def resources_for(environ: Mapping[str, str] = os.environ) -> dict:
    profile = environ.get("TAXI_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"TAXI_PROFILE must be one of {PROFILES}, not {profile!r}")
    data_dir = os.path.abspath(environ.get("TAXI_DATA_DIR", "data"))
    resources = {
        "taxi_source": TaxiSource(
            releases_url=environ.get("TAXI_RELEASES_URL", RELEASES_URL),
            tlc_url=environ.get("TAXI_TLC_URL", TLC_URL),
            source=environ.get("TAXI_SOURCE", "auto"),
        ),
        "postgres_io_manager": PostgresIOManager(
            # No URL: an embedded server under the data root, so nothing needs installing.
            url=dg.EnvVar("TAXI_POSTGRES_URL") if environ.get("TAXI_POSTGRES_URL") else "",
            embedded_dir=os.path.join(data_dir, "postgres"),
            db_schema=environ.get("TAXI_POSTGRES_SCHEMA", "taxi"),
        ),
    }
    dataset = environ.get("TAXI_WAREHOUSE_DATASET", "taxi")
    if profile == "local":
        lake_root = os.path.join(data_dir, "lake")
        return {
            **resources,
            "lake_io_manager": LakeIOManager(root=lake_root),
            "warehouse_io_manager": DuckDBWarehouse(
                path=os.path.join(data_dir, "warehouse.duckdb"), dataset=dataset, lake_root=lake_root
            ),
        }
    from dagster_gcp import BigQueryResource  # the Google clients: only this profile imports them

    from taxi_platform.io_managers.bigquery import BigQueryWarehouse

    bucket, prefix = environ["TAXI_GCS_BUCKET"], environ.get("TAXI_GCS_PREFIX", "taxi")
    lake_root = f"gs://{bucket}/{prefix}".rstrip("/")
    return {
        **resources,
        "lake_io_manager": LakeIOManager(root=lake_root),
        "warehouse_io_manager": BigQueryWarehouse(
            bigquery=BigQueryResource(
                project=dg.EnvVar("TAXI_GCP_PROJECT"),
                location=environ.get("TAXI_BQ_LOCATION", "US"),
            ),
            dataset=dataset,
            lake_root=lake_root,
        ),
    }
