"""The sensors that keep the platform current, built per dataset from the specs.

- `<dataset>_source_sensor` (off by default: turning it on ingests every published month not yet
  materialized): HEADs the public source, requests the ingest run of a month newly published or
  republished.
- `landing_sensor` and `landed_file_mover` (on): files dropped into the lake's `landing/`.
- `taxi_automation` (on): postgres/ and warehouse/ months follow their clean month.

Read when the definitions load: TAXI_SENSOR_INTERVAL_SECONDS (the minimum interval of every sensor, to
override the defaults below, e.g. 1 in tests), TAXI_SOURCE_CHECKS_PER_TICK (HEAD requests per source
sensor tick, default 24).
"""

import os
from collections.abc import Mapping

import dagster as dg

from taxi_platform.sensors.automation import build_automation_sensor
from taxi_platform.datasets import DATASETS
from taxi_platform.sensors.landing_zone import build_landed_file_mover, build_landing_sensor
from taxi_platform.sensors.new_months import build_source_sensor

SOURCE_INTERVAL_SECONDS = 600  # the TLC publishes monthly; a tick costs at most 24 HEAD requests
LANDING_INTERVAL_SECONDS = 30
AUTOMATION_INTERVAL_SECONDS = 30


def build_sensors(
    jobs: Mapping, environ: Mapping[str, str] = os.environ
) -> list[dg.SensorDefinition]:
    """`jobs`: each dataset's ingest job, by dataset name."""
    override = environ.get("TAXI_SENSOR_INTERVAL_SECONDS")

    def every(default: int) -> int:
        return int(override) if override else default

    checks = int(environ.get("TAXI_SOURCE_CHECKS_PER_TICK", "24"))
    return [
        *(
            build_source_sensor(spec, jobs[name], every(SOURCE_INTERVAL_SECONDS), checks)
            for name, spec in DATASETS.items()
        ),
        build_landing_sensor(jobs, every(LANDING_INTERVAL_SECONDS)),
        build_landed_file_mover(jobs, every(LANDING_INTERVAL_SECONDS)),
        build_automation_sensor(every(AUTOMATION_INTERVAL_SECONDS)),
    ]
