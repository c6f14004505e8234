"""The lake on its own: Iceberg tables in a real folder, partition-exact replacement in one commit,
staged data invisible until published, versions kept and vacuumed."""

import threading
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from taxi_platform.io_managers import PARTITION_COLUMN, lake_metadata_file
from taxi_platform.io_managers.arrow_data import BATCH_ROWS, prefetched
from taxi_platform.lake import staging as staging_module
from taxi_platform.lake.lake_io_manager import LakeIOManager
from taxi_platform.lake.resource import Lake, Vacuumed, version_of
from taxi_platform.lake.staging import BUFFERED_ROWS
from taxi_platform.lake.tables import PublishConflict
from taxi_platform_tests.helpers import lake_files

pytestmark = pytest.mark.fast

MONTHS = dg.MonthlyPartitionsDefinition(start_date="2020-01", fmt="%Y-%m")
BY_DAY = {PARTITION_COLUMN: "day"}
KEY = dg.AssetKey(["clean", "trips"])


def io_manager(root, **options) -> LakeIOManager:
    return LakeIOManager(lake=Lake(root=str(root), **options))


def days(*days: date) -> pa.Table:
    return pa.table({"n": pa.array(range(len(days)), pa.int64()), "day": pa.array(days, pa.date32())})


def write(lake, obj, partition=None, key_range=None):
    with dg.build_output_context(
        asset_key=KEY,
        partition_key=partition,
        asset_partitions_def=MONTHS,
        asset_partition_key_range=key_range,
        definition_metadata=BY_DAY,
    ) as context:
        lake.handle_output(context, obj)


def load(lake, partition=None, key_range=None):
    with (
        dg.build_output_context(asset_key=KEY, definition_metadata=BY_DAY) as upstream,
        dg.build_input_context(
            asset_key=KEY,
            partition_key=partition,
            asset_partitions_def=MONTHS,
            asset_partition_key_range=key_range,
            upstream_output=upstream,
        ) as context,
    ):
        return lake.load_input(context)


def read(lake, partition=None, key_range=None):
    loaded = load(lake, partition, key_range)  # datasets, read here in full
    if isinstance(loaded, dict):
        return {month: dataset.to_table() for month, dataset in loaded.items()}
    return loaded.to_table()


def stored_days(root) -> dict[str, int]:
    return lake_files(Lake(root=str(root)), "clean/trips")


def test_a_month_rewritten_without_a_day_loses_that_day_only(tmp_path):
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 1), date(2020, 3, 2), date(2020, 3, 31)), "2020-03")
    write(lake, days(date(2020, 4, 1)), "2020-04")
    write(lake, days(date(2020, 3, 2), date(2020, 3, 2)), "2020-03")
    assert stored_days(tmp_path) == {"day=2020-03-02": 2, "day=2020-04-01": 1}
    assert read(lake, "2020-03").to_pydict() == {"n": [0, 1], "day": [date(2020, 3, 2)] * 2}


def test_an_empty_month_loads_back_empty(tmp_path):
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 5)), "2020-03")
    write(lake, days(), "2020-03")
    loaded = read(lake, "2020-03")
    assert loaded.num_rows == 0 and loaded.column_names == ["n", "day"]


def test_rows_outside_the_partition_are_refused_and_nothing_is_written(tmp_path):
    lake = io_manager(tmp_path)
    with pytest.raises(
        ValueError, match=r"partition 2020-03 holds rows with day outside \[2020-03-01, 2020-04-01\)"
    ):
        write(lake, days(date(2020, 3, 5), date(2020, 4, 1)), "2020-03")
    assert not list((tmp_path / "clean").rglob("*.parquet"))


def test_a_range_is_written_in_one_commit_and_loaded_as_a_dict_of_months(tmp_path):
    lake = io_manager(tmp_path)
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    tables = {"2020-03": days(date(2020, 3, 9)), "2020-04": days(date(2020, 4, 9), date(2020, 4, 10))}
    write(lake, tables, key_range=months)
    assert {m: t.num_rows for m, t in read(lake, key_range=months).items()} == {"2020-03": 1, "2020-04": 2}
    (version,) = lake.lake.versions(KEY)
    assert version.partitions == ("2020-03", "2020-04")
    with pytest.raises(ValueError, match=r"must output a dict with exactly those keys, got \['2020-03'\]"):
        write(lake, {"2020-03": tables["2020-03"]}, key_range=months)


def test_a_month_never_written_is_a_clear_error(tmp_path):
    lake = io_manager(tmp_path)
    with pytest.raises(FileNotFoundError, match="no lake table here; is it materialized"):
        read(lake, "2020-05")
    write(lake, days(date(2020, 3, 5)), "2020-03")
    with pytest.raises(FileNotFoundError, match="no files for partition 2020-05; is it materialized"):
        read(lake, "2020-05")


def test_a_stream_is_written_batch_by_batch_and_loads_back_as_a_lazy_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(staging_module, "BUFFERED_ROWS", 2)  # write row groups after every batch
    lake = io_manager(tmp_path)
    batches = [days(date(2020, 3, d), date(2020, 3, 1)).to_batches()[0] for d in (3, 2, 1)]
    write(lake, pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches)), "2020-03")
    assert stored_days(tmp_path) == {"day=2020-03-01": 4, "day=2020-03-02": 1, "day=2020-03-03": 1}
    loaded = load(lake, "2020-03")
    first_day = next(f for f in loaded.files if "day=2020-03-01" in f)
    assert pq.read_metadata(first_day).num_row_groups == 3
    assert isinstance(loaded, ds.Dataset) and loaded.count_rows() == 6
    assert version_of(loaded) == lake.lake.versions(KEY)[0].version
    assert sorted(loaded.to_table(columns=["day"])["day"].to_pylist()) == [date(2020, 3, 1)] * 4 + [
        date(2020, 3, 2),
        date(2020, 3, 3),
    ]


def on_disk(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


def test_a_stream_that_breaks_midway_leaves_the_stored_month_whole_and_nothing_staged(tmp_path, monkeypatch):
    monkeypatch.setattr(staging_module, "BUFFERED_ROWS", 1)
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 5), date(2020, 3, 6)), "2020-03")
    before, files = read(lake, "2020-03"), on_disk(tmp_path)

    def breaking():
        yield days(date(2020, 3, 1), date(2020, 3, 7)).to_batches()[0]
        raise OSError("connection reset while reading the source")

    with pytest.raises(OSError, match="connection reset"):
        write(lake, pa.RecordBatchReader.from_batches(days().schema, breaking()), "2020-03")
    assert read(lake, "2020-03").equals(before)
    assert on_disk(tmp_path) == files


def test_prefetching_stops_with_its_consumer_and_hands_over_the_producers_error():
    def numbers(fail_at=None):
        for n in range(10):
            if n == fail_at:
                raise OSError(f"unreadable batch {n}")
            yield pa.record_batch({"n": [n]})

    schema = pa.schema([("n", pa.int64())])
    taken = prefetched(pa.RecordBatchReader.from_batches(schema, numbers()), depth=1)
    assert next(taken)["n"][0].as_py() == 0
    closing = threading.Thread(target=taken.close)  # the producer waits on a full handoff
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive()

    failing = prefetched(pa.RecordBatchReader.from_batches(schema, numbers(fail_at=3)))
    seen = []
    with pytest.raises(OSError, match="unreadable batch 3"):
        for batch in failing:
            seen.append(batch["n"][0].as_py())
    assert seen == [0, 1, 2]


def test_a_range_is_published_only_when_every_month_is_complete(tmp_path):
    lake = io_manager(tmp_path)
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    write(lake, {"2020-03": days(date(2020, 3, 9)), "2020-04": days(date(2020, 4, 9))}, key_range=months)
    before = read(lake, key_range=months)

    def april():
        yield days(date(2020, 4, 1)).to_batches()[0]
        raise OSError("connection reset in April")

    march = days(date(2020, 3, 1), date(2020, 3, 2))
    with pytest.raises(OSError, match="connection reset in April"):
        write(
            lake,
            {"2020-03": march, "2020-04": pa.RecordBatchReader.from_batches(march.schema, april())},
            key_range=months,
        )
    assert read(lake, key_range=months) == before


def test_staged_data_is_invisible_until_published(tmp_path):
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 9)), partition="2020-03")
    staged = lake.lake.stage(KEY, MONTHS, "day")
    staged.write("2020-03", days(date(2020, 3, 1), date(2020, 3, 2)))
    assert staged.dataset("2020-03").count_rows() == 2
    assert lake.lake.published_rows(KEY, "2020-03", MONTHS, "day") == 1
    assert stored_days(tmp_path) == {"day=2020-03-09": 1}
    assert read(lake, "2020-03")["n"].to_pylist() == [0]
    with pytest.raises(ValueError, match=r"not partitions \['2020-04'\]"):
        lake.lake.publish(KEY, staged, ["2020-04"], "a-run")
    lake.lake.publish(KEY, staged, ["2020-03"], "a-run")
    assert lake.lake.published_rows(KEY, "2020-03", MONTHS, "day") == 2
    assert lake.lake.published_rows(KEY, "2020-04", MONTHS, "day") is None


def test_a_discarded_staged_write_leaves_no_file(tmp_path):
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 9)), partition="2020-03")
    files = on_disk(tmp_path)
    staged = lake.lake.stage(KEY, MONTHS, "day")
    staged.write("2020-03", days(date(2020, 3, 1), date(2020, 3, 2)))
    assert len(on_disk(tmp_path)) == len(files) + 2
    staged.discard()
    assert on_disk(tmp_path) == files


def test_two_writers_of_one_month_never_both_publish(tmp_path):
    """Both staged against the same version; the second commit finds the month replaced and fails,
    naming the conflict, and the month is exactly the first writer's."""
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 9)), partition="2020-03")
    first, second = (lake.lake.stage(KEY, MONTHS, "day") for _ in range(2))
    first.write("2020-03", days(date(2020, 3, 1)))
    second.write("2020-03", days(date(2020, 3, 2), date(2020, 3, 2)))
    lake.lake.publish(KEY, first, ["2020-03"], "first-run")
    with pytest.raises(
        PublishConflict,
        match="partitions 2020-03 were published by another run while run second-run wrote them",
    ):
        lake.lake.publish(KEY, second, ["2020-03"], "second-run")
    assert read(lake, "2020-03").to_pydict() == {"n": [0], "day": [date(2020, 3, 1)]}
    (latest, *_) = lake.lake.versions(KEY, "2020-03")
    assert latest.run_id == "first-run"


def test_every_version_of_a_month_is_readable_and_vacuum_keeps_what_retention_allows(tmp_path):
    lake = io_manager(tmp_path)
    for day in (1, 2, 3):
        write(lake, days(*[date(2020, 3, day)] * day), partition="2020-03")
    versions = lake.lake.versions(KEY, "2020-03")
    assert len(versions) == 3 and sorted(v.version for v in versions) == [v.version for v in versions][::-1]
    assert [
        lake.lake.read(KEY, "2020-03", MONTHS, "day", version=v.version).count_rows() for v in versions
    ] == [3, 2, 1]
    assert [v.details["2020-03"]["rows"] for v in versions] == [3, 2, 1]
    kept = io_manager(tmp_path, retention_days=1)
    assert kept.lake.vacuum(KEY) == Vacuumed([], [])  # every replaced file is younger than a day
    assert kept.lake.read(KEY, "2020-03", MONTHS, "day", version=1).count_rows() == 1
    gone = io_manager(tmp_path, retention_days=0)
    removed = gone.lake.vacuum(KEY)
    assert len(removed.data_files) == 2  # the files of versions 1 and 2
    assert read(gone, "2020-03").to_pydict() == {"n": [0, 1, 2], "day": [date(2020, 3, 3)] * 3}
    # The expired versions' manifest lists and manifests went; what the current metadata names stays.
    table = gone.lake.table(KEY)
    metadata = Path(table.location.removeprefix("file://"), "metadata")
    left = {str(path) for path in metadata.iterdir() if path.name != "version-hint.text"}
    assert removed.metadata_files and not left & set(removed.metadata_files)
    assert left == {name.removeprefix("file://") for name in table.metadata_files()}


def small_batches(count: int, rows: int, *days: date) -> pa.RecordBatchReader:
    """`count` batches of `rows` rows, each batch's rows spread evenly over `days`."""
    schema = pa.schema([("n", pa.int64()), ("day", pa.date32())])
    spread = pa.array([days[i % len(days)] for i in range(rows)], pa.date32())
    batches = (
        pa.record_batch([pa.array(range(rows), pa.int64()), spread], schema=schema) for _ in range(count)
    )
    return pa.RecordBatchReader.from_batches(schema, batches)


def row_groups(file) -> list[int]:
    metadata = pq.read_metadata(file)
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


@pytest.mark.parametrize(
    ("batches", "rows", "groups"),
    [(300, 1_000, [132_000, 132_000, 36_000]), (4, 65_536, [131_072, 131_072]), (0, 1_000, [])],
    ids=["small-batches", "exact-multiple", "no-rows"],
)
def test_a_file_of_small_batches_is_written_in_row_groups_of_at_least_batch_rows(
    tmp_path, batches, rows, groups
):
    """Rejected rows come a few thousand at a time: they are gathered into row groups of 131,072 rows or
    more (a row group is flushed with the batch that reaches BATCH_ROWS), the rest in a last one. The
    table's partition key column is stored, never loaded."""
    assert BATCH_ROWS == 131_072
    lake = io_manager(tmp_path)
    key = dg.AssetKey(["clean", "rejected"])
    with dg.build_output_context(
        asset_key=key, partition_key="2020-03", asset_partitions_def=MONTHS
    ) as context:
        lake.handle_output(
            context, small_batches(batches, rows, date(2020, 3, 1)).read_all().select(["n"]).to_reader()
        )
    loaded = lake.lake.read(key, "2020-03", MONTHS)
    assert loaded.count_rows() == batches * rows and loaded.schema.names == ["n"]
    if batches:
        (file,) = loaded.files
        assert row_groups(file) == groups
    else:  # a partition without rows has no file, and loads back empty
        assert groups == [] and isinstance(loaded, ds.InMemoryDataset)


def test_a_partition_buffers_its_days_and_writes_each_as_a_row_group_at_buffered_rows(tmp_path):
    """Rows are held by day until BUFFERED_ROWS (4 x 131,072) are buffered in all, then each day's rows
    go to its file as one row group; what is left goes at the end."""
    assert BUFFERED_ROWS == 524_288
    lake = io_manager(tmp_path)
    write(lake, small_batches(600, 1_000, date(2020, 3, 1), date(2020, 3, 2)), "2020-03")
    # The 525th batch brings 525,000 rows: 262,500 a day; the last 75 batches, 37,500 a day.
    files = sorted(lake.lake.read(KEY, "2020-03", MONTHS, "day").files)
    assert [f.split("/")[-2] for f in files] == ["day=2020-03-01", "day=2020-03-02"]
    assert [row_groups(file) for file in files] == [[262_500, 37_500]] * 2
    assert read(lake, "2020-03").num_rows == 600_000


def test_an_unpartitioned_asset_is_one_table_replaced_whole_and_one_never_written_is_a_clear_error(tmp_path):
    lake = io_manager(tmp_path)
    key = dg.AssetKey(["reference", "zones"])
    with (
        dg.build_output_context(asset_key=key) as upstream,
        dg.build_input_context(asset_key=key, upstream_output=upstream) as reading,
    ):
        with pytest.raises(
            FileNotFoundError, match=r"reference/zones: no lake table here; is it materialized"
        ):
            lake.load_input(reading)
        for ids in ([1, 2], [3]):
            with dg.build_output_context(asset_key=key) as writing:
                lake.handle_output(writing, pa.table({"id": ids}))
        assert lake.load_input(reading).to_table().to_pydict() == {"id": [3]}


def test_a_read_names_the_table_metadata_it_was_read_at(tmp_path):
    """What a warehouse's `<table>_lake` table is defined over: the metadata file of the version read;
    of a run's months read at different times, the newest."""
    lake = io_manager(tmp_path)
    write(lake, days(date(2020, 3, 1)), partition="2020-03")
    march = load(lake, "2020-03")
    write(lake, days(date(2020, 4, 1)), partition="2020-04")
    april = load(lake, "2020-04")
    current = lake.lake.table(KEY).load().metadata_location
    assert lake_metadata_file(april) == current
    assert (
        lake_metadata_file(march) != current
        and Path(lake_metadata_file(march).removeprefix("file:")).exists()
    )
    assert lake_metadata_file({"2020-03": march, "2020-04": april}) == current
    assert lake_metadata_file(days(date(2020, 3, 1))) is None  # not read from the lake
