"""The dataset specs: the only place a taxi dataset is described.

Every asset, check, job, schedule and sensor of a dataset is generated from its `DatasetSpec`, which also
names its asset keys, layer by layer. Adding a dataset is adding an entry to `DATASETS`.
"""

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import dagster as dg
import pyarrow as pa

NEW_YORK = "America/New_York"
TRIP_KEY = "trip_key"  # the clean column that identifies a trip
PICKUP_DATE = "pickup_date"  # the clean DATE column every store partitions by
STR, I32, I64, F64 = pa.string(), pa.int32(), pa.int64(), pa.float64()
TS_S, TS_US = pa.timestamp("s"), pa.timestamp("us")


@dataclass(frozen=True)
class Column:
    """One trip column: its name in the TLC files, its snake_case name, and its type in each form.

    `csv` and `parquet` are the types a source form declares (None: that form lacks the column).
    `optional`: some months' files lack it because the TLC added it later; it is then null when cleaned.
    Source names are matched case-insensitively (the TLC writes `PUlocationID`, `Airport_fee`, ...).
    """

    source: str
    name: str
    type: pa.DataType
    csv: pa.DataType | None
    parquet: pa.DataType | None
    optional: bool = False


def col(
    source: str,
    name: str | None = None,
    type: pa.DataType = F64,
    csv: pa.DataType | None | Literal["same"] = "same",
    parquet: pa.DataType | None | Literal["same"] = "same",
    optional: bool = False,
) -> Column:
    """A Column; `csv` and `parquet` default to "same": the form declares the clean `type`."""
    return Column(
        source=source,
        name=name or source,
        type=type,
        csv=type if csv == "same" else csv,
        parquet=type if parquet == "same" else parquet,
        optional=optional,
    )


@dataclass(frozen=True)
class MonthRange:
    first: str  # YYYY-MM
    last: str  # YYYY-MM

    def __contains__(self, month: str) -> bool:
        return self.first <= month <= self.last


@dataclass(frozen=True)
class DatasetSpec:
    """A TLC trip dataset: where its months come from and what their columns are."""

    name: str
    description: str
    first_month: str  # YYYY-MM, the first month published with the location-id schema below
    pickup: str  # snake_case name of the pickup timestamp
    dropoff: str
    columns: tuple[Column, ...]
    positive_columns: tuple[str, ...] = ()  # cleaning rule: each must be > 0 (null fails)
    releases: MonthRange | None = None  # months the course's CSV.gz releases hold
    months_per_run: int = 3  # a backfill runs this many months per run (memory grows with it)
    # Volume guard: a republished month with fewer clean rows than this share of the published
    # month's is refused (run config `allow_shrink` lets one through).
    min_share_of_published: float = 0.5
    # Freshness: True, the TLC keeps publishing the dataset, each month about two months after it ends
    # (taxi_platform.checks.freshness); False, its months come from the course releases only (which never
    # change), so no month after `releases.last` is ever due.
    continues_on_tlc: bool = True

    @property
    def table(self) -> str:
        return f"{self.name}_trips"

    @property
    def raw_key(self) -> dg.AssetKey:
        return dg.AssetKey(["raw", self.table])

    @property
    def clean_key(self) -> dg.AssetKey:
        return dg.AssetKey(["clean", self.table])

    @property
    def rejected_key(self) -> dg.AssetKey:
        return dg.AssetKey(["clean", f"{self.table}_rejected"])

    @property
    def postgres_key(self) -> dg.AssetKey:
        return dg.AssetKey(["postgres", self.table])

    @property
    def warehouse_key(self) -> dg.AssetKey:
        return dg.AssetKey(["warehouse", self.table])

    def file_name(self, month: str, form: str) -> str:
        return f"{self.name}_tripdata_{month}.{'csv.gz' if form == 'csv' else 'parquet'}"

    @cached_property
    def partitions_def(self) -> dg.MonthlyPartitionsDefinition:
        # The last partition is the last complete month, never a month that cannot be published yet.
        # New York time, as the trips are: month bounds and the monthly schedule follow it.
        return dg.MonthlyPartitionsDefinition(start_date=self.first_month, fmt="%Y-%m", timezone=NEW_YORK)

    def source_schema(self, form: str) -> pa.Schema:
        return pa.schema([(c.source, getattr(c, form)) for c in self.columns if getattr(c, form) is not None])

    @cached_property
    def clean_schema(self) -> pa.Schema:
        """Clean columns: every declared column, then the derived trip_key and pickup_date."""
        return pa.schema(
            [(c.name, c.type) for c in self.columns] + [(TRIP_KEY, pa.int64()), (PICKUP_DATE, pa.date32())]
        )


_YELLOW_GREEN_FARES = (
    col("fare_amount"),
    col("extra"),
    col("mta_tax"),
    col("tip_amount"),
    col("tolls_amount"),
)

YELLOW = DatasetSpec(
    name="yellow",
    description="Yellow taxi trips (street hails anywhere in NYC), one row per trip.",
    # The TLC's 2009-2010 yellow files use an older schema (coordinates, no location ids).
    first_month="2011-01",
    pickup="tpep_pickup_datetime",
    dropoff="tpep_dropoff_datetime",
    columns=(
        col("VendorID", "vendor_id", I64, parquet=I32),
        col("tpep_pickup_datetime", type=TS_US, csv=TS_S),
        col("tpep_dropoff_datetime", type=TS_US, csv=TS_S),
        col("passenger_count", type=I64),
        col("trip_distance"),
        col("RatecodeID", "ratecode_id", I64),
        col("store_and_fwd_flag", type=STR),
        col("PULocationID", "pu_location_id", I64, parquet=I32),
        col("DOLocationID", "do_location_id", I64, parquet=I32),
        col("payment_type", type=I64),
        *_YELLOW_GREEN_FARES,
        col("improvement_surcharge"),
        col("total_amount"),
        col("congestion_surcharge"),
        col("airport_fee", optional=True),
        col("cbd_congestion_fee", csv=None, optional=True),
    ),
    positive_columns=("passenger_count", "trip_distance"),
    releases=MonthRange("2019-01", "2021-07"),
    months_per_run=1,  # up to 7.8 million rows a month
)

GREEN = DatasetSpec(
    name="green",
    description="Green taxi trips (boro taxis: street hails outside central Manhattan), one row per trip.",
    first_month="2013-08",
    pickup="lpep_pickup_datetime",
    dropoff="lpep_dropoff_datetime",
    columns=(
        col("VendorID", "vendor_id", I64, parquet=I32),
        col("lpep_pickup_datetime", type=TS_US, csv=TS_S),
        col("lpep_dropoff_datetime", type=TS_US, csv=TS_S),
        col("store_and_fwd_flag", type=STR),
        col("RatecodeID", "ratecode_id", I64),
        col("PULocationID", "pu_location_id", I64, parquet=I32),
        col("DOLocationID", "do_location_id", I64, parquet=I32),
        col("passenger_count", type=I64),
        col("trip_distance"),
        *_YELLOW_GREEN_FARES,
        col("ehail_fee"),
        col("improvement_surcharge"),
        col("total_amount"),
        col("payment_type", type=I64),
        col("trip_type", type=I64),
        col("congestion_surcharge"),
        col("cbd_congestion_fee", csv=None, optional=True),
    ),
    positive_columns=("passenger_count", "trip_distance"),
    releases=MonthRange("2019-01", "2021-07"),
)

FHV = DatasetSpec(
    name="fhv",
    description="For-hire vehicle trips (bases other than high-volume ones), one row per trip.",
    first_month="2015-01",
    pickup="pickup_datetime",
    dropoff="dropoff_datetime",
    columns=(
        col("dispatching_base_num", type=STR),
        col("pickup_datetime", type=TS_US, csv=TS_S),
        col("dropOff_datetime", "dropoff_datetime", TS_US, csv=TS_S),
        col("PUlocationID", "pu_location_id", I64, parquet=F64),
        col("DOlocationID", "do_location_id", I64, parquet=F64),
        col("SR_Flag", "sr_flag", I64, parquet=F64),
        col("Affiliated_base_number", "affiliated_base_number", STR, optional=True),
    ),
    releases=MonthRange("2019-01", "2021-07"),
)

FHVHV = DatasetSpec(
    name="fhvhv",
    description="High-volume for-hire trips (Uber, Lyft, Via, Juno), one row per trip.",
    first_month="2019-02",
    pickup="pickup_datetime",
    dropoff="dropoff_datetime",
    columns=(
        col("hvfhs_license_num", type=STR),
        col("dispatching_base_num", type=STR),
        col("originating_base_num", type=STR, csv=None),
        col("request_datetime", type=TS_US, csv=None),
        col("on_scene_datetime", type=TS_US, csv=None),
        col("pickup_datetime", type=TS_US, csv=TS_S),
        col("dropoff_datetime", type=TS_US, csv=TS_S),
        col("PULocationID", "pu_location_id", I64, parquet=I32),
        col("DOLocationID", "do_location_id", I64, parquet=I32),
        col("SR_Flag", "sr_flag", I64, parquet=None),
        col("trip_miles", csv=None),
        col("trip_time", type=I64, csv=None),
        col("base_passenger_fare", csv=None),
        col("tolls", csv=None),
        col("bcf", csv=None),
        col("sales_tax", csv=None),
        col("congestion_surcharge", csv=None),
        col("airport_fee", csv=None),
        col("tips", csv=None),
        col("driver_pay", csv=None),
        *(
            col(flag, type=STR, csv=None)
            for flag in (
                "shared_request_flag",
                "shared_match_flag",
                "access_a_ride_flag",
                "wav_request_flag",
                "wav_match_flag",
            )
        ),
        col("cbd_congestion_fee", csv=None, optional=True),
    ),
    months_per_run=1,  # about 20 million rows a month
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (YELLOW, GREEN, FHV, FHVHV)}

MIN_ZONES = 250  # the TLC lists 265 zones; fewer than this is a broken file, not a smaller city
# The taxi zone lookup (misc/taxi_zone_lookup.csv): (source name, snake_case name, type).
ZONE_COLUMNS = (
    ("LocationID", "location_id", I64),
    ("Borough", "borough", STR),
    ("Zone", "zone", STR),
    ("service_zone", "service_zone", STR),
)
