"""The dbt models (`taxi_platform/transform/`) as assets: `staging/…`, `core/…` and `marts/…`, fed by
the `warehouse/…` tables; the dbt tests as their asset checks.

- The models tagged `monthly` share `MONTHS`: a run builds its months (the partition time window,
  passed as dbt vars) in one `dbt build`; a backfill runs up to 12 months a run. The dimensions and
  the seed are built whole, by an asset of their own.
- A test of error severity is a blocking check: dbt skips what is downstream of the model it fails,
  the run fails, and the automation waits. Each check result names the months it judged.
- Run config `{"ops": {"monthly_models": {"config": {"full_refresh": true}}}}` (or `dimensions`)
  rebuilds the selected models from every warehouse month.
- DuckDB has one writing process at a time: dbt runs in the `warehouse_loads` pool with the
  warehouse loads.
"""

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliInvocation, dbt_assets
from pydantic import Field

from taxi_platform.charts import trips_per_day
from taxi_platform.conditions import SINKS_FOLLOW_UPSTREAM, follows_any_dataset
from taxi_platform.datasets import DATASETS, NEW_YORK
from taxi_platform.dbt_runner import TRANSFORM, DbtWarehouseCli
from taxi_platform.executors import queue_tags
from taxi_platform.io_managers.warehouse import WarehouseSQL

MONTHS = dg.MonthlyPartitionsDefinition(
    start_date=min(spec.first_month for spec in DATASETS.values()), fmt="%Y-%m", timezone=NEW_YORK
)
# A month before a dataset's first month simply has none of its trips.
SAME_MONTH = dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True)
MONTHLY_TAG = "monthly"  # dbt_project.yml tags the models built month by month
MONTHLY = f"tag:{MONTHLY_TAG}"
DIMENSIONS = [["core", "dim_zones"], ["core", "dim_payment_types"]]
CHARTED = dg.AssetKey(["marts", "monthly_summary"])


class ModelsConfig(dg.Config):
    full_refresh: bool = Field(
        default=False,
        description="Rebuild the selected models from every warehouse month (after their SQL changed).",
    )


class TransformTranslator(DagsterDbtTranslator):
    """Keys carry the layer (the models' folder; seeds are `core`); sources are the warehouse tables."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        kind, name = dbt_resource_props["resource_type"], dbt_resource_props["name"]
        if kind == "source":
            return dg.AssetKey(["warehouse", name])
        return dg.AssetKey([dbt_resource_props["fqn"][1] if kind == "model" else "core", name])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str:
        return self.get_asset_key(dbt_resource_props).path[0]

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> list[str]:
        return ["team:analytics"]

    def get_partition_mapping(
        self, dbt_resource_props: Mapping[str, Any], dbt_parent_resource_props: Mapping[str, Any]
    ) -> dg.PartitionMapping | None:
        if dbt_parent_resource_props["resource_type"] == "source" and _monthly(dbt_resource_props):
            return SAME_MONTH
        return None

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition:
        """A model of several datasets' staging views builds whichever are loaded; any other follows
        its upstream month (or the zones)."""
        upstream = dbt_resource_props.get("depends_on", {}).get("nodes", [])
        staged = [node for node in upstream if node.split(".")[-1].startswith("stg_")]
        if len(staged) > 1:
            return follows_any_dataset(required=DIMENSIONS)
        return SINKS_FOLLOW_UPSTREAM

    def get_asset_spec(self, manifest, unique_id, project) -> dg.AssetSpec:
        """dbt on DuckDB or BigQuery, whichever the profile chose (the manifest is parsed with DuckDB)."""
        spec = super().get_asset_spec(manifest, unique_id, project)
        return spec.replace_attributes(kinds={"dbt", "duckdb", "bigquery"})


TRANSLATOR = TransformTranslator()


def _monthly(dbt_resource_props: Mapping[str, Any]) -> bool:
    return MONTHLY_TAG in dbt_resource_props.get("tags", [])


@cache
def _manifest() -> Mapping[str, Any]:
    """The prepared manifest, read once per process."""
    TRANSFORM.prepare_if_dev()
    if not TRANSFORM.manifest_path.exists():
        raise FileNotFoundError(
            f"{TRANSFORM.manifest_path} is missing: prepare the dbt project first with"
            " `dagster-dbt project prepare-and-package --file taxi_platform/dbt_runner.py`"
        )
    return json.loads(TRANSFORM.manifest_path.read_text())


def _month_vars(window: dg.TimeWindow) -> dict[str, str]:
    """The dbt vars of the monthly models: the months' first day and the day after the last."""
    return {"month_start": window.start.date().isoformat(), "month_end": window.end.date().isoformat()}


def build_model_assets() -> list[dg.AssetsDefinition]:
    """The monthly models, and the dimensions with the seed."""
    manifest = _manifest()
    model_meta = {
        TRANSLATOR.get_asset_key(node): node["config"]["meta"]
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model" and node["config"]["meta"].get("month_column")
    }

    @dbt_assets(
        manifest=manifest,
        project=TRANSFORM,
        dagster_dbt_translator=TRANSLATOR,
        pool="warehouse_loads",
        op_tags=queue_tags("warehouse"),
        select=MONTHLY,
        name="monthly_models",
        partitions_def=MONTHS,
        backfill_policy=dg.BackfillPolicy.multi_run(12),
    )
    def monthly_models(
        context: dg.AssetExecutionContext,
        dbt: DbtWarehouseCli,
        warehouse_sql: WarehouseSQL,
        config: ModelsConfig,
    ) -> Iterator:
        months = _month_vars(context.partition_time_window)
        args = ["build", "--full-refresh"] if config.full_refresh else ["build", "--vars", json.dumps(months)]
        judged = "every month" if config.full_refresh else ", ".join(context.partition_keys)
        invocation = dbt.cli(args, context=context)
        held = []
        for event in _judging(invocation, judged):
            if isinstance(event, dg.Output):  # after its per-month metadata, read once dbt let go
                held.append(event)
            else:
                yield event
        for output in held:
            key = context.asset_key_for_output(output.output_name)
            if key in model_meta:
                _describe_months(context, warehouse_sql, key, model_meta[key], months)
            yield output
        _raise_if_failed(invocation)

    @dbt_assets(
        manifest=manifest,
        project=TRANSFORM,
        dagster_dbt_translator=TRANSLATOR,
        pool="warehouse_loads",
        op_tags=queue_tags("warehouse"),
        exclude=MONTHLY,
        name="dimensions",
    )
    def dimensions(context: dg.AssetExecutionContext, dbt: DbtWarehouseCli, config: ModelsConfig) -> Iterator:
        invocation = dbt.cli(["build", *(["--full-refresh"] if config.full_refresh else [])], context=context)
        yield from _judging(invocation, "the whole table")
        _raise_if_failed(invocation)

    return [monthly_models, dimensions]


def rebuild_month(
    context: dg.OpExecutionContext,
    dbt: DbtWarehouseCli,
    warehouse_sql: WarehouseSQL,
    dataset: str,
    month: str,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """From an op (`rollback_month`): the monthly models downstream of the dataset's warehouse table
    built for `month` as their assets build it, each model's materialization and each test's
    evaluation of the month; a failed model or test fails the op, as it fails the assets' step.
    Nothing when the models were never built (no staging view of the dataset in the warehouse)."""
    table = f"{dataset}_trips"
    if f"stg_{table}" not in warehouse_sql.tables():
        context.log.info(f"the models of {dataset} were never built: none rebuilt")
        return
    months = _month_vars(MONTHS.time_window_for_partition_key(month))
    selection = f"source:warehouse.{table}+,{MONTHLY}"
    invocation = dbt.cli(
        ["build", "--select", selection, "--vars", json.dumps(months)],
        context=context,
        manifest=_manifest(),
        translator=TRANSLATOR,
    )
    for event in invocation.stream():
        if isinstance(event, dg.AssetMaterialization):
            yield dg.AssetMaterialization(event.asset_key, metadata=event.metadata, partition=month)
        elif isinstance(event, dg.AssetCheckEvaluation):
            yield dg.AssetCheckEvaluation(
                asset_key=event.asset_key,
                check_name=event.check_name,
                passed=event.passed,
                metadata={**event.metadata, "judged": month},
                severity=event.severity,
                description=event.description,
                blocking=event.blocking,
                partition=month,
            )
    _raise_if_failed(invocation)


def _judging(invocation: DbtCliInvocation, judged: str) -> Iterator:
    """dbt's events, each check result with the months it judged."""
    for event in invocation.stream():
        if isinstance(event, dg.AssetCheckResult):
            event = event.with_metadata({**event.metadata, "judged": judged})
        yield event


def _raise_if_failed(invocation: DbtCliInvocation) -> None:
    """Fail the step when dbt failed (a model's error, or a test of error severity)."""
    error = invocation.get_error()
    if error is not None:
        raise error


def _describe_months(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseSQL,
    key: dg.AssetKey,
    meta: Mapping[str, Any],
    months: Mapping[str, str],
) -> None:
    """Each month's `dagster/row_count` (and the sums of the integer columns that the model's meta
    `dagster_sums` lists) of the model's table; for
    marts/monthly_summary, the month's chart of trips per day."""
    column, sums = meta["month_column"], list(meta.get("dagster_sums", []))
    charted = key == CHARTED
    selected = [column, "dataset", "trips"] if charted else [column]
    table = warehouse.execute(
        f"SELECT {', '.join(selected)}, COUNT(*) AS row_count"
        + "".join(f", SUM({name}) AS {name}_sum" for name in sums)
        + f" FROM {warehouse.ref(key.path[-1])}"
        + f" WHERE {column} >= DATE '{months['month_start']}' AND {column} < DATE '{months['month_end']}'"
        + f" GROUP BY {', '.join(selected)}"
    ).to_pylist()
    by_month: dict[str, list[dict]] = defaultdict(list)
    for row in table:
        by_month[row[column].strftime("%Y-%m")].append(row)
    for month in context.partition_keys:
        rows = by_month.get(month, [])
        metadata: dict[str, Any] = {"dagster/row_count": sum(r["row_count"] for r in rows)}
        metadata |= {name: int(sum(r[f"{name}_sum"] for r in rows)) for name in sums}
        if charted:
            png = trips_per_day([{**r, "pickup_date": r[column]} for r in rows], month)
            metadata["chart"] = dg.MetadataValue.md(f"![trips per day](data:image/png;base64,{png})")
        context.add_asset_metadata(metadata, asset_key=key, partition_key=month)
