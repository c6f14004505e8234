"""The lake IO manager on a bucket: the same layout and partition-exact replacement, on fake-gcs-server.

The bucket is inspected with the real google-cloud-storage client: object names are asserted exactly.
"""

from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.definitions import defs
from taxi_platform.io_managers import lake as lake_module
from taxi_platform.io_managers.lake import LakeIOManager
from taxi_platform_tests.helpers import course_counts, course_days, green_trip_keys, materializations
from taxi_platform_tests.test_lake import KEY, MONTHS, days, read, write
from taxi_platform_tests.test_warehouse import release

pytestmark = pytest.mark.emulators


def rows(gcs, name: str) -> int:
    return pq.read_metadata(pa.BufferReader(gcs.read(name))).num_rows


def test_a_month_rewritten_without_a_day_loses_that_day_only(gcs):
    lake = gcs.lake()
    write(lake, days(date(2020, 3, 1), date(2020, 3, 2), date(2020, 3, 31)), "2020-03")
    write(lake, days(date(2020, 4, 1)), "2020-04")
    assert sorted(gcs.objects("clean/trips")) == [
        "day=2020-03-01/2020-03.parquet",
        "day=2020-03-02/2020-03.parquet",
        "day=2020-03-31/2020-03.parquet",
        "day=2020-04-01/2020-04.parquet",
    ]
    write(lake, days(date(2020, 3, 2), date(2020, 3, 2)), "2020-03")
    assert sorted(gcs.objects()) == [
        "clean/trips/day=2020-03-02/2020-03.parquet",
        "clean/trips/day=2020-04-01/2020-04.parquet",
    ]
    assert read(lake, "2020-03").to_pydict() == {"n": [0, 1], "day": [date(2020, 3, 2)] * 2}
    assert read(lake, "2020-04").to_pydict() == {"n": [0], "day": [date(2020, 4, 1)]}


def test_stale_objects_of_the_month_are_removed_and_other_months_kept(gcs):
    bucket = gcs.emulator.client.bucket(gcs.emulator.bucket)
    stale = {
        "clean/trips/day=2020-03-13/part-0.parquet": b"left by an older writer",
        "clean/trips/day=2020-03-02/2020-03.parquet.0123abcd.tmp": b"left by a crashed write",
        "clean/trips/day=2020-03-02/2020-03.parquet": b"the old file of the month",
    }
    neighbour = "clean/trips/day=2020-04-02/2020-04.parquet"
    for name, data in {**stale, neighbour: b"another month's object"}.items():
        bucket.blob(f"{gcs.prefix}/{name}").upload_from_string(data)

    write(gcs.lake(), days(date(2020, 3, 2), date(2020, 3, 5)), "2020-03")

    assert sorted(gcs.objects()) == [
        "clean/trips/day=2020-03-02/2020-03.parquet",
        "clean/trips/day=2020-03-05/2020-03.parquet",
        neighbour,
    ]
    assert gcs.read(neighbour) == b"another month's object"
    assert rows(gcs, "clean/trips/day=2020-03-02/2020-03.parquet") == 1


def test_an_empty_month_loads_back_empty(gcs):
    lake = gcs.lake()
    write(lake, days(date(2020, 3, 5)), "2020-03")
    write(lake, days(), "2020-03")
    assert gcs.objects().keys() == {"clean/trips/day=2020-03-01/2020-03.parquet"}
    loaded = read(lake, "2020-03")
    assert loaded.num_rows == 0 and loaded.column_names == ["n", "day"]


def test_rows_outside_the_partition_are_refused_and_nothing_is_written(gcs):
    lake = gcs.lake()
    with pytest.raises(
        ValueError, match=r"partition 2020-03 holds rows with day outside \[2020-03-01, 2020-04-01\)"
    ):
        write(lake, days(date(2020, 3, 5), date(2020, 4, 1)), "2020-03")
    assert gcs.objects() == {}


def test_a_range_is_written_and_loaded_as_a_dict_of_months(gcs):
    lake = gcs.lake()
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    tables = {"2020-03": days(date(2020, 3, 9)), "2020-04": days(date(2020, 4, 9), date(2020, 4, 10))}
    write(lake, tables, key_range=months)
    assert sorted(gcs.objects()) == [
        "clean/trips/day=2020-03-09/2020-03.parquet",
        "clean/trips/day=2020-04-09/2020-04.parquet",
        "clean/trips/day=2020-04-10/2020-04.parquet",
    ]
    assert {m: t.num_rows for m, t in read(lake, key_range=months).items()} == {"2020-03": 1, "2020-04": 2}
    with pytest.raises(ValueError, match=r"must output a dict with exactly those keys, got \['2020-03'\]"):
        write(lake, {"2020-03": tables["2020-03"]}, key_range=months)


def test_a_month_never_written_is_a_clear_error(gcs):
    with pytest.raises(FileNotFoundError, match="no files for partition 2020-05; is it materialized"):
        read(gcs.lake(), "2020-05")


def test_files_without_day_directories_and_an_emulator_host_without_scheme(gcs, monkeypatch):
    lake = LakeIOManager(root=gcs.root, gcs_endpoint=gcs.emulator.url.removeprefix("http://"))
    # A killed run's staging area; swept by the next write once old enough (here: at once).
    killed_write = f"{gcs.prefix}/_staging/killed-run/0123abcd/clean/trips/2020-03.parquet"
    gcs.emulator.client.bucket(gcs.emulator.bucket).blob(killed_write).upload_from_string(b"half a file")
    monkeypatch.setattr(lake_module, "STAGING_MAX_AGE", timedelta(minutes=-1))
    for month, n in (("2020-03", 2), ("2020-03", 3), ("2020-04", 1)):
        with dg.build_output_context(
            asset_key=KEY, partition_key=month, asset_partitions_def=MONTHS
        ) as context:
            lake.handle_output(context, pa.table({"n": list(range(n))}))
    assert sorted(gcs.objects()) == ["clean/trips/2020-03.parquet", "clean/trips/2020-04.parquet"]
    assert rows(gcs, "clean/trips/2020-03.parquet") == 3
    unpartitioned = dg.AssetKey(["reference", "zones"])
    with dg.build_output_context(asset_key=unpartitioned) as context:
        lake.handle_output(context, pa.table({"zone": ["a"]}))
    with dg.build_input_context(asset_key=unpartitioned) as context:
        loaded = lake.load_input(context)
    assert loaded.to_table().to_pydict() == {"zone": ["a"]} and "reference/zones.parquet" in gcs.objects()


def test_a_release_month_lands_raw_and_clean_in_the_bucket(taxi_env, published, gcs):
    counts = course_counts(release(published, "2020-10"), "2020-10")
    by_day = course_days(release(published, "2020-10"), "2020-10")
    definitions = defs()
    result = dg.materialize(
        list(definitions.assets),
        selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in green_trip_keys())),
        resources={**definitions.resources, "lake_io_manager": gcs.lake()},
        partition_key="2020-10",
    )
    assert all(c.passed for c in result.get_asset_check_evaluations())
    assert materializations(result)[("clean/green_trips", "2020-10")]["dagster/row_count"] == counts["clean"]

    assert gcs.objects("raw/green_trips").keys() == {"2020-10.parquet"}
    assert rows(gcs, "raw/green_trips/2020-10.parquet") == counts["raw"]
    stored = {name: rows(gcs, f"clean/green_trips/{name}") for name in gcs.objects("clean/green_trips")}
    assert stored == {f"pickup_date={day}/2020-10.parquet": n for day, n in by_day.items()}
    assert gcs.objects("clean/green_trips_rejected").keys() == {"2020-10.parquet"}
    assert rows(gcs, "clean/green_trips_rejected/2020-10.parquet") == counts["raw"] - counts["clean"]
    assert not (taxi_env / "lake").exists()  # nothing of the lake went to the local data folder
