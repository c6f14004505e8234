"""Recovery: a backfill run that failed on one month is re-executed from failure once the source heals;
only its failed and skipped steps run again, the months of other runs are left alone."""

import dagster as dg
import psycopg
import pytest

from taxi_platform.definitions import defs
from taxi_platform_tests.helpers import failure_description
from taxi_platform_tests.ui import write_instance

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

SELECTION = ("reference/taxi_zones", "raw/green_trips", "clean/green_trips", "clean/green_trips_rejected")
SELECTION += ("postgres/green_trips",)


def green_backfill_job() -> dg.JobDefinition:
    """The green months and the zones to Postgres, as one backfill run executes them (module level:
    a re-execution rebuilds the job from here)."""
    definitions = defs()
    job = dg.define_asset_job(
        "green_backfill", selection=dg.AssetSelection.assets(*map(dg.AssetKey.from_user_string, SELECTION))
    )
    return dg.Definitions.merge(definitions, dg.Definitions(jobs=[job])).resolve_job_def("green_backfill")


def run_months(instance: dg.DagsterInstance, first: str, last: str, **options):
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    with dg.execute_job(
        dg.reconstructable(green_backfill_job), instance, tags=tags, raise_on_error=False, **options
    ) as result:
        return result


def executed_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {s.step_key for s in instance.get_run_step_stats(run_id) if s.status is not None}


def published_ledger(url: str, schema: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f'SELECT partition_key, run_id FROM "{schema}".load_audit'
            " WHERE asset_key = 'postgres/green_trips' AND outcome = 'published' ORDER BY 1"
        ).fetchall()
    months: dict[str, list[str]] = {}
    for month, run_id in rows:
        months.setdefault(month, []).append(run_id)
    return months


def test_a_failed_backfill_run_reexecuted_from_failure_reruns_only_what_failed(
    taxi_env, source_server, postgres_url, pg_schema, tmp_path
):
    home = tmp_path / "home"
    home.mkdir()
    write_instance(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        first = run_months(instance, "2020-09", "2020-10")
        assert first.success
        source_server.fail("/releases/green/green_tripdata_2020-12.csv.gz", "html")  # then it heals
        failed = run_months(instance, "2020-11", "2020-12")
        url = f"{source_server.url}/releases/green/green_tripdata_2020-12.csv.gz"
        assert not failed.success
        assert failure_description(failed) == f"green 2020-12: {url} returned an HTML page, not the data file"
        assert executed_steps(instance, failed.run_id) >= {"reference__taxi_zones", "ingest_green_trips"}
        assert sorted(published_ledger(postgres_url, pg_schema)) == ["2020-09", "2020-10"]

        again = run_months(
            instance,
            "2020-11",
            "2020-12",
            reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, instance),
        )
        assert again.success
        # Only the failed step and those it held back (the sink, the clean month's WARN checks) ran
        # again; the zones had succeeded.
        assert executed_steps(instance, again.run_id) == {
            "ingest_green_trips",
            "postgres__green_trips",
            "anomalies_green_trips",
            "clean__green_trips_freshness",
        }
        ledger = published_ledger(postgres_url, pg_schema)
        assert ledger == {
            "2020-09": [first.run_id],
            "2020-10": [first.run_id],
            "2020-11": [again.run_id],
            "2020-12": [again.run_id],
        }
