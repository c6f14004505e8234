"""Parsing real headers of every dataset, and the parquet schema variants the TLC has published."""

from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_platform.cleaning import to_clean_columns
from taxi_platform.datasets import DATASETS
from taxi_platform.sources.reading import SchemaDriftError, read_trips
from taxi_platform_tests.helpers import gzip_csv

HEADS = [
    "yellow_tripdata_2019-01",
    "yellow_tripdata_2020-02",
    "green_tripdata_2019-01",
    "green_tripdata_2020-02",
    "fhv_tripdata_2019-01",
    "fhv_tripdata_2020-02",
    "fhvhv_tripdata_2019-02",
    "fhvhv_tripdata_2020-01",
]


@pytest.mark.parametrize("name", HEADS)
def test_the_tlc_csv_headers_of_every_dataset_parse(sample_data, tmp_path, name):
    text = (sample_data / "heads" / f"{name}.csv").read_text()
    whole_lines = text[: text.rindex("\n") + 1]  # the heads end in a cut line
    path = tmp_path / f"{name}.csv.gz"
    path.write_bytes(gzip_csv(whole_lines))
    spec = DATASETS[name.split("_")[0]]
    table = read_trips(path, spec, "csv", name).read_all()
    assert table.num_rows == whole_lines.count("\n") - 1
    clean = to_clean_columns(table, spec)
    assert clean.column("pu_location_id").type == pa.int64()
    assert clean.column(spec.pickup).null_count == 0


def test_parquet_variants_cast_to_the_declared_types(tmp_path):
    """Older TLC files type ids as double or int64, use ns timestamps, write Airport_fee, or all-null columns."""
    path = tmp_path / "yellow.parquet"
    columns = {c.source: pa.nulls(2, c.parquet) for c in DATASETS["yellow"].columns if not c.optional}
    columns.update(
        {
            "VendorID": pa.array([1, 2], pa.int64()),
            "passenger_count": pa.array([1.0, None], pa.float64()),
            "tpep_pickup_datetime": pa.array(
                [datetime(2019, 3, 1, 8), datetime(2019, 3, 2)], pa.timestamp("ns")
            ),
            "congestion_surcharge": pa.nulls(2, pa.null()),
            "Airport_fee": pa.array([1.25, None]),
        }
    )
    pq.write_table(pa.table(columns), path)
    table = read_trips(path, DATASETS["yellow"], "parquet", "yellow 2019-03").read_all()
    assert table.schema.field("VendorID").type == pa.int32()
    assert table["passenger_count"].to_pylist() == [1, None]
    clean = to_clean_columns(table, DATASETS["yellow"])
    assert clean["airport_fee"].to_pylist() == [1.25, None]
    assert clean["cbd_congestion_fee"].null_count == 2


def test_a_lossy_cast_is_a_clear_error(tmp_path):
    path = tmp_path / "green.parquet"
    columns = {c.source: pa.nulls(1, c.parquet) for c in DATASETS["green"].columns if not c.optional}
    columns["passenger_count"] = pa.array([1.5])
    pq.write_table(pa.table(columns), path)
    with pytest.raises(ValueError, match=r"green 2019-03 \(x\): cannot read the parquet file: .*1\.5"):
        read_trips(path, DATASETS["green"], "parquet", "green 2019-03 (x)").read_all()


def test_a_repeated_column_is_schema_drift(tmp_path):
    path = tmp_path / "fhv.csv.gz"
    path.write_bytes(
        gzip_csv(
            "dispatching_base_num,pickup_datetime,dropOff_datetime,PUlocationID,PULocationID,DOlocationID,SR_Flag\n"
        )
    )
    with pytest.raises(
        SchemaDriftError, match=r"fhv 2019-01: .*repeated columns \['PULocationID', 'PUlocationID'\]"
    ):
        read_trips(path, DATASETS["fhv"], "csv", "fhv 2019-01")
