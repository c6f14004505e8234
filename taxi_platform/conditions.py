"""Automation conditions: the sinks (postgres/, warehouse/) and the marts follow their upstream month.

`SINKS_FOLLOW_UPSTREAM` is `AutomationCondition.eager()` for every partition, not only the latest: a
month published (or republished) late is as much an update as the newest one; and never while a
blocking check of an upstream month has failed (a month that fails its checks is not published, so
its upstream materialization is the previous good one). The sensor that evaluates them is
`taxi_platform.sensors.automation`.
"""

import dagster as dg

_EAGER_ANY_MONTH = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
_CHECKS_PASSED = dg.AutomationCondition.all_deps_blocking_checks_passed()

SINKS_FOLLOW_UPSTREAM = (_EAGER_ANY_MONTH & _CHECKS_PASSED).with_label(
    "eager, any month, upstream checks passed"
)


def follows_any_dataset(required: list[list[str]]) -> dg.AutomationCondition:
    """Eager for any month, whichever datasets' months are loaded; but never while `required` (e.g.
    the zones a mart joins) is missing."""
    return (
        _EAGER_ANY_MONTH.without(~dg.AutomationCondition.any_deps_missing())
        & _CHECKS_PASSED
        & ~dg.AutomationCondition.any_deps_missing().allow(dg.AssetSelection.assets(*required))
    ).with_label("eager, any month, whichever datasets are loaded")
