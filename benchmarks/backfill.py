"""Backfill scaling: a 12-month backfill run serially in one process vs two runs at a time.

    python -m benchmarks.backfill [--dataset green] [--rows 100000] [--months 12] [--first 2020-01]
                                  [--modes serial,multiprocess,two_processes]
                                  [--url postgresql://postgres@127.0.0.1:5432/postgres] [--seed S]

Synthetic months (synthetic/months.py, cached, CSV.gz releases) are served by a local HTTP server.
The backfill is the platform's: raw -> clean (+ rejected, + its blocking checks) -> postgres -> warehouse,
in runs of `spec.months_per_run` months (green: 3, the assets' BackfillPolicy.multi_run), each run
executed with `dagster.execute_job` on a Dagster instance of its own DAGSTER_HOME (sqlite storage,
`concurrency: pools: default_limit: 1`, so the pool `postgres_writers_<table>` admits one writer and
`warehouse_loads` one DuckDB writer at a time across processes):

- serial: one process executes the runs one after another with the in_process executor;
- multiprocess: the runs are split over two processes (as a run queue with max 2 concurrent runs would),
  each executing its runs with the multiprocess executor (max_concurrent 2: a process per step, forked
  from a forkserver that has imported the code location once);
- two_processes: the same split, each run with the in_process executor (no process per step).

Each mode writes a throwaway Postgres schema and data folder of its own. Afterwards each mode's Postgres
table must hold exactly the clean rows of every month (no month lost, doubled or mixed), and the DuckDB
warehouse the same. Goal (issue 15): two runs at a time at least 1.7x faster than serial on 2 cores.
`main(argv)` returns the figures as a dict (the smoke test runs 2 months of a few thousand rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from psycopg import sql

from benchmarks.common import default_url, execute, month_job, platform_env, report_result, run_child
from synthetic.months import DEFAULT_SEED, cached_source_months, months_from
from synthetic.source_server import SourceServer
from taxi_platform.datasets import DATASETS

GOAL_SPEEDUP = 1.7  # issue 15
WORKER_TIMEOUT = 1800  # seconds; a run stuck on a leaked pool slot would otherwise wait forever
# mode: (worker processes, executor of each run)
MODES = {
    "serial": (1, "in_process"),
    "multiprocess": (2, "multiprocess"),
    "two_processes": (2, "in_process"),
}
STORAGE_YAML = {
    "sqlite": "  sqlite:\n    base_dir: {home}/storage\n",
    "postgres": "  postgres:\n    postgres_url: {storage_url}\n",  # as docker/dagster.yaml
}
INSTANCE_YAML = """\
storage:
{storage}local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {home}
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


# --------------------------------------------------------------------------------------------------
# A worker process: its share of the runs, one after another (`benchmarks.common.month_job`)


def _worker(argv) -> None:
    """Execute the given runs ([first, last] month ranges) one after another."""
    import dagster as dg

    runs = json.loads(argv[0])
    instance = dg.DagsterInstance.get()
    job = dg.reconstructable(month_job)
    summary = []
    for first, last in runs:
        start = time.perf_counter()
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        with dg.execute_job(job, instance, tags=tags, raise_on_error=True) as result:
            if not result.success:
                raise RuntimeError(f"run {first}..{last} failed")
            waited = sum(1 for e in result.all_events if "concurrency" in (e.message or "").lower())
            summary.append(
                {
                    "months": [first, last],
                    "seconds": time.perf_counter() - start,
                    "concurrency_events": waited,
                }
            )
    report_result({"runs": summary})


# --------------------------------------------------------------------------------------------------
# Main


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backfill", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="green", choices=sorted(DATASETS))
    parser.add_argument("--rows", type=int, default=100_000, help="rows per synthetic month")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--first", default="2020-01", help="first month (YYYY-MM)")
    parser.add_argument(
        "--storage",
        default="sqlite",
        choices=sorted(STORAGE_YAML),
        help="the Dagster instance's run and event storage (postgres: a throwaway database)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME=LIMIT",
        help="a pool limit other than the default 1, e.g. downloads=2 (repeatable)",
    )
    parser.add_argument("--url", default=default_url(), help="PostgreSQL (default: $TAXI_TEST_POSTGRES_URL)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(args.modes) <= set(MODES) or not args.modes:
        parser.error(f"--modes takes {', '.join(MODES)}")
    return args


def main(argv=None) -> dict:
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    args = _parse(argv)
    spec, url = DATASETS[args.dataset], args.url
    months = months_from(args.first, args.months)
    forms = ("csv",) if spec.releases and all(m in spec.releases for m in months) else ("csv", "parquet")
    start = time.perf_counter()
    source = cached_source_months(spec, months, args.rows, args.seed, forms)
    generate_seconds = time.perf_counter() - start
    step = spec.months_per_run
    runs = [[months[i], months[min(i + step, len(months)) - 1]] for i in range(0, len(months), step)]
    limits = dict(p.split("=", 1) for p in args.pool)
    results, folder = {}, Path(tempfile.mkdtemp(prefix="backfill_"))
    schemas = {mode: f"bench_{uuid.uuid4().hex[:10]}" for mode in args.modes}
    try:
        with SourceServer(source) as server:
            for mode in args.modes:
                work, schema = folder / mode, schemas[mode]
                home = work / "dagster_home"
                home.mkdir(parents=True)
                storage_url = storage_database(url, schema) if args.storage == "postgres" else ""
                storage = STORAGE_YAML[args.storage].format(home=home, storage_url=storage_url)
                (home / "dagster.yaml").write_text(INSTANCE_YAML.format(home=home, storage=storage))
                env = platform_env(
                    server.url,
                    work / "data",
                    url,
                    schema,
                    DAGSTER_HOME=str(home),
                    BENCH_DATASET=spec.name,
                    BENCH_EXECUTOR=MODES[mode][1],
                )
                processes = MODES[mode][0]
                shares = [runs[i::processes] for i in range(processes)]
                shares = [share for share in shares if share]
                # Create the instance's storage once: two processes migrating a fresh sqlite one at the
                # same moment fail ("alembic_version has more than one head").
                init_instance(home, limits)
                start, cpu = time.perf_counter(), machine_cpu_seconds()
                children = _run_all(shares, env)
                seconds = time.perf_counter() - start
                results[mode] = {
                    "seconds": seconds,
                    "processes": len(shares),
                    "cpu_seconds": machine_cpu_seconds() - cpu,
                    "executor": env["BENCH_EXECUTOR"],
                    "children": children,
                    "peak_rss": max(c["peak_rss"] for c in children),
                    **_verify(url, schema, spec, work / "data" / "warehouse.duckdb", months),
                }
    finally:
        for schema in schemas.values():
            execute(url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            execute(url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(schema)))
        shutil.rmtree(folder, ignore_errors=True)

    figures = {
        "dataset": spec.name,
        "rows_per_month": args.rows,
        "storage": args.storage,
        "pool_limits": limits,
        "months": months,
        "runs": runs,
        "seed": args.seed,
        "generate_seconds": generate_seconds,
        "cpus": os.cpu_count(),
        "modes": results,
        "goals": {},
    }
    for mode in ("multiprocess", "two_processes"):
        if {"serial", mode} <= results.keys():
            speedup = figures[f"speedup_{mode}"] = results["serial"]["seconds"] / results[mode]["seconds"]
            figures["goals"][f"{mode}_speedup>={GOAL_SPEEDUP:g}x"] = speedup >= GOAL_SPEEDUP
    _report(figures)
    return figures


def storage_database(url: str, name: str) -> str:
    """A new database on the server for the instance's storage (dropped at the end); its URL."""
    execute(url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # psycopg2, as docker/dagster.yaml: on psycopg 3 (SQLAlchemy's default) dagster-postgres' NOTIFY fails.
    return urlsplit(url)._replace(scheme="postgresql+psycopg2", path=f"/{name}").geturl()


def init_instance(home: Path, limits: dict) -> None:
    """Create the instance's storage, and set the pool limits as `dagster instance concurrency set`."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        instance.get_run_records(limit=1)
        for name, limit in limits.items():
            instance.event_log_storage.set_concurrency_slots(name, int(limit))


def machine_cpu_seconds() -> float:
    """CPU time spent so far by every process of the machine (the workers, their step processes, the
    PostgreSQL server): the non-idle time of /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _run_all(shares: list[list], env: dict) -> list[dict]:
    """One worker process per share of runs, all at once; each one's figures."""
    from concurrent.futures import ThreadPoolExecutor

    commands = [
        [sys.executable, "-m", "benchmarks.backfill", "--worker", json.dumps(share)] for share in shares
    ]
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: run_child(command, env, timeout=WORKER_TIMEOUT), commands))


def _verify(url: str, schema: str, spec, duckdb_path: Path, months: list[str]) -> dict:
    """Postgres and DuckDB hold each month once: rows per month, and no duplicate trip_key."""
    import duckdb

    table = sql.Identifier(schema, spec.table)
    pg = dict(
        execute(
            url, sql.SQL("SELECT to_char(pickup_date, 'YYYY-MM'), count(*) FROM {} GROUP BY 1").format(table)
        )
    )
    distinct = execute(url, sql.SQL("SELECT count(DISTINCT trip_key), count(*) FROM {}").format(table))[0]
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        wh = dict(
            con.execute(
                f"SELECT strftime(pickup_date, '%Y-%m'), count(*) FROM taxi.\"{spec.table}\" GROUP BY 1"
            ).fetchall()
        )
    if sorted(pg) != months or pg != wh or distinct[0] != distinct[1]:
        raise RuntimeError(f"{schema}: Postgres months {pg}, DuckDB {wh}, distinct/all keys {distinct}")
    return {"postgres_rows": distinct[1], "month_rows": {month: pg[month] for month in months}}


def _report(f: dict) -> None:
    lines = [
        f"backfill of synthetic {f['dataset']}: {len(f['months'])} months ({f['months'][0]}..{f['months'][-1]}) "
        f"x {f['rows_per_month']:,} rows, in {len(f['runs'])} runs of up to "
        f"{DATASETS[f['dataset']].months_per_run} months; {f['cpus']} CPUs; {f['storage']} storage; pools limit 1"
        + "".join(f", {name} {limit}" for name, limit in f["pool_limits"].items()),
        "",
        f"{'mode':<44}  {'wall s':>7}  {'CPU s':>6}  {'cores busy':>10}  {'peak RSS MB':>11}"
        f"  {'rows in Postgres':>16}",
    ]
    for mode, r in f["modes"].items():
        label = (
            f"{mode}: {r['processes']} process{'es' if r['processes'] > 1 else ''}, {r['executor']} executor"
        )
        lines.append(
            f"{label:<44}  {r['seconds']:>7.1f}  {r['cpu_seconds']:>6.1f}  "
            f"{r['cpu_seconds'] / r['seconds']:>10.2f}  {r['peak_rss'] / 2**20:>11,.0f}  "
            f"{r['postgres_rows']:>16,}"
        )
    lines.append("")
    for goal, met in f["goals"].items():
        mode = goal.split("_speedup")[0]
        lines.append(
            f"speedup serial / {mode}: {f[f'speedup_{mode}']:.2f}x   goal >= {GOAL_SPEEDUP:g}x: "
            f"{'met' if met else 'MISSED'}"
        )
    for mode, r in f["modes"].items():
        runs = "; ".join(
            f"{run['months'][0]}..{run['months'][1]} {run['seconds']:.1f} s"
            for child in r["children"]
            for run in child["runs"]
        )
        lines.append(f"{mode} runs: {runs}")
    lines.append(
        "checked: every month in Postgres and DuckDB once, trip_key unique; writers limited by "
        "the pools and by the IO manager's advisory lock per month."
    )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
