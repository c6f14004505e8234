"""A step whose run ended meanwhile publishes nothing. On Celery a terminated run's steps go on in their
workers (dagster-celery revokes their tasks without terminating them); a run that run monitoring or the
UI marked ended is the same to the step. Here the run is marked canceled while its ingest step waits out
a source outage, in process, on the local lake."""

import threading

import dagster as dg
import pytest

from taxi_platform_tests.helpers import (
    failure_message,
    lake_files,
    materialize_with,
    retries,
    unpublished_files,
)
from taxi_platform_tests.ui import wait_for

pytestmark = [pytest.mark.faults]
OCTOBER = "/releases/green/green_tripdata_2020-10.csv.gz"
INGEST = ("raw/green_trips", "clean/green_trips", "clean/green_trips_rejected")


def test_a_step_whose_run_was_terminated_meanwhile_publishes_nothing(taxi_env, source_server, tmp_path):
    source_server.outage(OCTOBER, seconds=6)  # the step retries its download meanwhile
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "home")) as instance:

        def terminate():
            wait_for("the download", lambda: ("GET", OCTOBER) in source_server.requests, timeout=60)
            (run,) = instance.get_runs()
            instance.report_run_canceled(run, "terminated")

        terminating = threading.Thread(target=terminate)
        terminating.start()
        result = materialize_with(instance, *INGEST, partition="2020-10", raise_on_error=False)
        terminating.join()
    assert not result.success
    # The first output's publish is refused, and not retried: the step fails there.
    assert f"raw/green_trips 2020-10 not published: run {result.run_id} is CANCELED" in failure_message(
        result
    )
    assert not retries(result)
    assert unpublished_files(taxi_env, "raw/green_trips") == []  # what it staged, removed
    for key in INGEST:  # nothing published; the later outputs' staged files are invisible (the vacuum's)
        assert lake_files(taxi_env, key) == {}
