"""The one place that reads the environment: it maps TAXI_PROFILE to the resources of that profile.

Called when the definitions load, never at import time.
"""

import os
from collections.abc import Mapping

import dagster as dg

from taxi_platform.io_managers.lake import LakeIOManager
from taxi_platform.io_managers.postgres import PostgresIOManager
from taxi_platform.source import RELEASES_URL, TLC_URL, TaxiSource

PROFILES = ("local",)


def resources_for(environ: Mapping[str, str] = os.environ) -> dict:
    profile = environ.get("TAXI_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"TAXI_PROFILE must be one of {PROFILES}, not {profile!r}")
    data_dir = os.path.abspath(environ.get("TAXI_DATA_DIR", "data"))
    return {
        "taxi_source": TaxiSource(
            releases_url=environ.get("TAXI_RELEASES_URL", RELEASES_URL),
            tlc_url=environ.get("TAXI_TLC_URL", TLC_URL),
            source=environ.get("TAXI_SOURCE", "auto"),
        ),
        "lake_io_manager": LakeIOManager(root=os.path.join(data_dir, "lake")),
        "postgres_io_manager": PostgresIOManager(
            # No URL: an embedded server under the data root, so nothing needs installing.
            url=dg.EnvVar("TAXI_POSTGRES_URL") if environ.get("TAXI_POSTGRES_URL") else "",
            embedded_dir=os.path.join(data_dir, "postgres"),
            db_schema=environ.get("TAXI_POSTGRES_SCHEMA", "taxi"),
        ),
    }
