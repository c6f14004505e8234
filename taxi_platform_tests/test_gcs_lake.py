"""The lake on a bucket: the same Iceberg tables, commits and versions, on fake-gcs-server.

The data files are written with pyarrow's GcsFileSystem, the tables' metadata with pyiceberg over
gcsfs, both against the emulator as the tests start it; the bucket is inspected with the real
google-cloud-storage client.
"""

from datetime import date

import dagster as dg
import pyarrow as pa
import pytest

from taxi_platform.definitions import defs
from taxi_platform.lake.resource import Vacuumed
from taxi_platform.lake.tables import PublishConflict
from taxi_platform_tests.helpers import (
    course_counts,
    course_days,
    green_trip_keys,
    lake_files,
    materializations,
)
from taxi_platform_tests.test_lake import KEY, MONTHS, days, read, write
from taxi_platform_tests.test_warehouse import release

pytestmark = pytest.mark.emulators


def data_objects(gcs, under: str = "clean/trips") -> list[str]:
    """The data files in the bucket under the asset's table (its metadata left out)."""
    return sorted(
        name for name in gcs.objects(under) if name.endswith(".parquet") and "metadata/" not in name
    )


def test_a_month_rewritten_without_a_day_loses_that_day_only(gcs):
    lake = gcs.lake()
    write(lake, days(date(2020, 3, 1), date(2020, 3, 2), date(2020, 3, 31)), "2020-03")
    write(lake, days(date(2020, 4, 1)), "2020-04")
    write(lake, days(date(2020, 3, 2), date(2020, 3, 2)), "2020-03")
    assert lake_files(lake.lake, "clean/trips") == {"day=2020-03-02": 2, "day=2020-04-01": 1}
    assert read(lake, "2020-03").to_pydict() == {"n": [0, 1], "day": [date(2020, 3, 2)] * 2}
    assert read(lake, "2020-04").to_pydict() == {"n": [0], "day": [date(2020, 4, 1)]}
    # The replaced version's files stay for the retention: five data files in the bucket, three read.
    assert len(data_objects(gcs)) == 5


def test_an_empty_month_loads_back_empty(gcs):
    lake = gcs.lake()
    write(lake, days(date(2020, 3, 5)), "2020-03")
    write(lake, days(), "2020-03")
    loaded = read(lake, "2020-03")
    assert loaded.num_rows == 0 and loaded.column_names == ["n", "day"]


def test_rows_outside_the_partition_are_refused_and_nothing_is_written(gcs):
    lake = gcs.lake()
    with pytest.raises(
        ValueError, match=r"partition 2020-03 holds rows with day outside \[2020-03-01, 2020-04-01\)"
    ):
        write(lake, days(date(2020, 3, 5), date(2020, 4, 1)), "2020-03")
    assert gcs.objects() == {}


def test_a_range_is_written_in_one_commit_and_loaded_as_a_dict_of_months(gcs):
    lake = gcs.lake()
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    tables = {"2020-03": days(date(2020, 3, 9)), "2020-04": days(date(2020, 4, 9), date(2020, 4, 10))}
    write(lake, tables, key_range=months)
    assert [name.split("/")[1] for name in data_objects(gcs)] == [
        "day=2020-03-09",
        "day=2020-04-09",
        "day=2020-04-10",
    ]
    assert {m: t.num_rows for m, t in read(lake, key_range=months).items()} == {"2020-03": 1, "2020-04": 2}
    (version,) = lake.lake.versions(KEY)
    assert version.partitions == ("2020-03", "2020-04")


def test_a_month_never_written_is_a_clear_error(gcs):
    with pytest.raises(FileNotFoundError, match="no lake table here; is it materialized"):
        read(gcs.lake(), "2020-05")


def test_two_writers_of_one_month_never_both_publish(gcs):
    lake = gcs.lake()
    write(lake, days(date(2020, 3, 9)), partition="2020-03")
    first, second = (lake.lake.stage(KEY, MONTHS, "day") for _ in range(2))
    first.write("2020-03", days(date(2020, 3, 1)))
    second.write("2020-03", days(date(2020, 3, 2), date(2020, 3, 2)))
    lake.lake.publish(KEY, first, ["2020-03"], "first-run")
    with pytest.raises(PublishConflict, match="partitions 2020-03 were published by another run"):
        lake.lake.publish(KEY, second, ["2020-03"], "second-run")
    second.discard()
    assert read(lake, "2020-03").to_pydict() == {"n": [0], "day": [date(2020, 3, 1)]}
    assert len(data_objects(gcs)) == 2  # the first version's file and the winner's


def test_every_version_is_readable_and_vacuum_keeps_the_current_one(gcs):
    lake = gcs.lake()
    for day in (1, 2, 3):
        write(lake, days(*[date(2020, 3, day)] * day), partition="2020-03")
    versions = lake.lake.versions(KEY, "2020-03")
    assert [
        lake.lake.read(KEY, "2020-03", MONTHS, "day", version=v.version).count_rows() for v in versions
    ] == [
        3,
        2,
        1,
    ]
    assert gcs.lake(retention_days=1).lake.vacuum(KEY) == Vacuumed([], [])
    removed = gcs.lake(retention_days=0).lake.vacuum(KEY)
    assert len(removed.data_files) == 2 and len(data_objects(gcs)) == 1
    assert removed.metadata_files  # the expired versions' manifest lists and manifests
    assert read(lake, "2020-03").to_pydict() == {"n": [0, 1, 2], "day": [date(2020, 3, 3)] * 3}


def test_a_keyed_month_and_an_unpartitioned_table_with_an_emulator_host_without_scheme(gcs):
    lake = gcs.lake(gcs_endpoint=gcs.emulator.url.removeprefix("http://"))
    for month, n in (("2020-03", 2), ("2020-03", 3), ("2020-04", 1)):
        with dg.build_output_context(
            asset_key=KEY, partition_key=month, asset_partitions_def=MONTHS
        ) as context:
            lake.handle_output(context, pa.table({"n": list(range(n))}))
    assert lake_files(lake.lake, "clean/trips") == {"2020-03": 3, "2020-04": 1}
    unpartitioned = dg.AssetKey(["reference", "zones"])
    with (
        dg.build_output_context(asset_key=unpartitioned) as upstream,
        dg.build_input_context(asset_key=unpartitioned, upstream_output=upstream) as reading,
    ):
        lake.handle_output(upstream, pa.table({"zone": ["a"]}))
        loaded = lake.load_input(reading)
    assert loaded.to_table().to_pydict() == {"zone": ["a"]} and data_objects(gcs, "reference/zones")


def test_a_release_month_lands_raw_and_clean_in_the_bucket(taxi_env, published, gcs):
    counts = course_counts(release(published, "2020-10"), "2020-10")
    by_day = course_days(release(published, "2020-10"), "2020-10")
    definitions = defs()
    lake = gcs.lake()
    result = dg.materialize(
        list(definitions.assets),
        selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in green_trip_keys())),
        resources={**definitions.resources, "lake": lake.lake, "lake_io_manager": lake},
        partition_key="2020-10",
    )
    assert all(c.passed for c in result.get_asset_check_evaluations())
    assert materializations(result)[("clean/green_trips", "2020-10")]["dagster/row_count"] == counts["clean"]
    assert lake_files(lake.lake, "raw/green_trips") == {"2020-10": counts["raw"]}
    assert lake_files(lake.lake, "clean/green_trips") == {
        f"pickup_date={day}": n for day, n in by_day.items()
    }
    assert lake_files(lake.lake, "clean/green_trips_rejected") == {"2020-10": counts["raw"] - counts["clean"]}
    assert not (taxi_env / "lake").exists()  # nothing of the lake went to the local data folder
