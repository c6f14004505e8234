"""Automation conditions: the sinks (postgres/, warehouse/) and the marts follow their upstream month.

`SINKS_FOLLOW_UPSTREAM` is `AutomationCondition.eager()` for every partition, not only the latest: a
month published (or republished) late is as much an update as the newest one. The sensor that
evaluates them is `taxi_platform.sensors.automation`.
"""

import dagster as dg

SINKS_FOLLOW_UPSTREAM = (
    dg.AutomationCondition.eager()
    .without(dg.AutomationCondition.in_latest_time_window())
    .with_label("eager, any month")
)


def follows_any_dataset(required: list[list[str]]) -> dg.AutomationCondition:
    """Eager for any month, whichever datasets' months are loaded; but never while `required` (e.g.
    the zones a mart joins) is missing."""
    return (
        SINKS_FOLLOW_UPSTREAM.without(~dg.AutomationCondition.any_deps_missing())
        & ~dg.AutomationCondition.any_deps_missing().allow(dg.AssetSelection.assets(*required))
    ).with_label("eager, any month, whichever datasets are loaded")
