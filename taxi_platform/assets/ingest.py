"""raw/<dataset>_trips, clean/<dataset>_trips and clean/<dataset>_trips_rejected, in one step a month.

Write, audit, publish: the step downloads the month's source file (or takes the landed one), parses it
once and stages its raw, clean and rejected rows together in the lake (files no commit references
yet); the blocking checks then judge the staged files; only a month whose checks all pass is published
(the lake IO manager commits each table). A month that fails leaves the published month as it was,
removes what it staged, reports its failed checks with their figures, and fails the step naming
dataset, month and check.
"""

import tempfile
from contextlib import contextmanager
from datetime import datetime

import dagster as dg
from pydantic import Field

from taxi_platform.assets import SOURCE_RETRY, permanent_errors_not_retried
from taxi_platform.checks.blocking import (
    CHECK_OUTCOMES,
    CHECKS,
    RELAXED_RULES,
    check_results,
    check_specs,
    month_findings,
    volume_findings,
)
from taxi_platform.cleaning import MonthCleaner, reject_reasons, rejected_schema
from taxi_platform.datasets import PICKUP_DATE, DatasetSpec
from taxi_platform.executors import queue_tags
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.arrow_data import prefetched
from taxi_platform.lake.resource import VERSIONED_FILES, Lake
from taxi_platform.lake.staging import Staged
from taxi_platform.metadata import CLEAN_DESCRIPTIONS, clean_column_lineage, column_schema
from taxi_platform.sources.landing import LANDED_FILE_TAG, inside_landing
from taxi_platform.sources.public import TaxiSource
from taxi_platform.sources.reading import read_trips


class IngestConfig(dg.Config):
    relax_positive: list[str] = Field(
        default=[],
        description="Switch off the 'must be > 0' rule for these columns, e.g. ['passenger_count'].",
    )
    allow_shrink: bool = Field(
        default=False,
        description="Publish the months even with fewer clean rows than the dataset's "
        "min_share_of_published of the months they replace (a correction known to be smaller).",
    )


def build_ingest_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    raw_key, clean_key, rejected_key = spec.raw_key, spec.clean_key, spec.rejected_key
    rules = ", ".join(reject_reasons(spec))

    def out(key: dg.AssetKey, group: str, description: str, **extra) -> dg.AssetOut:
        return dg.AssetOut(
            key=key,
            description=description,
            group_name=group,
            io_manager_key="lake_io_manager",
            kinds={"parquet"},
            owners=["team:data-platform"],
            tags={"dataset": spec.name},
            code_version="1",
            is_required=False,  # a month that fails its checks is not output, so not published
            **extra,
        )

    @dg.multi_asset(
        name=f"ingest_{spec.table}",
        outs={
            "raw": out(
                raw_key,
                "raw",
                f"{spec.description} The month's source file as published (or as dropped into the "
                "lake's landing/ folder): original columns, every row, typed as the file's form "
                "(CSV.gz release or TLC parquet) declares. Lake: a file a month and version.",
                metadata={VERSIONED_FILES: True},
            ),
            "clean": out(
                clean_key,
                "clean",
                f"{spec.description} Typed, snake_case, with pickup_date and trip_key; only rows that "
                f"pass every rule ({rules}). Lake: hive-partitioned by pickup_date.",
                metadata={PARTITION_COLUMN: PICKUP_DATE},
            ),
            "rejected": out(
                rejected_key,
                "clean",
                f"Every {spec.name} row the cleaning rejected, with its reject_reason (the first rule "
                f"it broke, of {rules}).",
            ),
        },
        check_specs=check_specs(spec),
        # The lineage shows clean and rejected made from raw, as they are (in the same pass).
        internal_asset_deps={"clean": {raw_key}, "rejected": {raw_key}},
        partitions_def=spec.partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(spec.months_per_run),
        retry_policy=SOURCE_RETRY,
        pool="downloads",
        op_tags=queue_tags("ingest"),
    )
    def ingest(
        context: dg.AssetExecutionContext,
        config: IngestConfig,
        taxi_source: TaxiSource,
        lake: Lake,
    ):
        relaxed = frozenset(config.relax_positive)
        landed = context.run.tags.get(LANDED_FILE_TAG)
        # Staged in the lake, where it stays until the IO manager publishes it or this step discards it.
        staged = {
            "raw": lake.stage(raw_key, spec.partitions_def, versioned_files=True),
            "clean": lake.stage(clean_key, spec.partitions_def, PICKUP_DATE),
            "rejected": lake.stage(rejected_key, spec.partitions_def),
        }
        with (
            permanent_errors_not_retried(),
            tempfile.TemporaryDirectory(prefix="taxi-") as folder,
            _discarded_on_failure(staged),
        ):
            failures: dict[str, dict[str, str]] = {name: {} for name in CHECKS}
            if landed:  # a run tag: taken only from inside the landing folder
                landed = inside_landing(landed, lake.root)
            for month in context.partition_keys:
                file = taxi_source.locate(spec, month, landed)
                download = taxi_source.fetch(file, folder)
                rows = read_trips(download.path, spec, file.form, f"{file.label} ({file.url})")
                window = spec.partitions_def.time_window_for_partition_key(month)
                cleaner = _stage_month(spec, month, rows, staged, window, relaxed)
                download.path.unlink()
                source = {
                    "run_id": context.run.run_id,
                    "source_sha256": download.metadata.get("source_sha256"),
                    RELAXED_RULES: ",".join(sorted(relaxed)),  # a rollback judges the version by them
                }
                for each in staged.values():
                    each.details[month] = source
                context.add_asset_metadata(
                    {
                        **download.metadata,
                        "source_kind": file.kind,
                        "dagster/column_schema": column_schema(rows.schema),
                        "dagster/row_count": cleaner.raw_rows,
                    },
                    asset_key=raw_key,
                    partition_key=month,
                )
                _add_clean_metadata(context, spec, month, cleaner, clean_key, rejected_key)
                published = lake.published_rows(clean_key, month, spec.partitions_def, PICKUP_DATE)
                min_share = 0.0 if config.allow_shrink else spec.min_share_of_published
                findings = month_findings(
                    spec,
                    staged["clean"].dataset(month),
                    staged["raw"].dataset(month).count_rows(),
                    staged["rejected"].dataset(month).count_rows(),
                    window,
                    relaxed,
                ) | volume_findings(cleaner.clean_rows, published, min_share)
                for name, finding in findings.items():
                    failures[name][month] = finding
            results = check_results(spec, context.partition_keys, failures)
            failed = {name: by_month for name, by_month in failures.items() if by_month}
            if failed:  # reported, never published: what was staged is discarded
                yield from results
                raise dg.Failure(
                    description=f"{spec.name} not published, the published months are unchanged: "
                    + "; ".join(
                        f"{spec.name} {month} failed {name}: {finding}"
                        for name, by_month in failed.items()
                        for month, finding in by_month.items()
                    ),
                    metadata={"dataset": spec.name, "failed_checks": ", ".join(failed)},
                    allow_retries=False,
                )
            for name, data in staged.items():  # the lake IO manager publishes them
                yield dg.Output(data, name)
            yield from results  # after the outputs: the results belong to the new materialization

    return ingest


@contextmanager
def _discarded_on_failure(staged: dict[str, Staged]):
    """Remove what was staged when the month cannot be published (an error, a failed check)."""
    try:
        yield
    except BaseException:
        for each in staged.values():
            each.discard()
        raise


def _stage_month(
    spec: DatasetSpec,
    month: str,
    rows,
    staged: dict[str, Staged],
    window: dg.TimeWindow,
    relaxed: frozenset[str],
) -> MonthCleaner:
    """Parse, clean and stage the month in one pass: each batch is staged raw, then split into its
    clean and rejected rows, staged in turn; the next batch is parsed meanwhile."""
    start: datetime = window.start.replace(tzinfo=None)
    cleaner = MonthCleaner(spec, start, window.end.replace(tzinfo=None), relaxed)
    raw = staged["raw"].writer(month, rows.schema)
    clean = staged["clean"].writer(month, spec.clean_schema)
    rejected = staged["rejected"].writer(month, rejected_schema(spec))
    for batch in prefetched(rows):
        raw.add(batch)
        kept, refused = cleaner.split(batch)
        clean.add(kept)
        rejected.add(refused)
    for writer in (raw, clean, rejected):
        writer.close()
    return cleaner


def _add_clean_metadata(context, spec, month, cleaner: MonthCleaner, clean_key, rejected_key) -> None:
    for key, schema in ((clean_key, spec.clean_schema), (rejected_key, rejected_schema(spec))):
        context.add_asset_metadata(
            {
                "dagster/column_schema": column_schema(schema, CLEAN_DESCRIPTIONS),
                "dagster/column_lineage": clean_column_lineage(spec),
            },
            asset_key=key,
            partition_key=month,
        )
    context.add_asset_metadata(
        {
            "dagster/row_count": cleaner.clean_rows,
            "raw_rows": cleaner.raw_rows,
            "rejected_rows": cleaner.rejected_rows,
            **{f"rejected_{r}": n for r, n in cleaner.rejected_counts.items()},
            RELAXED_RULES: ",".join(sorted(cleaner.relaxed)),
            CHECK_OUTCOMES: ", ".join(f"{name}=passed" for name in CHECKS),  # published only if so
        },
        asset_key=clean_key,
        partition_key=month,
    )
    context.add_asset_metadata(
        {"dagster/row_count": cleaner.rejected_rows}, asset_key=rejected_key, partition_key=month
    )
