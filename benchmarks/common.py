"""What the benchmarks share: the PostgreSQL they write to, a month's assets as one job, and running a
measured step in a child process of its own.

Every benchmark runs from the repository root (`python -m benchmarks.<name>`); a child runs there too,
so it imports the same `benchmarks` and `taxi_platform_tests` packages as its parent.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:  # taxi_platform imports dagster, which a peer's process (benchmarks/peers.py) skips
    from taxi_platform.datasets import DatasetSpec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULT_MARK = "BENCH_RESULT "
SMALL_RUN_ROWS = 100_000  # below this, fixed costs dominate the figures


def default_url() -> str:
    """The PostgreSQL the benchmarks write to: the tests' server if set, else the local one."""
    return os.environ.get("TAXI_TEST_POSTGRES_URL") or DEFAULT_URL


def execute(url: str, statement, params=()) -> list[tuple]:
    """Run one statement in autocommit; its rows (none for a statement without a result)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def month_asset_keys(spec: DatasetSpec) -> list[str]:
    """A month's path from the source to the stores: raw, clean (+ rejected), Postgres, warehouse."""
    keys = (spec.raw_key, spec.clean_key, spec.rejected_key, spec.postgres_key, spec.warehouse_key)
    return [key.to_user_string() for key in keys]


def month_selection(spec: DatasetSpec):
    """`month_asset_keys` as an asset selection (the ingest step runs the clean asset's checks)."""
    import dagster as dg

    return dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in month_asset_keys(spec)))


def month_job():
    """`month_selection` of the dataset BENCH_DATASET as one job, run by
    the executor BENCH_EXECUTOR names (in_process | multiprocess). A module-level function, so that
    `dagster.reconstructable` rebuilds it in every step process of the multiprocess executor."""
    import dagster as dg

    from taxi_platform.datasets import DATASETS
    from taxi_platform.definitions import defs

    spec = DATASETS[os.environ["BENCH_DATASET"]]
    definitions = defs()
    executor = (
        dg.multiprocess_executor.configured(
            {
                "max_concurrent": 2,
                "start_method": {
                    "forkserver": {"preload_modules": ["taxi_platform.definitions", "benchmarks.common"]}
                },
            }
        )
        if os.environ.get("BENCH_EXECUTOR") == "multiprocess"
        else dg.in_process_executor
    )
    job = dg.define_asset_job(
        "benchmark_months",
        selection=month_selection(spec),
        executor_def=executor,
    )
    return dg.Definitions(
        assets=definitions.assets,
        jobs=[job],
        resources=definitions.resources,
    ).get_job_def("benchmark_months")


def child_env(**settings: str) -> dict[str, str]:
    """This process's environment without its TAXI_* and DAGSTER_* settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "DAGSTER_"))}
    env.update(settings)
    return env


def platform_env(source_url: str, data_dir: Path, postgres_url: str, schema: str, **settings: str) -> dict:
    """`child_env` for the platform: the local profile against the source at `source_url`, its lake and
    DuckDB warehouse in `data_dir`, its Postgres tables in `schema`; plus `settings`."""
    return child_env(
        TAXI_PROFILE="local",
        TAXI_RELEASES_URL=f"{source_url}/releases",
        TAXI_TLC_URL=source_url,
        TAXI_DATA_DIR=str(data_dir),
        TAXI_POSTGRES_URL=postgres_url,
        TAXI_POSTGRES_SCHEMA=schema,
        **settings,
    )


def report_result(result: dict) -> None:
    """What a child hands back to `run_child`: one line of JSON after RESULT_MARK, with its peak RSS."""
    print(RESULT_MARK + json.dumps({**result, "peak_rss": peak_rss()}), flush=True)


def peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM), or its waited children's if larger.

    Not `ru_maxrss`: Linux carries the parent's high-water mark into a child across exec, so a child
    of a benchmark that had generated a 7.5M-row month "peaked" at the parent's 3.8 GB."""
    with open("/proc/self/status") as status:
        own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def run_child(command: list[str], env: dict, timeout: float | None = None) -> dict:
    """Run `command` from the repository root; its wall time and the JSON it reported (`report_result`),
    peak RSS included."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        timer = None
        if timeout:
            timer = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
            timer.start()
        process.wait()
        if timer:
            timer.cancel()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed ({process.returncode}):\n{stderr[-4000:]}")
    found = [line[len(RESULT_MARK) :] for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not found:
        raise RuntimeError(f"{command} printed no result:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return {"seconds": seconds, **json.loads(found[-1])}


def small_run_note(rows: int, fixed_costs: str) -> list[str]:
    """The report's caveat for a run too small for its figures to mean anything."""
    if rows >= SMALL_RUN_ROWS:
        return []
    return [f"  at {rows:,} rows fixed costs ({fixed_costs}) dominate: the goals are meant for a full month."]
