"""`rollback_month`: one dataset's month put back to an earlier version, in the lake and every sink.

The lake publishes again, as a new version of each table (raw's index, clean, rejected), what the
chosen version held of the month (its files taken back, not copied); PostgreSQL and the warehouse
then load that version, each writing its ledger row with `operation` "rollback". By default the
version restored is the one before the current one, so rolling back a rollback restores what it
undid. The version is judged first by the clean month's blocking checks, all but the shrink guard,
with the rules its run relaxed; one that fails is not restored. Last, the dbt models downstream of the
dataset's warehouse table (its staging view, the trip facts, the marts) are built again for the
month, their tests judging it. README, "Operating".
"""

from datetime import UTC, datetime

import dagster as dg
import pyarrow.dataset as ds
from pydantic import Field

from taxi_platform.assets.models import rebuild_month
from taxi_platform.assets.postgres_tables import build_postgres_asset
from taxi_platform.assets.warehouse_tables import build_warehouse_asset
from taxi_platform.checks.blocking import CHECKS, RELAXED_RULES, SHRINK_GUARD, month_findings
from taxi_platform.datasets import DATASETS, PICKUP_DATE, DatasetSpec
from taxi_platform.dbt_runner import DbtWarehouseCli
from taxi_platform.io_managers.warehouse import WarehouseSQL
from taxi_platform.lake.resource import Lake, version_of
from taxi_platform.lake.tables import Version
from taxi_platform.ledger import Audited
from taxi_platform.profiles import code_version


class RollbackConfig(dg.Config):
    dataset: str = Field(description=f"One of {', '.join(DATASETS)}.")
    month: str = Field(description="The month to roll back, YYYY-MM.")
    to_run: str = Field(
        default="",
        description="The run whose version of the month to restore (as `lake_versions` lists them); "
        "empty: the version before the current one.",
    )


@dg.op(
    description="Publish the chosen earlier version of the month again in the lake's raw, clean and "
    "rejected tables, load it into PostgreSQL and the warehouse, and build the month's models on it.",
    pool="warehouse_loads",  # it writes the warehouse and runs dbt, as the warehouse assets do
)
def rollback_month_op(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    lake: Lake,
    postgres_io_manager: dg.ResourceParam[dg.IOManager],
    warehouse_io_manager: dg.ResourceParam[dg.IOManager],
    dbt: DbtWarehouseCli,
    warehouse_sql: WarehouseSQL,
):
    spec = _spec(config.dataset)
    month, run_id = config.month, context.run_id
    target = _target(lake.versions(spec.clean_key, month), config)
    context.log.info(
        f"{spec.name} {month}: restoring the version of run {target.run_id} (lake version {target.version})"
    )
    tables = (
        (spec.raw_key, None, True),
        (spec.clean_key, PICKUP_DATE, False),
        (spec.rejected_key, None, False),
    )
    kept = {key: _kept(lake, key, month, versioned, target) for key, _, versioned in tables}
    results = _judged(lake, spec, month, kept, target)
    failed = [result for result in results if not result.passed]
    if failed:
        yield from results
        raise dg.Failure(
            f"{spec.name} {month}: the version of run {target.run_id} fails "
            + "; ".join(f"{r.check_name} ({r.metadata['finding'].value})" for r in failed)
            + "; nothing was rolled back, the published month is unchanged",
            allow_retries=False,
        )
    for key, column, versioned in tables:
        version = lake.restore(key, month, kept[key], run_id, spec.partitions_def, column, versioned)
        yield dg.AssetMaterialization(
            asset_key=key,
            partition=month,
            metadata={"lake_version": version, "restored_run_id": target.run_id, "operation": "rollback"},
        )
    yield from results  # after the clean materialization: they judge the restored version
    rows = lake.read(spec.clean_key, month, spec.partitions_def, PICKUP_DATE)
    known = {
        **target.details.get(month, {}),
        "rows_clean": rows.count_rows(),
        "lake_version": version_of(rows),
        "operation": "rollback",
        "restored_run_id": target.run_id,
        "code_version": code_version(),
        "started_at": datetime.now(UTC),
    }
    for asset, io_manager in (
        (build_postgres_asset(spec), postgres_io_manager),
        (build_warehouse_asset(spec), warehouse_io_manager),
    ):
        key = asset.key
        with dg.build_output_context(
            asset_key=key,
            partition_key=month,
            asset_partitions_def=spec.partitions_def,
            definition_metadata=asset.specs_by_key[key].metadata,
            run_id=run_id,
        ) as output:
            io_manager.handle_output(output, Audited(rows, known))
        yield dg.AssetMaterialization(
            asset_key=key,
            partition=month,
            metadata={
                "dagster/row_count": known["rows_clean"],
                "lake_version": known["lake_version"],
                "restored_run_id": target.run_id,
                "operation": "rollback",
            },
        )
    yield from rebuild_month(context, dbt, warehouse_sql, spec.name, month)
    yield dg.Output(None)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise dg.Failure(f"no dataset {name!r}: one of {', '.join(DATASETS)}", allow_retries=False)
    return DATASETS[name]


def _kept(lake: Lake, key: dg.AssetKey, month: str, versioned: bool, target: Version) -> int:
    """The version of the table that the target's run published."""
    held = [v.version for v in lake.versions(key, month, versioned) if v.run_id == target.run_id]
    if not held:
        raise dg.Failure(f"{key.to_user_string()} {month}: no version by run {target.run_id} is kept")
    return held[0]


def _judged(
    lake: Lake, spec: DatasetSpec, month: str, kept: dict[dg.AssetKey, int], target: Version
) -> list[dg.AssetCheckEvaluation]:
    """The blocking checks of the version to restore, with the rules its run relaxed; all but the
    shrink guard (a rollback restores a month that was published)."""
    relaxed = set(filter(None, target.details.get(month, {}).get(RELAXED_RULES, "").split(",")))
    clean = lake.read(spec.clean_key, month, spec.partitions_def, PICKUP_DATE, version=kept[spec.clean_key])
    assert isinstance(clean, ds.FileSystemDataset)
    findings = month_findings(
        spec,
        # The files as written, as the ingest step judged them (the table's reader widens strings).
        ds.dataset(clean.files, filesystem=clean.filesystem, format="parquet"),
        lake.read(spec.raw_key, month, versioned_files=True, version=kept[spec.raw_key]).count_rows(),
        lake.read(
            spec.rejected_key, month, spec.partitions_def, version=kept[spec.rejected_key]
        ).count_rows(),
        spec.partitions_def.time_window_for_partition_key(month),
        relaxed,
    )
    return [
        dg.AssetCheckEvaluation(
            asset_key=spec.clean_key,
            check_name=name,
            passed=name not in findings,
            metadata={"months": month, "operation": "rollback"}
            | ({"finding": findings[name]} if name in findings else {}),
            blocking=True,
            partition=month,
        )
        for name in CHECKS
        if name != SHRINK_GUARD
    ]


def _target(versions: list[Version], config: RollbackConfig) -> Version:
    """The version to restore: the run's, or the one before the current one."""
    if config.to_run:
        chosen = [v for v in versions if v.run_id == config.to_run]
        if not chosen:
            runs = ", ".join(v.run_id for v in versions) or "none"
            raise dg.Failure(
                f"{config.dataset} {config.month}: run {config.to_run} published no kept version (kept: {runs})"
            )
        return chosen[0]
    if len(versions) < 2:
        raise dg.Failure(f"{config.dataset} {config.month}: no earlier version is kept to roll back to")
    return versions[1]


@dg.job(
    name="rollback_month",
    description="Put a dataset's month back to an earlier version in the lake, PostgreSQL, the "
    "warehouse and its models; config: dataset, month, and optionally the run whose version to restore.",
    tags={"kind": "rollback"},
)
def rollback_month():
    rollback_month_op()
