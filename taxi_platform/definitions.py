"""The taxi_platform code location: every dataset's assets, built from the specs."""

import dagster as dg

from taxi_platform.assets.clean import build_clean_assets
from taxi_platform.assets.postgres import build_postgres_asset, postgres_taxi_zones
from taxi_platform.assets.raw import build_raw_asset
from taxi_platform.assets.reference import taxi_zones
from taxi_platform.assets.warehouse import build_warehouse_asset, warehouse_taxi_zones
from taxi_platform.checks import build_clean_checks
from taxi_platform.datasets import DATASETS
from taxi_platform.profiles import resources_for


def build_assets() -> list[dg.AssetsDefinition]:
    assets = [taxi_zones, postgres_taxi_zones, warehouse_taxi_zones]
    for spec in DATASETS.values():
        assets += [
            build_raw_asset(spec),
            build_clean_assets(spec),
            build_postgres_asset(spec),
            build_warehouse_asset(spec),
        ]
    return assets


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=build_assets(),
        asset_checks=[build_clean_checks(spec) for spec in DATASETS.values()],
        resources=resources_for(),
    )
