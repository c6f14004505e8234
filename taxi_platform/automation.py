"""Declarative automation: the sinks (postgres/, warehouse/, later the marts) follow their upstream month.

`SINKS_FOLLOW_UPSTREAM` is `AutomationCondition.eager()` for every partition, not only the latest: a
month published (or republished) late is as much an update as the newest one. The automation sensor
that evaluates it is on by default.
"""

import dagster as dg

SINKS_FOLLOW_UPSTREAM = (
    dg.AutomationCondition.eager()
    .without(dg.AutomationCondition.in_latest_time_window())
    .with_label("eager, any month")
)


def build_automation_sensor(minimum_interval_seconds: int) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "taxi_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Materializes postgres/ and warehouse/ months when their clean month changes.",
    )



def follows_any_dataset(required: list[list[str]]) -> dg.AutomationCondition:
    """Eager for any month, whichever datasets' months are loaded; but never while `required` (e.g.
    the zones a mart joins) is missing."""
    return (
        SINKS_FOLLOW_UPSTREAM.without(~dg.AutomationCondition.any_deps_missing())
        & ~dg.AutomationCondition.any_deps_missing().allow(dg.AssetSelection.assets(*required))
    ).with_label("eager, any month, whichever datasets are loaded")
