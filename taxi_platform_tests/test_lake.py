"""The lake IO manager on its own: partition-exact replacement in a real folder."""

import os
import threading
from datetime import date, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers import lake as lake_module
from taxi_platform.io_managers.arrow_data import BATCH_ROWS, prefetched
from taxi_platform.io_managers.lake import BUFFERED_ROWS, STAGING_MAX_AGE, LakeIOManager

pytestmark = pytest.mark.fast

MONTHS = dg.MonthlyPartitionsDefinition(start_date="2020-01", fmt="%Y-%m")
BY_DAY = {PARTITION_COLUMN: "day"}
KEY = dg.AssetKey(["clean", "trips"])


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


def read(lake, partition=None, key_range=None):
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
        loaded = lake.load_input(context)  # datasets, read here in full
    if isinstance(loaded, dict):
        return {month: dataset.to_table() for month, dataset in loaded.items()}
    return loaded.to_table()


def stored_days(root) -> list[str]:
    return sorted(
        str(p.relative_to(root / "clean/trips")) for p in (root / "clean/trips").rglob("*") if p.is_file()
    )


def test_a_month_rewritten_without_a_day_loses_that_day_only(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    write(lake, days(date(2020, 3, 1), date(2020, 3, 2), date(2020, 3, 31)), "2020-03")
    write(lake, days(date(2020, 4, 1)), "2020-04")
    write(lake, days(date(2020, 3, 2), date(2020, 3, 2)), "2020-03")
    assert stored_days(tmp_path) == ["day=2020-03-02/2020-03.parquet", "day=2020-04-01/2020-04.parquet"]
    assert read(lake, "2020-03").to_pydict() == {"n": [0, 1], "day": [date(2020, 3, 2)] * 2}


def test_an_empty_month_loads_back_empty(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    write(lake, days(date(2020, 3, 5)), "2020-03")
    write(lake, days(), "2020-03")
    loaded = read(lake, "2020-03")
    assert loaded.num_rows == 0 and loaded.column_names == ["n", "day"]


def test_rows_outside_the_partition_are_refused_and_nothing_is_written(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    with pytest.raises(
        ValueError, match=r"partition 2020-03 holds rows with day outside \[2020-03-01, 2020-04-01\)"
    ):
        write(lake, days(date(2020, 3, 5), date(2020, 4, 1)), "2020-03")
    assert not (tmp_path / "clean").exists()


def test_a_range_is_written_and_loaded_as_a_dict_of_months(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    tables = {"2020-03": days(date(2020, 3, 9)), "2020-04": days(date(2020, 4, 9), date(2020, 4, 10))}
    write(lake, tables, key_range=months)
    assert {m: t.num_rows for m, t in read(lake, key_range=months).items()} == {"2020-03": 1, "2020-04": 2}
    with pytest.raises(ValueError, match=r"must output a dict with exactly those keys, got \['2020-03'\]"):
        write(lake, {"2020-03": tables["2020-03"]}, key_range=months)


def test_a_month_never_written_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files for partition 2020-05; is it materialized"):
        read(LakeIOManager(root=str(tmp_path)), "2020-05")


def test_a_stream_is_written_batch_by_batch_and_loads_back_as_a_lazy_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(lake_module, "BUFFERED_ROWS", 2)  # write row groups after every batch
    lake = LakeIOManager(root=str(tmp_path))
    batches = [days(date(2020, 3, d), date(2020, 3, 1)).to_batches()[0] for d in (3, 2, 1)]
    write(lake, pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches)), "2020-03")
    assert stored_days(tmp_path) == [f"day=2020-03-0{d}/2020-03.parquet" for d in (1, 2, 3)]
    assert pq.read_metadata(tmp_path / "clean/trips/day=2020-03-01/2020-03.parquet").num_row_groups == 3
    with (
        dg.build_output_context(asset_key=KEY, definition_metadata=BY_DAY) as upstream,
        dg.build_input_context(
            asset_key=KEY, partition_key="2020-03", asset_partitions_def=MONTHS, upstream_output=upstream
        ) as context,
    ):
        loaded = lake.load_input(context)
    assert isinstance(loaded, ds.Dataset) and loaded.count_rows() == 6
    assert sorted(loaded.to_table(columns=["day"])["day"].to_pylist()) == [date(2020, 3, 1)] * 4 + [
        date(2020, 3, 2),
        date(2020, 3, 3),
    ]


def test_a_stream_that_breaks_midway_leaves_the_stored_month_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(lake_module, "BUFFERED_ROWS", 1)
    lake = LakeIOManager(root=str(tmp_path))
    write(lake, days(date(2020, 3, 5), date(2020, 3, 6)), "2020-03")
    before = {day: (tmp_path / "clean/trips" / day).read_bytes() for day in stored_days(tmp_path)}

    def breaking():
        yield days(date(2020, 3, 1), date(2020, 3, 7)).to_batches()[0]
        raise OSError("connection reset while reading the source")

    with pytest.raises(OSError, match="connection reset"):
        write(lake, pa.RecordBatchReader.from_batches(days().schema, breaking()), "2020-03")
    assert {day: (tmp_path / "clean/trips" / day).read_bytes() for day in stored_days(tmp_path)} == before


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


def test_a_range_moves_into_place_only_when_every_month_is_complete(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    months = dg.PartitionKeyRange("2020-03", "2020-04")
    write(lake, {"2020-03": days(date(2020, 3, 9)), "2020-04": days(date(2020, 4, 9))}, key_range=months)
    before = {day: (tmp_path / "clean/trips" / day).read_bytes() for day in stored_days(tmp_path)}

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
    assert {day: (tmp_path / "clean/trips" / day).read_bytes() for day in stored_days(tmp_path)} == before


def test_a_failed_write_leaves_no_staging_and_abandoned_areas_are_swept_but_live_ones_kept(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    write(lake, days(date(2020, 3, 9)), partition="2020-03")

    def broken():
        yield days(date(2020, 3, 1)).to_batches()[0]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write(lake, pa.RecordBatchReader.from_batches(days().schema, broken()), partition="2020-03")
    assert not list((tmp_path / "_staging").rglob("*.parquet"))
    killed = tmp_path / "_staging/killed-run/0123abcd/clean/trips/day=2020-03-02/2020-03.parquet"
    live = tmp_path / "_staging/live-run/4567ef01/clean/trips/day=2020-03-03/2020-03.parquet"
    for file in (killed, live):
        file.parent.mkdir(parents=True)
        file.write_bytes(b"half a file")
    old = (datetime.now() - STAGING_MAX_AGE - timedelta(minutes=1)).timestamp()
    os.utime(killed, (old, old))
    write(lake, days(date(2020, 3, 10)), partition="2020-03")
    assert not (tmp_path / "_staging/killed-run").exists()
    assert live.read_bytes() == b"half a file"
    assert read(lake, "2020-03")["n"].to_pylist() == [0]


def test_staged_data_is_invisible_until_published(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    write(lake, days(date(2020, 3, 9)), partition="2020-03")
    with lake.staging("a-run") as staging:
        staged = staging.asset(KEY, MONTHS, "day")
        staged.write("2020-03", days(date(2020, 3, 1), date(2020, 3, 2)))
        assert staged.dataset("2020-03").count_rows() == 2
        assert lake.published_rows(KEY, MONTHS, "day", "2020-03") == 1
        assert stored_days(tmp_path) == ["day=2020-03-09/2020-03.parquet"]
        with pytest.raises(ValueError, match=r"not partitions \['2020-04'\]"):
            staged.publish(KEY, ["2020-04"])
        staged.publish(KEY, ["2020-03"])
    assert lake.published_rows(KEY, MONTHS, "day", "2020-03") == 2
    assert lake.published_rows(KEY, MONTHS, "day", "2020-04") is None
    assert not list((tmp_path / "_staging").rglob("*.parquet"))


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
    more (a row group is flushed with the batch that reaches BATCH_ROWS), the rest in a last one."""
    assert BATCH_ROWS == 131_072
    lake = LakeIOManager(root=str(tmp_path))
    key = dg.AssetKey(["clean", "rejected"])
    with dg.build_output_context(
        asset_key=key, partition_key="2020-03", asset_partitions_def=MONTHS
    ) as context:
        lake.handle_output(
            context, small_batches(batches, rows, date(2020, 3, 1)).read_all().select(["n"]).to_reader()
        )
    assert row_groups(tmp_path / "clean/rejected/2020-03.parquet") == groups
    assert pq.read_metadata(tmp_path / "clean/rejected/2020-03.parquet").num_rows == batches * rows


def test_a_partition_buffers_its_days_and_writes_each_as_a_row_group_at_buffered_rows(tmp_path):
    """Rows are held by day until BUFFERED_ROWS (4 x 131,072) are buffered in all, then each day's rows
    go to its file as one row group; what is left goes at the end."""
    assert BUFFERED_ROWS == 524_288
    lake = LakeIOManager(root=str(tmp_path))
    write(lake, small_batches(600, 1_000, date(2020, 3, 1), date(2020, 3, 2)), "2020-03")
    # The 525th batch brings 525,000 rows: 262,500 a day; the last 75 batches, 37,500 a day.
    for day in ("2020-03-01", "2020-03-02"):
        assert row_groups(tmp_path / f"clean/trips/day={day}/2020-03.parquet") == [262_500, 37_500]
    assert read(lake, "2020-03").num_rows == 600_000


def test_an_unpartitioned_asset_is_one_file_and_a_file_never_written_is_a_clear_error(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    key = dg.AssetKey(["reference", "zones"])
    with (
        dg.build_output_context(asset_key=key) as upstream,
        dg.build_input_context(asset_key=key, upstream_output=upstream) as reading,
    ):
        with pytest.raises(
            FileNotFoundError, match=r"reference/zones\.parquet does not exist; is the partition materialized"
        ):
            lake.load_input(reading)
        lake.handle_output(upstream, pa.table({"id": [1, 2]}))
        assert lake.load_input(reading).to_table().to_pydict() == {"id": [1, 2]}
    monthly = dg.AssetKey(["raw", "trips"])
    with (
        dg.build_output_context(asset_key=monthly) as upstream,
        dg.build_input_context(
            asset_key=monthly, partition_key="2020-05", asset_partitions_def=MONTHS, upstream_output=upstream
        ) as context,
        pytest.raises(FileNotFoundError, match=r"raw/trips/2020-05\.parquet does not exist"),
    ):
        lake.load_input(context)


def test_what_lies_beside_the_day_folders_is_neither_read_nor_removed(tmp_path):
    lake = LakeIOManager(root=str(tmp_path))
    beside = [tmp_path / "clean/trips/README.txt", tmp_path / "clean/trips/other=2020-03-05/2020-03.parquet"]
    for file in beside:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("not the lake's")
    write(lake, days(date(2020, 3, 5)), "2020-03")
    write(lake, days(date(2020, 3, 6)), "2020-03")
    assert read(lake, "2020-03").to_pydict() == {"n": [0], "day": [date(2020, 3, 6)]}
    assert [file.read_text() for file in beside] == ["not the lake's"] * 2
