"""End-to-end benchmark: one month from its source file to PostgreSQL, every way in one run.

    python -m benchmarks.end_to_end [--rows 1400000] [--dataset yellow] [--month 2021-01]
                                    [--ways floor,course,mage-style,dlt,platform] [--profile FILE.svg]
                                    [--url postgresql://postgres@127.0.0.1:5432/postgres] [--seed S]
                                    [--results benchmarks/results]

A synthetic month (synthetic/months.py, cached) is served by a local HTTP server laid out like the
sources (synthetic/source_server.py). Each way then runs in its own subprocess, so its wall
time (process start and imports included) and its peak RSS (its VmHWM, see common.peak_rss) are its own:

- platform: `dagster.materialize` of raw/<ds>_trips, clean/<ds>_trips, clean/<ds>_trips_rejected,
  postgres/<ds>_trips, warehouse/<ds>_trips for the month (the ingest step runs the clean asset's
  blocking checks before it publishes), with the local profile's resources from
  `taxi_platform.definitions.defs()`: TAXI_RELEASES_URL / TAXI_TLC_URL at the local server, TAXI_DATA_DIR
  a temp folder (lake + DuckDB warehouse), TAXI_POSTGRES_URL and a throwaway TAXI_POSTGRES_SCHEMA.
- course: download the month's file, `pd.read_csv` with the course's dtypes (nullable Int64, float64,
  string, parse_dates; `pd.read_parquet` for a month in the TLC's parquet), rename to snake_case, keep
  `passenger_count > 0 & trip_distance > 0` (yellow, green), `to_parquet(partition_cols=["pickup_date"])`,
  `to_sql(chunksize=100_000)` via psycopg2.
- floor, mage-style, dlt: see benchmarks/peers.py (their processes import neither Dagster nor
  taxi_platform: the dataset's description comes with the job). dlt runs twice, with loader_file_format "parquet"
  (PostgreSQL through ADBC) and "csv"; the faster of the two is "dlt" in the ratios.

Every way reads the file the platform reads (the CSV.gz release, or for the other months and for fhvhv
the TLC's parquet) and loads the same month into the same server; row counts are checked (the
platform's Postgres and DuckDB months hold the clean rows; every other way's tables hold the rows it
kept). The schema is
dropped at the end. The run ends with the four lines of issue 15 (n/a for a way not run):

    speedup vs course: N.Nx        (course wall / platform wall; likewise mage-style, dlt)
    speedup vs mage-style: N.Nx
    speedup vs dlt: N.Nx
    time vs floor: N.Nx            (platform wall / floor wall)

and writes its figures, with the machine's (cores, PostgreSQL, package versions), to
<results>/<UTC timestamp>.json, and says which of issue 15's goals (GOAL_RATIOS, GOAL_FLOOR, the peak
RSS: 1 GB for a month of up to 2M rows, 2 GB above) the run met.
`main(argv)` returns the figures as a dict (the smoke test calls it with a small month).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform as machine
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from psycopg import sql

from benchmarks import peers
from benchmarks.common import (
    ROOT,
    child_env,
    default_url,
    execute,
    month_job,
    month_selection,
    platform_env,
    report_result,
    run_child,
    small_run_note,
)
from synthetic.months import DEFAULT_SEED, cached_source_month
from synthetic.source_server import SourceServer
from taxi_platform.datasets import DATASETS, DatasetSpec

# Issue 15's goals: each ratio's bound (">=" for the speedups, "<=" for the time vs the floor), and
# the platform's peak RSS: 1 GB up to SMALL_MONTH_ROWS (the 1.4M-row month), 2 GB above (20M rows).
GOAL_RATIOS = {"speedup vs course": 15.0, "speedup vs mage-style": 2.0, "speedup vs dlt": 2.0}
GOAL_FLOOR = ("time vs floor", 1.5)
GOAL_RSS_SMALL = 1 << 30
GOAL_RSS_LARGE = 2 << 30
SMALL_MONTH_ROWS = 2_000_000
WAYS = ("floor", "course", "mage-style", "dlt", "platform")
DLT_FORMATS = ("parquet", "csv")  # dlt's loader_file_format, each a run of its own ("dlt-<format>")
PEERS = ("course", "mage-style", "dlt")  # the ways the platform's speedup is given against
RESULTS = ROOT / "benchmarks" / "results"
_FORM_NAMES = {"csv": "CSV.gz", "parquet": "parquet"}
PACKAGES = ("dagster", "pyarrow", "pandas", "duckdb", "psycopg", "pgpq", "sqlalchemy", "dlt")
PACKAGES += ("adbc-driver-postgresql",)
NAMES = {
    "floor": "floor (pyarrow .. parquet, pgpq COPY, DuckDB)",
    "course": "course (pandas read .. to_parquet .. to_sql)",
    "mage-style": "mage-style (pandas read .. to_parquet, to_csv + COPY)",
    **{f"dlt-{f}": f"dlt (pyarrow rules, dlt run, {f} loader)" for f in DLT_FORMATS},
}


# --------------------------------------------------------------------------------------------------
# The platform's and the course's ways (each runs in its own process: `python -m benchmarks.end_to_end --worker <way> ...`)


def platform_way(spec: DatasetSpec, month: str, runner: str = "materialize") -> dict:
    """The platform's run of the month: `dagster.materialize` (which keeps every output for its result:
    streams and lazy datasets, so little memory), or with runner="execute_job" `dagster.execute_job` of
    the same selection as a job, as a launched run or `dagster asset materialize` executes it; runner
    "multiprocess" executes that job with the multiprocess executor (a process per step, forked from a
    forkserver that imported the code location; the two sinks at the same time)."""
    import dagster as dg

    from taxi_platform.definitions import defs

    sampler = RssSampler()
    start = time.perf_counter()
    if runner == "materialize":
        definitions = defs()
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            list(definitions.assets),
            selection=month_selection(spec),
            resources=definitions.resources,
            partition_key=month,
            instance=instance,
        )
        return _platform_figures(result, instance, sampler, start)
    executor = "multiprocess" if runner == "multiprocess" else "in_process"
    os.environ.update(BENCH_DATASET=spec.name, BENCH_EXECUTOR=executor)
    # Step processes reach the run's instance through its storage: an ephemeral one has none.
    with (
        dg.instance_for_test() if executor == "multiprocess" else dg.DagsterInstance.ephemeral() as instance,
        dg.execute_job(dg.reconstructable(month_job), instance, tags={"dagster/partition": month}) as result,
    ):
        return _platform_figures(result, instance, sampler, start)


def _platform_figures(result, instance, sampler, start) -> dict:
    seconds = time.perf_counter() - start
    sampler.stop()
    stats = [s for s in instance.get_run_step_stats(result.run_id) if s.end_time and s.start_time]
    steps = {s.step_key: s.end_time - s.start_time for s in stats}
    step_peak_rss = {s.step_key: sampler.peak(s.start_time, s.end_time) for s in stats}
    counts = {}
    for event in result.get_asset_materialization_events():
        m = event.materialization
        row_count = m.metadata.get("dagster/row_count")
        if row_count is not None:
            counts[m.asset_key.to_user_string()] = row_count.value
    return {
        "inner_seconds": seconds,
        "steps": steps,
        "step_peak_rss": step_peak_rss,
        "row_counts": counts,
        "checks_passed": all(e.passed for e in result.get_asset_check_evaluations()),
    }


class RssSampler:
    """Samples this process's RSS every 50 ms (from /proc), to tell which step holds the peak."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.samples.append((time.time(), int(f.read().split()[1]) * self._page))
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def course_dtypes(spec: DatasetSpec) -> tuple[dict, list[str]]:
    """The course's read_csv dtypes: nullable Int64 for integers, float64, string; timestamps parsed."""
    import pyarrow as pa

    dtypes, dates = {}, []
    for column in spec.columns:
        if column.csv is None or column.name == "airport_fee":
            continue
        if pa.types.is_timestamp(column.csv):
            dates.append(column.source)
        elif pa.types.is_integer(column.csv):
            dtypes[column.source] = "Int64"
        elif pa.types.is_string(column.csv):
            dtypes[column.source] = "string"
        else:
            dtypes[column.source] = "float64"
    return dtypes, dates


def course_way(
    spec: DatasetSpec, month: str, form: str, url: str, schema: str, source_url: str, folder: str
) -> dict:
    """The course's pipeline: pandas end to end (`read_parquet` for a month the TLC's parquet holds)."""
    import urllib.request

    import sqlalchemy

    start = time.perf_counter()
    marks = {}
    path = Path(folder, spec.file_name(month, form))
    with urllib.request.urlopen(source_url) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    marks["download"] = time.perf_counter()
    dtypes, dates = course_dtypes(spec)
    df = peers.read_frame(path, {"form": form, "pandas_dtypes": dtypes, "pandas_dates": dates})
    raw_rows = len(df)
    marks[f"read_{form}"] = time.perf_counter()
    by_folded = {c.source.lower(): c.name for c in spec.columns}
    df = df.rename(columns={name: by_folded[name.lower()] for name in df.columns})
    if spec.positive_columns:
        keep = True
        for name in spec.positive_columns:
            keep = keep & (df[name] > 0)
        df = df[keep]
    df["pickup_date"] = df[spec.pickup].dt.date
    marks["filter_rename"] = time.perf_counter()
    df.to_parquet(Path(folder, "lake"), partition_cols=["pickup_date"])
    marks["to_parquet"] = time.perf_counter()
    table = f"{spec.table}_course"
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(url).set(drivername="postgresql+psycopg2"))
    df.drop(columns=["pickup_date"]).to_sql(
        table, engine, schema=schema, if_exists="replace", index=False, chunksize=100_000
    )
    engine.dispose()
    marks["to_sql"] = time.perf_counter()
    return peers.way_figures(start, marks, raw_rows, len(df), table, columns=len(df.columns))


def _worker(argv) -> None:
    args = json.loads(argv[0])
    spec = DATASETS[args["dataset"]]
    if args["way"] == "platform":
        result = platform_way(spec, args["month"], args["runner"])
    else:
        result = course_way(
            spec, args["month"], args["form"], args["url"], args["schema"], args["source_url"], args["folder"]
        )
    report_result(result)


def way_runs(way: str, dlt_formats: list[str]) -> list[str]:
    """The runs (subprocesses) of a way: dlt's one per loader format, every other way's one."""
    return [f"dlt-{f}" for f in dlt_formats] if way == "dlt" else [way]


# --------------------------------------------------------------------------------------------------
# Counting what a way loaded


def _count_month(url: str, schema: str, table: str, column: str | None, month: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    params = []
    if column:
        query = sql.SQL("{} WHERE {} >= %s::date AND {} < (%s::date + interval '1 month')").format(
            query, sql.Identifier(column), sql.Identifier(column)
        )
        params = [f"{month}-01", f"{month}-01"]
    return execute(url, query, params)[0][0]


def _duckdb_count(path: Path, table: str, schema: str = "taxi") -> int:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]


def _check_counts(url: str, schema: str, spec: DatasetSpec, month: str, run: str, work: Path, result: dict):
    """Count what the run loaded into PostgreSQL (and DuckDB) against the rows it reported; raise if
    they differ."""
    if run == "platform":
        result["postgres_rows"] = _count_month(url, schema, spec.table, "pickup_date", month)
        result["warehouse_rows"] = _duckdb_count(work / "data" / "warehouse.duckdb", spec.table)
        result["raw_rows"] = result["row_counts"][spec.raw_key.to_user_string()]
        result["loaded_rows"] = result["row_counts"].get(spec.clean_key.to_user_string())
    else:
        result["postgres_rows"] = _count_month(url, schema, result["table"], None, month)
        if run.startswith("dlt-"):
            result["warehouse_rows"] = _duckdb_count(work / "warehouse.duckdb", result["table"], schema)
    loaded = {result["postgres_rows"], result.get("warehouse_rows", result["postgres_rows"])}
    if not result["loaded_rows"] or loaded != {result["loaded_rows"]}:
        raise RuntimeError(
            f"{run}: kept {result['loaded_rows']} rows, Postgres holds {result['postgres_rows']}, "
            f"DuckDB {result.get('warehouse_rows', '-')}"
        )


# --------------------------------------------------------------------------------------------------
# Main


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.end_to_end", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_400_000, help="rows of the synthetic month")
    parser.add_argument("--dataset", default="yellow", choices=sorted(DATASETS))
    parser.add_argument("--month", default="2021-01", help="YYYY-MM (2019-01..2021-07: the CSV.gz release)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}")
    parser.add_argument(
        "--runner",
        default="materialize",
        choices=["materialize", "execute_job", "multiprocess"],
        help="how the platform's run is executed (see platform_way)",
    )
    parser.add_argument(
        "--dlt-formats",
        default=",".join(DLT_FORMATS),
        help="dlt's PostgreSQL loader formats to run (the faster counts): parquet, csv",
    )
    parser.add_argument("--url", default=default_url(), help="PostgreSQL (default: $TAXI_TEST_POSTGRES_URL)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--profile",
        help="record the platform way with py-spy into this file "
        "(.svg flame graph, .txt collapsed stacks, .json speedscope)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data folder and Postgres schema")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    args = parser.parse_args(argv)
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if not set(args.ways) <= set(WAYS) or not args.ways:
        parser.error(f"--ways takes some of: {', '.join(WAYS)}")
    args.dlt_formats = [f.strip() for f in args.dlt_formats.split(",") if f.strip()]
    if not set(args.dlt_formats) <= set(DLT_FORMATS) or not args.dlt_formats:
        parser.error(f"--dlt-formats takes some of: {', '.join(DLT_FORMATS)}")
    return args


def main(argv=None) -> dict:
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    args = _parse(argv)
    spec, month, url = DATASETS[args.dataset], args.month, args.url
    platform_form = "csv" if spec.releases is not None and month in spec.releases else "parquet"
    # Every way reads the file the platform reads: the CSV.gz release, or the TLC's parquet (whose
    # fhvhv months have 25 columns where the CSV form has 7).
    start = time.perf_counter()
    source = cached_source_month(spec, month, args.rows, args.seed, (platform_form,))
    generate_seconds = time.perf_counter() - start
    source_path = _source_file(source, spec, month, platform_form).relative_to(source)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    server_version = execute(url, "SHOW server_version")[0][0]
    results: dict[str, dict] = {}
    folder = Path(tempfile.mkdtemp(prefix="end_to_end_"))
    execute(url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        with SourceServer(source) as server:
            for run in [run for way in args.ways for run in way_runs(way, args.dlt_formats)]:
                work = folder / run
                work.mkdir()
                env = (
                    platform_env(server.url, work / "data", url, schema)
                    if run == "platform"
                    else child_env(RUNTIME__DLTHUB_TELEMETRY="false")
                )
                job = {
                    "way": run,
                    "dataset": spec.name,
                    "month": month,
                    "runner": args.runner,
                    "url": url,
                    "schema": schema,
                    "folder": str(work),
                    "form": platform_form,
                    "source_url": f"{server.url}/{source_path}",
                }
                if run in ("platform", "course"):
                    command = [sys.executable, "-m", "benchmarks.end_to_end", "--worker", json.dumps(job)]
                else:  # a peer's process imports neither Dagster nor taxi_platform
                    job["plan"] = peers.month_plan(spec, month, platform_form, course_dtypes(spec))
                    command = [sys.executable, "-m", "benchmarks.peers", json.dumps(job)]
                if run == "platform" and args.profile:
                    command = _profiled(command, args.profile)
                results[run] = run_child(command, env)
                _check_counts(url, schema, spec, month, run, work, results[run])
    finally:
        if not args.keep:
            execute(url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            shutil.rmtree(folder, ignore_errors=True)

    for r in results.values():
        r["rows_per_second"] = r["raw_rows"] / r["seconds"]
    figures = {
        "rows": args.rows,
        "dataset": spec.name,
        "month": month,
        "seed": args.seed,
        "machine": _machine(server_version),
        "generate_seconds": generate_seconds,
        "source_form": platform_form,
        "source_bytes": (source / source_path).stat().st_size,
        "ways": results,
        "walls": _walls(results),
        "floor_copy": peers.FLOOR_COPY_NOTE,
        "goals": {},
        "profiled": bool(args.profile),
        "runner": args.runner,
    }
    figures["ratios"] = _ratios(figures["walls"])
    rss_goal = GOAL_RSS_SMALL if args.rows <= SMALL_MONTH_ROWS else GOAL_RSS_LARGE
    if "platform" in results:
        figures["goals"][f"platform_peak_rss<={rss_goal >> 30}GB"] = (
            results["platform"]["peak_rss"] <= rss_goal
        )
    for ratio, bound in GOAL_RATIOS.items():
        if figures["ratios"][ratio] is not None:
            figures["goals"][f"{ratio} >= {bound:g}x"] = figures["ratios"][ratio] >= bound
    ratio, bound = GOAL_FLOOR
    if figures["ratios"][ratio] is not None:
        figures["goals"][f"{ratio} <= {bound:g}x"] = figures["ratios"][ratio] <= bound
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    figures["result_file"] = str(args.results / f"{stamp}.json")
    Path(figures["result_file"]).write_text(json.dumps(figures, indent=2) + "\n")
    _report(figures)
    return figures


def _source_file(root: Path, spec: DatasetSpec, month: str, form: str) -> Path:
    """The month's file as the platform reads it: the CSV.gz release, or the TLC's parquet."""
    folder = root / "releases" / spec.name if form == "csv" else root / "trip-data"
    return folder / spec.file_name(month, form)


def _profiled(command: list[str], profile: str) -> list[str]:
    """`command` recorded by py-spy into `profile` (.svg flame graph, .txt collapsed, .json speedscope)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    kind = {".txt": "raw", ".json": "speedscope"}.get(Path(profile).suffix, "flamegraph")
    return [
        py_spy,
        "record",
        "--rate",
        "50",
        "--subprocesses",
        "--format",
        kind,
        "-o",
        profile,
        "--",
        *command,
    ]


def _machine(server_version: str) -> dict:
    """What the figures were measured on: cores, PostgreSQL, Python and the packages' versions."""
    return {
        "cores": os.cpu_count(),
        "platform": machine.platform(),
        "python": machine.python_version(),
        "postgres": server_version,
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
    }


def _walls(results: dict[str, dict]) -> dict[str, float]:
    """Each way's wall time; dlt's is its faster loader format's."""
    walls = {run: r["seconds"] for run, r in results.items() if not run.startswith("dlt-")}
    dlt = [r["seconds"] for run, r in results.items() if run.startswith("dlt-")]
    if dlt:
        walls["dlt"] = min(dlt)
    return walls


def _ratios(walls: dict[str, float]) -> dict[str, float | None]:
    """The four figures of issue 15 (None where a way was not run)."""
    platform = walls.get("platform")
    ratios = {
        f"speedup vs {peer}": walls[peer] / platform if platform and peer in walls else None for peer in PEERS
    }
    ratios["time vs floor"] = platform / walls["floor"] if platform and "floor" in walls else None
    return ratios


def _report(f: dict) -> None:
    names = {**NAMES, "platform": f"platform ({f['runner']}, 5 assets + checks)"}
    width = max(len(names[w]) for w in f["ways"])
    lines = [
        f"PostgreSQL {f['machine']['postgres']}, {f['machine']['cores']} cores; synthetic {f['dataset']} "
        f"{f['month']}: {f['rows']:,} rows (seed {f['seed']}; platform's source "
        f"{_FORM_NAMES[f['source_form']]} {f['source_bytes'] / 1e6:.1f} MB; "
        f"generated/cached in {f['generate_seconds']:.1f} s)",
        "",
        f"{'way':<{width}}  {'wall s':>8}  {'rows/s':>9}  {'peak RSS MB':>11}  {'loaded rows':>11}",
    ]
    for way, r in f["ways"].items():
        lines.append(
            f"{names[way]:<{width}}  {r['seconds']:>8.2f}  {r['rows_per_second']:>9,.0f}  "
            f"{r['peak_rss'] / 2**20:>11,.0f}  {r['postgres_rows']:>11,}"
        )
    lines.append("")
    for goal, met in f["goals"].items():
        lines.append(f"goal {goal}: {'met' if met else 'MISSED'}")
    for way, r in f["ways"].items():
        steps = ", ".join(f"{k.replace('__', '/')} {v:.1f}" for k, v in r["steps"].items())
        lines.append(f"{way} steps (s): {steps}; in-process total {r['inner_seconds']:.1f} s")
        if r.get("step_peak_rss"):
            lines.append(
                f"{way} peak RSS per step (MB): "
                + ", ".join(f"{k.replace('__', '/')} {v / 2**20:,.0f}" for k, v in r["step_peak_rss"].items())
            )
    lines.append(
        "notes: wall = the way's whole subprocess (interpreter start and imports included); "
        "peak RSS = its VmHWM (and its children's), read as it ends."
    )
    if "floor" in f["ways"]:
        lines.append(f"  floor's PostgreSQL load: {f['floor_copy']}.")
    if "dlt" in f["walls"]:
        lines.append("  dlt in the ratios: its faster loader format.")
    if f.get("profiled"):
        lines.append("  profiled with py-spy: times inflated, and the platform's peak RSS is py-spy's own.")
    lines += small_run_note(f["rows"], "imports, Dagster run setup")
    lines.append(f"figures written to {f['result_file']}")
    lines += [f"{name}: {'n/a' if v is None else f'{v:.1f}x'}" for name, v in f["ratios"].items()]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
