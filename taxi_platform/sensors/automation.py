"""`taxi_automation` (on by default): evaluates the automation conditions of `taxi_platform.conditions`."""

import dagster as dg


def build_automation_sensor(minimum_interval_seconds: int) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "taxi_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Materializes postgres/ and warehouse/ months when their clean month changes.",
    )
