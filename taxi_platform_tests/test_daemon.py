"""The platform keeping itself current under the real Dagster daemon: a month published, republished and
dropped into the landing zone flows through raw, clean, Postgres and the warehouse with nobody clicking."""

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest
import yaml

from taxi_platform_tests.helpers import failed_runs
from taxi_platform_tests.source_server import SourceServer
from taxi_platform_tests.ui import group_alive

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GREEN = "releases/green/green_tripdata_{}.csv.gz"
KEYS = {layer: dg.AssetKey([layer, "green_trips"]) for layer in ("raw", "clean", "postgres", "warehouse")}
CLEAN_COUNTS = {"2020-10": 49262, "2020-11": 45868, "2020-12": 44228}


def write_instance(home: Path) -> None:
    """The project's dagster.yaml (its concurrency pools), with storage in the temporary home."""
    config = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    config["local_artifact_storage"]["config"]["base_dir"] = str(home)
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    config["compute_logs"]["config"]["base_dir"] = str(home / "logs")
    config["run_coordinator"] = {
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"dequeue_interval_seconds": 1},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "taxi_platform.definitions",
                            "working_directory": str(PROJECT),
                        }
                    }
                ]
            }
        )
    )


def materializations(instance, layer: str, month: str) -> list:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=KEYS[layer], asset_partitions=[month]), limit=100
    ).records


def row_count(record) -> int:
    return record.asset_materialization.metadata["dagster/row_count"].value


def wait_for(instance, what: str, condition, timeout: float = 150) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(
                f"after {timeout:.0f} s still waiting for {what}; failed runs:\n{failed_runs(instance) or 'none'}"
            )
        time.sleep(0.5)
    return time.monotonic() - start


def postgres_count(url: str, schema: str, month: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT count(*) FROM \"{schema}\".green_trips WHERE to_char(pickup_date, 'YYYY-MM') = %s",
            [month],
        ).fetchone()[0]


def test_published_republished_and_landed_months_flow_to_the_warehouse(
    sample_data, tmp_path, postgres_url, pg_schema
):
    home, data, published = tmp_path / "home", tmp_path / "data", tmp_path / "source"
    home.mkdir()
    write_instance(home)
    (published / GREEN.format("2020-10")).parent.mkdir(parents=True)
    shutil.copy(
        sample_data / GREEN.format("2020-10"), published / GREEN.format("2020-10")
    )  # green up to 2020-10

    with SourceServer(published) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "TAXI_RELEASES_URL": f"{server.url}/releases",
            "TAXI_TLC_URL": server.url,
            "TAXI_DATA_DIR": str(data),
            "TAXI_SENSOR_INTERVAL_SECONDS": "2",
            "TAXI_SOURCE_CHECKS_PER_TICK": "1000",  # every month each tick: 2020-11 is an old month
        }
        env.pop("TAXI_PROFILE", None), env.pop("TAXI_SOURCE", None)
        workspace = ["-w", str(home / "workspace.yaml")]
        subprocess.run(
            [BIN / "dagster", "sensor", "start", "green_source_sensor", *workspace],
            env=env,
            check=True,
            capture_output=True,
        )
        daemon = subprocess.Popen(
            [BIN / "dagster-daemon", "run", *workspace],
            env=env,
            cwd=tmp_path,
            stdout=open(tmp_path / "daemon.log", "wb"),  # noqa: SIM115 (the daemon outlives this block)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                wait_for(
                    instance,
                    "the first sync: 2020-10 in the warehouse",
                    lambda: materializations(instance, "warehouse", "2020-10"),
                )

                shutil.copy(sample_data / GREEN.format("2020-11"), published / GREEN.format("2020-11"))
                seconds = wait_for(
                    instance,
                    "2020-11 in the warehouse",
                    lambda: materializations(instance, "warehouse", "2020-11"),
                )
                print(f"\ngreen 2020-11: published -> warehouse updated in {seconds:.1f} s")
                (clean,) = materializations(instance, "clean", "2020-11")
                (stored,) = materializations(instance, "warehouse", "2020-11")
                wait_for(
                    instance, "postgres 2020-11", lambda: materializations(instance, "postgres", "2020-11")
                )
                assert row_count(clean) == row_count(stored) == CLEAN_COUNTS["2020-11"]
                assert postgres_count(postgres_url, pg_schema, "2020-11") == CLEAN_COUNTS["2020-11"]

                data_11 = gzip.decompress((published / GREEN.format("2020-11")).read_bytes())
                (published / GREEN.format("2020-11")).write_bytes(gzip.compress(data_11, mtime=0))
                seconds = wait_for(
                    instance,
                    "2020-11 republished, in the warehouse again",
                    lambda: all(len(materializations(instance, layer, "2020-11")) == 2 for layer in KEYS),
                )
                print(f"green 2020-11: republished -> warehouse updated in {seconds:.1f} s")
                time.sleep(8)  # several more ticks of every sensor: nothing runs again
                assert {
                    layer: len(materializations(instance, layer, "2020-11")) for layer in KEYS
                } == dict.fromkeys(KEYS, 2)
                assert postgres_count(postgres_url, pg_schema, "2020-11") == CLEAN_COUNTS["2020-11"]

                landing = data / "lake/landing"
                landing.mkdir(parents=True, exist_ok=True)
                shutil.copy(
                    sample_data / GREEN.format("2020-12"), landing / "green_tripdata_2020-12.csv.gz.part"
                )
                (landing / "green_tripdata_2020-12.csv.gz.part").rename(
                    landing / "green_tripdata_2020-12.csv.gz"
                )
                seconds = wait_for(
                    instance,
                    "the landed 2020-12 in the warehouse and moved",
                    lambda: (
                        materializations(instance, "warehouse", "2020-12")
                        and (landing / "processed/green_tripdata_2020-12.csv.gz").exists()
                    ),
                )
                print(f"green 2020-12: landed -> warehouse updated and file moved in {seconds:.1f} s")
                assert not (landing / "green_tripdata_2020-12.csv.gz").exists()
                (raw_12,) = materializations(instance, "raw", "2020-12")
                assert raw_12.asset_materialization.metadata["source_kind"].value == "landing"
                assert postgres_count(postgres_url, pg_schema, "2020-12") == CLEAN_COUNTS["2020-12"]
                assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        finally:
            daemon.send_signal(signal.SIGINT)
            try:
                daemon.wait(timeout=60)
            finally:
                if daemon.poll() is None:
                    os.killpg(daemon.pid, signal.SIGKILL)
    assert daemon.returncode is not None
    deadline = time.monotonic() + 20  # the daemon's code server and runs end with it
    while time.monotonic() < deadline and group_alive(daemon.pid):
        time.sleep(0.5)
    assert not group_alive(daemon.pid), "processes of the daemon outlived it"

    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT strftime(pickup_date, '%Y-%m'), count(*) FROM taxi.green_trips"
            " WHERE pickup_date >= DATE '2020-10-01' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert dict(rows) == CLEAN_COUNTS
