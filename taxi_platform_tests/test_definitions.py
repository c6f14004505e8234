"""The definitions, as the UI and the daemon see them, against a committed snapshot
(snapshots/definitions.json): asset keys, their dependencies, partitions, groups, kinds, pools, IO
managers, backfill policies and automation conditions; the checks; the sensors, schedules and jobs; the
resources and the executor. An unintended change to the graph fails here with a diff.

After an intended change, rewrite the snapshot and review it in `git diff`:

    TAXI_UPDATE_SNAPSHOT=1 python -m pytest taxi_platform_tests/test_definitions.py
"""

import difflib
import json
import os
import warnings
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.definitions import defs

pytestmark = [pytest.mark.fast]

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE = "TAXI_UPDATE_SNAPSHOT"


def partitions(partitions_def: dg.PartitionsDefinition | None) -> dict | None:
    """What defines the partitions, never their current last key (that moves with today's date)."""
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return {
            "type": type(partitions_def).__name__,
            "start": partitions_def.start.isoformat(),
            "end": partitions_def.end.isoformat() if partitions_def.end else None,
            "fmt": partitions_def.fmt,
            "timezone": partitions_def.timezone,
            "cron_schedule": partitions_def.cron_schedule,
            "end_offset": partitions_def.end_offset,
        }
    return {"type": type(partitions_def).__name__, "repr": repr(partitions_def)}


def condition(automation_condition: dg.AutomationCondition | None) -> list[str] | None:
    """The condition as an indented tree, one node a line: its class, then its label in quotes."""
    if automation_condition is None:
        return None
    lines = []

    def visit(node: dg.AutomationCondition, depth: int) -> None:
        label = node.get_label()
        lines.append("  " * depth + type(node).__name__ + (f" '{label}'" if label else ""))
        for child in node.children:
            visit(child, depth + 1)

    visit(automation_condition, 0)
    return lines


def describe(definitions: dg.Definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    repository = definitions.get_repository_def()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partition_mappings": {
                parent.to_user_string(): repr(mapping)
                for parent, mapping in sorted(node.partition_mappings.items())
            },
            "partitions": partitions(node.partitions_def),
            "backfill_policy": repr(node.backfill_policy) if node.backfill_policy else None,
            "pools": sorted(node.pools),
            "io_manager_key": node.io_manager_key,
            "owners": sorted(node.owners),
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")},
            "automation_condition": condition(node.automation_condition),
        }
    checks = {}
    for key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key, k.name)):
        check = graph.get(key)
        checks[f"{key.asset_key.to_user_string()}:{key.name}"] = {
            "blocking": check.blocking,
            "partitions": partitions(check.partitions_def),
            "automation_condition": condition(check.automation_condition),
        }
    sensors = {
        sensor.name: {
            "type": sensor.sensor_type.value,
            "default_status": sensor.default_status.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "jobs": sorted(target.job_name for target in sensor.targets),
            "asset_selection": sorted(k.to_user_string() for k in sensor.asset_selection.resolve(graph))
            if sensor.asset_selection is not None
            else None,
            "required_resources": sorted(sensor.required_resource_keys),
        }
        for sensor in sorted(repository.sensor_defs, key=lambda s: s.name)
    }
    schedules = {
        schedule.name: {
            "cron_schedule": schedule.cron_schedule,
            "execution_timezone": schedule.execution_timezone,
            "default_status": schedule.default_status.value,
            "job": schedule.job_name,
        }
        for schedule in sorted(repository.schedule_defs, key=lambda s: s.name)
    }
    jobs = {}
    for job in sorted(repository.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):  # Dagster's implicit job of all assets
            continue
        layer = job.asset_layer
        jobs[job.name] = {
            "assets": sorted(k.to_user_string() for k in layer.selected_asset_keys),
            "checks": sorted(
                f"{k.asset_key.to_user_string()}:{k.name}" for k in layer.asset_graph.asset_check_keys
            ),
            "partitions": partitions(job.partitions_def),
            "tags": dict(sorted(job.tags.items())),
            "executor": job.executor_def.name,
        }
    return {
        "assets": assets,
        "checks": checks,
        "sensors": sensors,
        "schedules": schedules,
        "jobs": jobs,
        "resources": {
            key: type(resource).__name__ for key, resource in sorted(definitions.resources.items())
        },
        "executor": definitions.executor.name if definitions.executor else None,
    }


def render(snapshot: dict) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def flatten(value, path: str = "") -> list[str]:
    """One line a leaf, each naming where it is (`sensors.green_source_sensor.default_status: ...`),
    so that a diff line says what changed without its context."""
    if isinstance(value, dict) and value:
        return [line for key in sorted(value) for line in flatten(value[key], f"{path}.{key}".lstrip("."))]
    if isinstance(value, list) and value:
        return [line for item in value for line in flatten(item, f"{path}[]")]
    return [f"{path}: {json.dumps(value)}\n"]


@pytest.fixture
def default_environment(monkeypatch, tmp_path):
    """The definitions as a deployment with no TAXI_* setting gets them (the local profile)."""
    for name in list(os.environ):
        if name.startswith("TAXI_") and name != UPDATE:
            monkeypatch.delenv(name)
    monkeypatch.setenv("TAXI_DATA_DIR", str(tmp_path))


def test_the_definitions_match_the_committed_snapshot(default_environment):
    actual = render(describe(defs()))
    if os.environ.get(UPDATE) == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(actual)
        pytest.skip(f"{UPDATE}=1: rewrote {SNAPSHOT}; review it with `git diff`")
    expected = SNAPSHOT.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                flatten(json.loads(expected)),
                flatten(json.loads(actual)),
                "committed snapshot",
                "the definitions now",
                n=0,
            )
        )
        pytest.fail(
            f"The definitions differ from {SNAPSHOT.name}. If the change is intended, run\n"
            f"    {UPDATE}=1 python -m pytest taxi_platform_tests/{Path(__file__).name}\n"
            f"and commit the snapshot.\n\n{diff}",
            pytrace=False,
        )


def test_the_snapshot_holds_no_date_that_moves():
    """No partition end, no last partition key: the snapshot is the same whatever today is."""
    snapshot = json.loads(SNAPSHOT.read_text())
    partitioned = [
        entry["partitions"]
        for section in ("assets", "checks", "jobs")
        for entry in snapshot[section].values()
        if entry["partitions"]
    ]
    assert partitioned and all(p.get("end") is None for p in partitioned)


def warn_from(module: str) -> None:
    """A DeprecationWarning raised by code whose module is `module`, as if written there."""
    code = compile("import warnings\nwarnings.warn('gone in 2.0', DeprecationWarning)", module, "exec")
    exec(code, {"__name__": module})


def test_a_warning_raised_by_the_platform_code_is_an_error():
    """pyproject.toml's filterwarnings: our own code raises no warning; a library's is only recorded."""
    with pytest.raises(DeprecationWarning, match="gone in 2.0"):
        warn_from("taxi_platform.jobs")
    with warnings.catch_warnings(record=True) as seen:
        warn_from("dagster._core.somewhere")
        warn_from("taxi_platform_tests.helpers")
    assert [str(w.message) for w in seen] == ["gone in 2.0", "gone in 2.0"]
