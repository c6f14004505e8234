"""The ingest step side by side: today's Iceberg lake against the old hive-parquet lake (issue 22's
goal: at 1.4M rows no more than GOAL_RATIO times the old lake's time).

    python -m benchmarks.lake_ingest [--rows 1400000] [--repeats 5] [--dataset yellow] [--month 2021-01]
                                     [--republish] [--sample-data ../shared/data/nyc-tlc]
                                     [--results benchmarks/results]

The month is the real TLC file when the sample-data folder holds it (the course's CSV.gz release of
yellow 2021-01 has 1.4M rows), else a synthetic month of `--rows` (synthetic/months.py, cached); a local
HTTP server serves it (synthetic/source_server.py). Each repetition runs both sides, in alternating
order, each in a fresh child process with a fresh lake folder, the local profile and its default
SQLite catalog:

- iceberg: this tree's `ingest_<ds>_trips` step (raw, clean and rejected staged, audited by the
  blocking checks, published: one commit per table);
- old: the same step of the tree at BASELINE (the lake as it was before the Iceberg lake), extracted
  from git history into a temporary folder and put first on the child's sys.path; it runs with this
  venv. Its lock differed only in packages this step never imports (deltalake and DuckDB's delta
  extension, which it did not use; fsspec, google-cloud-storage, websockets, wrapt, newer then):
  dagster, pyarrow, pandas and requests are the same versions.

In the child, `dagster.materialize` of the step's three assets: the step's own time (Dagster's step
stats), the materialize call and its CPU time (every thread: less moved by the machine's load than
wall time), imports and definitions apart; the process's wall (parent-timed); its
peak RSS (VmHWM) as the step ends and its RSS before it (imports). With --republish the step then
runs again on the same month in the same lake (timed apart: a new version over the published one,
where the first run created the tables). Then it reads the month back
through its tree's own IO manager (`Definitions.load_asset_value`) and reports the rows of raw, clean
and rejected and the sum of clean's trip_key: both sides must agree, or the run fails. It prints each
side's medians and the ratio iceberg/old, and writes the figures to <results>/lake_ingest-<stamp>.json.
"""

import argparse
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform as machine
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, child_env, report_result, run_child, small_run_note

# The parent of "Lake: Apache Iceberg tables behind a Lake resource" (03eb515): the hand-written lake.
BASELINE = "03eb515^"
GOAL_RATIO = 1.10
SIDES = ("old", "iceberg")
# Each run's figures whose medians and ratios are given (seconds; bytes of RSS).
_FIGURES = ("step_seconds", "inner_seconds", "inner_cpu_seconds", "seconds", "startup_seconds")
_FIGURES += ("step_peak_rss", "step_rss_growth")
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_DATA = ROOT.parent / "shared" / "data" / "nyc-tlc"  # ../shared beside the project (CI, sessions)
PACKAGES = ("dagster", "pyarrow", "pyiceberg", "sqlalchemy")


def main(argv=None) -> dict:
    if argv and argv[0] == "--worker":
        return _worker(json.loads(argv[1]))
    args = _parse(argv)
    from synthetic.months import DEFAULT_SEED, cached_source_month
    from synthetic.source_server import SourceServer
    from taxi_platform.datasets import DATASETS

    spec = DATASETS[args.dataset]
    real = args.sample_data / "releases" / spec.name / spec.file_name(args.month, "csv")
    if real.exists():
        source, described = args.sample_data, f"real TLC file {real.name}"
    else:
        source = cached_source_month(spec, args.month, args.rows, DEFAULT_SEED, ("csv",))
        described = f"synthetic {spec.name} {args.month}, {args.rows:,} rows (seed {DEFAULT_SEED}), CSV.gz"
    work = Path(tempfile.mkdtemp(prefix="lake_ingest_"))
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    try:
        old_tree = _extract(BASELINE, work / "old_tree")
        with SourceServer(source) as server:
            for repetition in range(args.repeats):
                order = SIDES if repetition % 2 == 0 else SIDES[::-1]
                for side in order:
                    data = work / f"{side}_{repetition}"
                    job = {
                        "tree": str(old_tree) if side == "old" else "",
                        "dataset": spec.name,
                        "month": args.month,
                        "republish": args.republish,
                    }
                    command = [sys.executable, "-m", "benchmarks.lake_ingest", "--worker", json.dumps(job)]
                    env = child_env(
                        TAXI_PROFILE="local",
                        TAXI_RELEASES_URL=f"{server.url}/releases",
                        TAXI_TLC_URL=server.url,
                        TAXI_DATA_DIR=str(data),
                    )
                    runs[side].append({**run_child(command, env), "order": order.index(side)})
                    shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = _figures(args, spec.name, described, runs)
    _check_same_rows(runs)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    figures["result_file"] = str(args.results / f"lake_ingest-{stamp}.json")
    Path(figures["result_file"]).write_text(json.dumps(figures, indent=2) + "\n")
    _report(figures)
    return figures


def _extract(commit: str, folder: Path) -> Path:
    """The package taxi_platform as it was at `commit`, written into `folder` (from git history)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "taxi_platform"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _worker(job: dict) -> None:
    """One side's ingest step in this process: `job["tree"]` first on sys.path (empty: this tree)."""
    started = time.perf_counter()
    if job["tree"]:
        sys.path.insert(0, job["tree"])
    import dagster as dg
    import pyarrow.compute as pc

    import taxi_platform
    from taxi_platform.datasets import DATASETS
    from taxi_platform.definitions import defs

    expected = Path(job["tree"] or ROOT, "taxi_platform").resolve()
    if Path(taxi_platform.__file__).resolve().parent != expected:
        raise RuntimeError(f"imported {taxi_platform.__file__}, not the tree's {expected}")
    spec, month = DATASETS[job["dataset"]], job["month"]
    keys = {
        "raw": dg.AssetKey(["raw", spec.table]),
        "clean": dg.AssetKey(["clean", spec.table]),
        "rejected": dg.AssetKey(["clean", f"{spec.table}_rejected"]),
    }
    definitions = defs()
    instance = dg.DagsterInstance.ephemeral()

    def ingest() -> dict[str, float]:
        result = dg.materialize(
            list(definitions.assets),
            selection=dg.AssetSelection.assets(*keys.values()),
            resources=definitions.resources,
            partition_key=month,
            instance=instance,
        )
        stats = instance.get_run_step_stats(result.run_id)
        return {s.step_key: s.end_time - s.start_time for s in stats if s.end_time and s.start_time}

    rss_before = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    steps = ingest()
    inner, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM")
    figures = {}
    if job["republish"]:  # the same month again, over the published one
        figures["republish_step_seconds"] = ingest()[f"ingest_{spec.table}"]
        figures["republish_peak_rss"] = _status("VmHWM")
    loaded = {name: definitions.load_asset_value(key, partition_key=month) for name, key in keys.items()}
    report_result(
        {
            "tree": str(expected.parent),
            "step_seconds": steps[f"ingest_{spec.table}"],
            "steps": steps,
            "inner_seconds": inner,
            "inner_cpu_seconds": cpu,
            "startup_seconds": start - started,
            "step_peak_rss": peak,
            "rss_before_step": rss_before,
            "rows": {name: dataset.count_rows() for name, dataset in loaded.items()},
            "clean_trip_key_sum": pc.sum(loaded["clean"].to_table(columns=["trip_key"])["trip_key"]).as_py(),
            **figures,
        }
    )


def _status(field: str) -> int:
    """A VmRSS/VmHWM line of this process's /proc status, in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) * 1024


def _check_same_rows(runs: dict[str, list[dict]]) -> None:
    loaded = {
        (side, i): (r["rows"], r["clean_trip_key_sum"]) for side, rs in runs.items() for i, r in enumerate(rs)
    }
    if len({json.dumps(v, sort_keys=True) for v in loaded.values()}) != 1:
        raise RuntimeError(f"the sides loaded different rows: {loaded}")


def _figures(args, dataset: str, described: str, runs: dict[str, list[dict]]) -> dict:
    for r in (r for rs in runs.values() for r in rs):
        r["step_rss_growth"] = r["step_peak_rss"] - r["rss_before_step"]
    figures = _FIGURES + (("republish_step_seconds",) if args.republish else ())
    medians = {
        side: {figure: statistics.median(r[figure] for r in rs) for figure in figures}
        for side, rs in runs.items()
    }
    ratios = {figure: medians["iceberg"][figure] / medians["old"][figure] for figure in figures}
    # Each repetition's own ratio: the two sides ran one after the other, under the same load.
    paired = [
        i["step_seconds"] / o["step_seconds"] for i, o in zip(runs["iceberg"], runs["old"], strict=True)
    ]
    return {
        "benchmark": "lake_ingest",
        "dataset": dataset,
        "month": args.month,
        "source": described,
        "rows": runs["old"][0]["rows"],
        "repeats": args.repeats,
        "baseline": BASELINE,
        "baseline_commit": _commit(BASELINE),
        "head_commit": _commit("HEAD"),
        "machine": {
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": machine.platform(),
            "python": machine.python_version(),
            "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
        },
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
        "paired_step_ratios": paired,
        "paired_step_ratio_median": statistics.median(paired),
        "goal": f"step_seconds iceberg/old <= {GOAL_RATIO:g}",
        "goal_met": ratios["step_seconds"] <= GOAL_RATIO,
    }


def _commit(name: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", name], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _report(f: dict) -> None:
    m = f["medians"]
    rows = f["rows"]
    lines = [
        f"{f['source']}: raw {rows['raw']:,}, clean {rows['clean']:,}, rejected {rows['rejected']:,} rows "
        f"(the same on both sides); {f['repeats']} repetitions a side, alternating; "
        f"{f['machine']['cores']} cores, load average {', '.join(f'{x:.2f}' for x in f['machine']['load_average'])}",
        f"old = {f['baseline']} ({f['baseline_commit'][:10]}), iceberg = HEAD ({f['head_commit'][:10]})",
        "",
        f"{'median':<8}  {'step s':>7}  {'materialize s':>13}  {'its CPU s':>9}  {'process s':>9}  "
        f"{'start-up s':>10}  {'peak RSS MiB':>12}  {'step RSS growth MiB':>19}",
    ]
    for side in SIDES:
        lines.append(
            f"{side:<8}  {m[side]['step_seconds']:>7.2f}  {m[side]['inner_seconds']:>13.2f}  "
            f"{m[side]['inner_cpu_seconds']:>9.2f}  "
            f"{m[side]['seconds']:>9.2f}  {m[side]['startup_seconds']:>10.2f}  "
            f"{m[side]['step_peak_rss'] / 2**20:>12,.0f}  {m[side]['step_rss_growth'] / 2**20:>19,.0f}"
        )
    for side in SIDES:
        steps = ", ".join(f"{r['step_seconds']:.2f}" for r in f["runs"][side])
        lines.append(f"{side} step seconds, each repetition: {steps}")
    lines.append(
        "iceberg/old step, each repetition: "
        + ", ".join(f"{x:.2f}" for x in f["paired_step_ratios"])
        + f"; their median {f['paired_step_ratio_median']:.2f}"
    )
    if "republish_step_seconds" in m["old"]:
        lines.append(
            "republish step (the month again over the published one), median: "
            + ", ".join(f"{side} {m[side]['republish_step_seconds']:.2f} s" for side in SIDES)
            + f"; iceberg/old {f['ratios']['republish_step_seconds']:.2f}x"
        )
    lines += small_run_note(rows["raw"], "imports, Dagster run setup, catalog and table creation")
    lines += [
        f"figures written to {f['result_file']}",
        f"peak RSS iceberg/old: {f['ratios']['step_peak_rss']:.2f}x",
        f"process wall iceberg/old: {f['ratios']['seconds']:.2f}x",
        f"materialize CPU (every thread) iceberg/old: {f['ratios']['inner_cpu_seconds']:.2f}x",
        f"ingest step iceberg/old: {f['ratios']['step_seconds']:.2f}x "
        f"(goal <= {GOAL_RATIO:.2f}x: {'met' if f['goal_met'] else 'MISSED'})",
    ]
    print("\n".join(lines), flush=True)


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lake_ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_400_000, help="rows of the synthetic month")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions of each side")
    parser.add_argument("--dataset", default="yellow")
    parser.add_argument("--month", default="2021-01", help="YYYY-MM, a month of the course's CSV.gz release")
    parser.add_argument(
        "--sample-data",
        type=Path,
        default=SAMPLE_DATA,
        help="real TLC files laid out like the sources; the month is synthetic when it is not there",
    )
    parser.add_argument(
        "--republish",
        action="store_true",
        help="then ingest the month a second time in the same lake (a new version over the published one)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
