"""Parsing the real CSV headers of every dataset, the parquet schema variants the TLC has published, and
every way a source file can be unreadable."""

from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthetic.months import source_table
from taxi_platform.cleaning import to_clean_columns
from taxi_platform.datasets import DATASETS
from taxi_platform.sources.reading import SchemaDriftError, UnreadableFile, read_trips, read_zones
from taxi_platform_tests.helpers import gzip_csv

pytestmark = pytest.mark.fast

# The first line of the TLC's original CSV files of 2019 and 2020 (as published, with CRLF line ends):
# the column order and spelling each dataset's files really have (fhv's PULocationID and dropoff_datetime,
# fhvhv's seven columns, no airport_fee in yellow).
REAL_HEADERS = {
    "fhv_tripdata_2019-01": "dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "fhv_tripdata_2019-02": "dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "fhv_tripdata_2020-01": "dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "fhv_tripdata_2020-02": "dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "fhvhv_tripdata_2019-02": "hvfhs_license_num,dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "fhvhv_tripdata_2020-01": "hvfhs_license_num,dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "fhvhv_tripdata_2020-02": "hvfhs_license_num,dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag",
    "green_tripdata_2019-01": "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,PULocationID,DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,tip_amount,tolls_amount,ehail_fee,improvement_surcharge,total_amount,payment_type,trip_type,congestion_surcharge",
    "green_tripdata_2019-02": "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,PULocationID,DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,tip_amount,tolls_amount,ehail_fee,improvement_surcharge,total_amount,payment_type,trip_type,congestion_surcharge",
    "green_tripdata_2020-01": "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,PULocationID,DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,tip_amount,tolls_amount,ehail_fee,improvement_surcharge,total_amount,payment_type,trip_type,congestion_surcharge",
    "green_tripdata_2020-02": "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,PULocationID,DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,tip_amount,tolls_amount,ehail_fee,improvement_surcharge,total_amount,payment_type,trip_type,congestion_surcharge",
    "yellow_tripdata_2019-01": "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,congestion_surcharge",
    "yellow_tripdata_2019-02": "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,congestion_surcharge",
    "yellow_tripdata_2020-01": "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,congestion_surcharge",
    "yellow_tripdata_2020-02": "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,congestion_surcharge",
}


def csv_text(table: pa.Table, newline: str = "\r\n") -> str:
    """The table as an unquoted CSV, blank = null, timestamps as the TLC writes them."""

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        return str(value)

    rows = [",".join(cell(v) for v in row.values()) for row in table.to_pylist()]
    return newline.join([",".join(table.column_names), *rows]) + newline


@pytest.mark.parametrize("name", REAL_HEADERS)
def test_the_real_csv_header_of_every_dataset_parses(tmp_path, name):
    """Rows of the dataset's CSV form under the real header: every value lands in its column."""
    dataset, month = name.split("_tripdata_")
    spec = DATASETS[dataset]
    header = REAL_HEADERS[name].split(",")
    trips = source_table(spec, month, 30, form="csv")
    by_folded = {column.lower(): column for column in trips.column_names}
    as_published = trips.select([by_folded[column.lower()] for column in header]).rename_columns(header)
    path = tmp_path / f"{name}.csv.gz"
    path.write_bytes(gzip_csv(csv_text(as_published)))

    table = read_trips(path, spec, "csv", name).read_all()
    assert table.column_names == header
    assert table.to_pylist() == as_published.to_pylist()
    clean = to_clean_columns(table, spec)
    assert clean.schema == pa.schema([(c.name, c.type) for c in spec.columns])
    in_file = {column.lower(): column for column in header}
    for column in spec.columns:
        source = in_file.get(column.source.lower())
        expected = as_published[source].to_pylist() if source else [None] * 30  # lacking: null
        assert clean[column.name].to_pylist() == expected, column.name


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


def test_a_quoted_csv_header_is_read_by_its_names(tmp_path):
    header = REAL_HEADERS["fhv_tripdata_2020-01"].split(",")
    path = tmp_path / "fhv.csv.gz"
    quoted = ",".join(f'"{name}"' for name in header)
    path.write_bytes(gzip_csv(f"{quoted}\nB00001,2020-01-01 00:30:00,2020-01-01 01:44:00,264,264,\n"))
    table = read_trips(path, DATASETS["fhv"], "csv", "fhv 2020-01").read_all()
    assert table.column_names == header
    assert table["PULocationID"].to_pylist() == [264] and table["SR_Flag"].to_pylist() == [None]


def test_a_lossy_cast_is_a_clear_error(tmp_path):
    path = tmp_path / "green.parquet"
    columns = {c.source: pa.nulls(1, c.parquet) for c in DATASETS["green"].columns if not c.optional}
    columns["passenger_count"] = pa.array([1.5])
    pq.write_table(pa.table(columns), path)
    with pytest.raises(UnreadableFile, match=r"green 2019-03 \(x\): cannot read the parquet file: .*1\.5"):
        read_trips(path, DATASETS["green"], "parquet", "green 2019-03 (x)").read_all()


def test_a_csv_row_that_cannot_be_cast_fails_when_its_batch_is_read(tmp_path):
    header = REAL_HEADERS["fhv_tripdata_2020-01"]
    path = tmp_path / "fhv.csv.gz"
    path.write_bytes(gzip_csv(f"{header}\nB00001,2020-01-01 00:30:00,2020-01-01 01:44:00,264,2.5,\n"))
    rows = read_trips(path, DATASETS["fhv"], "csv", "fhv 2020-01 (x)")  # the header alone is fine
    with pytest.raises(UnreadableFile, match=r"fhv 2020-01 \(x\): cannot read the csv file: .*2\.5"):
        rows.read_all()


@pytest.mark.parametrize(
    ("form", "content"),
    [("csv", b"VendorID,lpep_pickup_datetime\n"), ("csv", b"\x1f\x8b\x08 cut"), ("parquet", b"PAR1 cut")],
    ids=["csv-not-gzip", "csv-cut-gzip", "parquet-cut"],
)
def test_a_file_that_is_not_of_its_form_is_unreadable(tmp_path, form, content):
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match=rf"green 2020-10 \(x\): cannot read the {form} file: "):
        read_trips(path, DATASETS["green"], form, "green 2020-10 (x)")


def test_missing_and_unexpected_columns_are_schema_drift(tmp_path):
    header = REAL_HEADERS["green_tripdata_2020-01"].replace("trip_type", "trip_kind")
    path = tmp_path / "green.csv.gz"
    path.write_bytes(gzip_csv(header + "\n"))
    with pytest.raises(SchemaDriftError) as raised:
        read_trips(path, DATASETS["green"], "csv", "green 2020-01")
    assert str(raised.value) == (
        "green 2020-01: the csv file's columns differ from the declared green schema: "
        "missing columns ['trip_type']; unexpected columns ['trip_kind']"
    )


def test_a_repeated_column_is_schema_drift(tmp_path):
    path = tmp_path / "fhv.csv.gz"
    path.write_bytes(
        gzip_csv(
            "dispatching_base_num,pickup_datetime,dropOff_datetime,PUlocationID,PULocationID,DOlocationID,SR_Flag\n"
        )
    )
    with pytest.raises(
        SchemaDriftError, match=r"fhv 2019-01: .*repeated columns \['PULocationID', 'PUlocationID'\]$"
    ):
        read_trips(path, DATASETS["fhv"], "csv", "fhv 2019-01")


ZONES_HEADER = '"LocationID","Borough","Zone","service_zone"\r\n'


def zone_rows(ids) -> str:
    return "".join(f'{i},"Queens","Zone {i}","Boro Zone"\r\n' for i in ids)


def test_zones_keep_na_and_unknown_as_text(tmp_path):
    path = tmp_path / "zones.csv"
    path.write_text(
        ZONES_HEADER
        + '1,"EWR","Newark Airport","EWR"\r\n'
        + zone_rows(range(2, 264))
        + '264,"Unknown","NV","N/A"\r\n265,"N/A","NA","N/A"\r\n'
    )
    zones = read_zones(path, "taxi zones").to_pylist()
    assert len(zones) == 265
    assert zones[0] == {"location_id": 1, "borough": "EWR", "zone": "Newark Airport", "service_zone": "EWR"}
    assert zones[-2:] == [
        {"location_id": 264, "borough": "Unknown", "zone": "NV", "service_zone": "N/A"},
        {"location_id": 265, "borough": "N/A", "zone": "NA", "service_zone": "N/A"},
    ]


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        ([*range(1, 266), 7, 12], r"LocationID repeated: \[7, 12\]"),
        (range(1, 250), "only 249 zones, expected at least 250"),
    ],
    ids=["repeated-id", "too-few"],
)
def test_a_zone_file_with_a_repeated_id_or_too_few_zones_is_refused(tmp_path, ids, problem):
    path = tmp_path / "zones.csv"
    path.write_text(ZONES_HEADER + zone_rows(ids))
    with pytest.raises(UnreadableFile, match=rf"^taxi zones \(x\): {problem}$"):
        read_zones(path, "taxi zones (x)")


def test_a_zone_file_that_cannot_be_read_is_a_clear_error(tmp_path):
    path = tmp_path / "zones.csv"
    path.write_text(ZONES_HEADER + 'one,"EWR","Newark Airport","EWR"\r\n')
    with pytest.raises(UnreadableFile, match=r"taxi zones \(x\): cannot read the zone file: .*one"):
        read_zones(path, "taxi zones (x)")


def test_zone_columns_other_than_declared_are_schema_drift(tmp_path):
    path = tmp_path / "zones.csv"
    path.write_text('"LocationID","Borough","Zone"\r\n1,"EWR","Newark Airport"\r\n')
    with pytest.raises(SchemaDriftError) as raised:
        read_zones(path, "taxi zones (x)")
    assert str(raised.value) == (
        "taxi zones (x): columns ['LocationID', 'Borough', 'Zone'], "
        "expected ['LocationID', 'Borough', 'Zone', 'service_zone']"
    )
