"""The taxi_platform code location: every dataset's assets, checks, jobs, sensors and schedules, from the
specs."""

import dagster as dg

from taxi_platform.assets.ingest import build_ingest_asset
from taxi_platform.assets.models import build_model_assets
from taxi_platform.assets.postgres_tables import build_postgres_asset, postgres_taxi_zones
from taxi_platform.assets.warehouse_tables import build_warehouse_asset, warehouse_taxi_zones
from taxi_platform.assets.zones import taxi_zones
from taxi_platform.checks.anomalies import build_anomaly_checks
from taxi_platform.checks.freshness import build_freshness_check
from taxi_platform.datasets import DATASETS
from taxi_platform.jobs import build_ingest_job
from taxi_platform.lake_conversion import convert_lake
from taxi_platform.profiles import load_profile
from taxi_platform.rollback import rollback_month
from taxi_platform.schedules import build_monthly_schedule
from taxi_platform.sensors import build_sensors
from taxi_platform.vacuum import vacuum_daily, vacuum_lake


def build_assets() -> list[dg.AssetsDefinition]:
    assets = [taxi_zones, postgres_taxi_zones, warehouse_taxi_zones, *build_model_assets()]
    for spec in DATASETS.values():
        assets += [
            build_ingest_asset(spec),
            build_postgres_asset(spec),
            build_warehouse_asset(spec),
        ]
    return assets


@dg.definitions
def defs() -> dg.Definitions:
    profile = load_profile()
    jobs = {name: build_ingest_job(spec) for name, spec in DATASETS.items()}
    return dg.Definitions(
        assets=build_assets(),
        asset_checks=[
            check
            for spec in DATASETS.values()
            for check in (build_freshness_check(spec), build_anomaly_checks(spec))
        ],
        jobs=[*jobs.values(), rollback_month, vacuum_lake, convert_lake],
        schedules=[
            *(build_monthly_schedule(spec, jobs[name]) for name, spec in DATASETS.items()),
            vacuum_daily,
        ],
        sensors=build_sensors(jobs, profile.sensors),
        resources=profile.resources,
        # In process by default: a month's steps form a chain, and a process per step costs more
        # (imports, seconds each) than most steps. TAXI_EXECUTOR=celery spreads them over workers.
        executor=profile.executor,
    )
