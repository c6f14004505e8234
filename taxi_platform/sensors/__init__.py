"""Every sensor of the code location, one a module (what each does: README.md, Automation and Operating
> Alerts). Their intervals and the source sensors' HEADs per tick come from `profiles.SensorSettings`.
"""

from collections.abc import Mapping

import dagster as dg

from taxi_platform.datasets import DATASETS
from taxi_platform.profiles import SensorSettings
from taxi_platform.sensors.automation import build_automation_sensor
from taxi_platform.sensors.check_failure_alerts import build_check_failure_sensor
from taxi_platform.sensors.freshness_alerts import build_freshness_sensor
from taxi_platform.sensors.landed_file_mover import build_landed_file_mover
from taxi_platform.sensors.landing_zone import build_landing_sensor
from taxi_platform.sensors.new_months import build_source_sensor
from taxi_platform.sensors.run_failure_alerts import build_run_failure_sensor
from taxi_platform.sensors.tick_failure_alerts import build_tick_failure_sensor


def build_sensors(jobs: Mapping, settings: SensorSettings) -> list[dg.SensorDefinition]:
    """`jobs`: each dataset's ingest job, by dataset name."""
    return [
        *(
            build_source_sensor(
                spec, jobs[name], settings.source_interval_seconds, settings.source_checks_per_tick
            )
            for name, spec in DATASETS.items()
        ),
        build_landing_sensor(jobs, settings.landing_interval_seconds, settings.landing_stable_seconds),
        build_landed_file_mover(jobs, settings.landing_interval_seconds),
        build_automation_sensor(settings.automation_interval_seconds),
        build_run_failure_sensor(settings.alert_interval_seconds),
        build_check_failure_sensor(settings.alert_interval_seconds),
        build_tick_failure_sensor(settings.alert_interval_seconds),
        build_freshness_sensor(settings.alert_interval_seconds),
    ]
