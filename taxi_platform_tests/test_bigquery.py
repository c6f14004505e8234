"""The BigQuery warehouse through the real google-cloud-bigquery client, against the emulator; and its
schema drift check against the exact type names the real tables API answers."""

import http.client
import json
import logging
import os
import re
import threading
import uuid
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pyarrow as pa
import pytest
from dagster_gcp import BigQueryResource
from google.api_core.exceptions import BadRequest
from google.cloud import bigquery

from taxi_platform.datasets import DATASETS
from taxi_platform.definitions import defs
from taxi_platform.io_managers import PARTITION_COLUMN
from taxi_platform.io_managers.bigquery import (
    STAGING_PREFIX,
    BigQuerySQL,
    BigQueryWarehouse,
    _bq_type,
    lake_table_definition,
    new_columns,
    staging_table_definition,
)
from taxi_platform.ledger import LEDGER_SCHEMA, Audited
from taxi_platform.retrying import RetriesExhausted, RetrySettings
from taxi_platform_tests.helpers import green_trip_keys, materializations, sha256_of
from taxi_platform_tests.test_lake import MONTHS
from taxi_platform_tests.test_warehouse import clean_counts, release

# What the real tables API (tables.get) answers for a column of each type `_bq_type` writes: the legacy
# names for INT64, FLOAT64 and BOOL, and NULLABLE spelled out.
API_TYPE = {
    "INT64": "INTEGER",
    "FLOAT64": "FLOAT",
    "BOOL": "BOOLEAN",
    "STRING": "STRING",
    "DATE": "DATE",
    "DATETIME": "DATETIME",
    "TIMESTAMP": "TIMESTAMP",
}


def as_the_api_answers(schema: pa.Schema) -> list[bigquery.SchemaField]:
    """The table's schema as `client.get_table` gives it back from real BigQuery's JSON."""
    return [
        bigquery.SchemaField.from_api_repr(
            {"name": f.name, "type": API_TYPE[_bq_type(f.type)], "mode": "NULLABLE"}
        )
        for f in schema
    ]


def as_written(schema: pa.Schema) -> list[bigquery.SchemaField]:
    return [bigquery.SchemaField(f.name, _bq_type(f.type)) for f in schema]


@pytest.mark.fast
def test_the_legacy_type_names_the_api_answers_are_no_drift():
    green = DATASETS["green"].clean_schema
    answered = as_the_api_answers(green)
    assert {f.field_type for f in answered} == {"INTEGER", "FLOAT", "STRING", "DATE", "DATETIME"}
    assert new_columns("p.taxi.green_trips", answered, as_written(green)) == []

    tipped = as_written(green.append(pa.field("tip_share", pa.float64())))
    assert new_columns("p.taxi.green_trips", answered, tipped) == [
        bigquery.SchemaField("tip_share", "FLOAT64")
    ]

    flags = pa.schema([("flag", pa.bool_()), ("n", pa.int32())])
    assert new_columns("p.taxi.t", as_the_api_answers(flags), as_written(flags)) == []
    assert [f.field_type for f in as_the_api_answers(flags)] == ["BOOLEAN", "INTEGER"]


@pytest.mark.fast
def test_a_changed_type_is_drift_whatever_names_the_api_answers():
    answered = as_the_api_answers(pa.schema([("vendor_id", pa.int64()), ("fare", pa.float64())]))
    changed = as_written(pa.schema([("vendor_id", pa.string()), ("fare", pa.float64())]))
    with pytest.raises(
        ValueError,
        match=r"^p\.taxi\.green_trips: column types changed \(table, data\): \{'vendor_id': \('INT64', 'STRING'\)\}$",
    ):
        new_columns("p.taxi.green_trips", answered, changed)
    with pytest.raises(ValueError, match=r"\{'fare': \('FLOAT64', 'INT64'\)\}"):
        new_columns("p.taxi.t", answered, as_written(pa.schema([("fare", pa.int64())])))


@pytest.mark.fast
def test_an_arrow_type_bigquery_has_no_column_for_is_refused():
    assert [_bq_type(t) for t in (pa.int32(), pa.large_string(), pa.timestamp("us", tz="UTC"))] == [
        "INT64",
        "STRING",
        "TIMESTAMP",
    ]
    with pytest.raises(TypeError, match=r"^no BigQuery type for arrow type binary$"):
        _bq_type(pa.binary())


@pytest.mark.fast
def test_the_lake_external_table_definition():
    """The emulator accepts an external table but keeps no external configuration: the definition
    sent is checked as the JSON BigQuery receives (a BigLake table over an Iceberg metadata file)."""
    metadata = "gs://taxi-lake/prod/clean/green_trips/metadata/00003-ab12.metadata.json"
    sent = lake_table_definition("p.taxi.green_trips_lake", metadata, "p.us.lake")
    assert sent.to_api_repr()["externalDataConfiguration"] == {
        "sourceFormat": "ICEBERG",
        "sourceUris": [metadata],
        "connectionId": "p.us.lake",
    }


# Against the emulator --------------------------------------------------------------------------------


@pytest.fixture
def dataset(bigquery_emulator):
    name = f"taxi_{uuid.uuid4().hex[:12]}"
    yield name
    bigquery.Client(project=bigquery_emulator).delete_dataset(name, delete_contents=True, not_found_ok=True)


def materialize_to_bigquery(project, dataset, *, partition=None, months=None):
    definitions = defs()
    sql = BigQuerySQL(bigquery=BigQueryResource(project=project, location="US"), dataset=dataset)
    warehouse = BigQueryWarehouse(sql=sql)
    tags = (
        {"dagster/asset_partition_range_start": months[0], "dagster/asset_partition_range_end": months[1]}
        if months
        else {}
    )
    return dg.materialize(
        [*definitions.assets, *(definitions.asset_checks or [])],
        selection=dg.AssetSelection.assets(
            *(dg.AssetKey.from_user_string(k) for k in (*green_trip_keys(), "warehouse/green_trips"))
        ),
        resources={**definitions.resources, "warehouse_io_manager": warehouse, "warehouse_sql": sql},
        partition_key=partition,
        tags=tags,
    )


def month_counts(project, dataset) -> dict[str, int]:
    rows = (
        bigquery.Client(project=project)
        .query(
            f"SELECT FORMAT_DATE('%Y-%m', pickup_date) AS month, COUNT(*) AS n, COUNT(DISTINCT trip_key) AS distinct_keys"
            f" FROM `{project}.{dataset}.green_trips` GROUP BY month ORDER BY month"
        )
        .result()
    )
    rows = list(rows)
    assert all(r.n == r.distinct_keys for r in rows), "duplicate trip_key"
    return {r.month: r.n for r in rows}


@pytest.mark.emulators
def test_a_backfill_in_one_run_then_reruns_never_duplicate(taxi_env, published, bigquery_emulator, dataset):
    project = bigquery_emulator
    expected = clean_counts(published, "2020-10", "2020-11", "2020-12")
    result = materialize_to_bigquery(project, dataset, months=("2020-10", "2020-12"))
    assert month_counts(project, dataset) == expected
    meta = materializations(result)[("warehouse/green_trips", "2020-12")]
    assert meta["dagster/table_name"] == f"{project}.{dataset}.green_trips"
    assert meta["dagster/row_count"] == expected["2020-12"]
    for _ in range(2):  # the second load into the existing table: the drift check compares its schema
        materialize_to_bigquery(project, dataset, partition="2020-11")
    assert month_counts(project, dataset) == expected
    ledger = bigquery.Client(project=project).query(
        f"SELECT partition_key, source_sha256, rows_loaded, outcome FROM `{project}.{dataset}.load_audit`"
    )
    assert sorted(tuple(row.values()) for row in ledger.result()) == sorted(
        [(m, sha256_of(release(published, m)), n, "published") for m, n in expected.items()]
        + [("2020-11", sha256_of(release(published, "2020-11")), expected["2020-11"], "published")] * 2
    )


@pytest.mark.emulators
def test_the_table_is_partitioned_clustered_and_typed(taxi_env, published, bigquery_emulator, dataset):
    project = bigquery_emulator
    materialize_to_bigquery(project, dataset, partition="2020-10")
    table = bigquery.Client(project=project).get_table(f"{project}.{dataset}.green_trips")
    assert table.time_partitioning.field == "pickup_date"
    assert table.clustering_fields == ["pu_location_id", "do_location_id"]
    fields = {f.name: f for f in table.schema}
    assert fields["lpep_pickup_datetime"].field_type == "DATETIME"
    assert fields["lpep_pickup_datetime"].description.endswith(
        "America/New_York local time, stored as DATETIME (no time zone)."
    )
    assert fields["pickup_date"].field_type == "DATE"
    # The emulator answers the names it was sent (real BigQuery would answer INTEGER: see above).
    assert fields["vendor_id"].field_type == "INT64"
    rows = list(
        bigquery.Client(project=project)
        .query(
            f"SELECT COUNT(*) AS n, MIN(lpep_pickup_datetime) AS first, MAX(lpep_pickup_datetime) AS last"
            f" FROM `{project}.{dataset}.green_trips` WHERE pickup_date >= '2020-10-01' AND pickup_date < '2020-11-01'"
        )
        .result()
    )
    assert rows[0].n == clean_counts(published, "2020-10")["2020-10"]
    assert (rows[0].first.year, rows[0].first.month, rows[0].last.year, rows[0].last.month) == (
        2020,
        10,
        2020,
        10,
    )


@pytest.mark.emulators
def test_the_lake_external_table_is_created_then_updated(bigquery_emulator, dataset):
    """Defined over the metadata file that the loaded rows were read at; never without one."""
    sql = BigQuerySQL(bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset=dataset)
    warehouse = BigQueryWarehouse(sql=sql, lake_root="gs://lake/taxi", lake_connection="p.us.lake")
    bigquery.Client(project=bigquery_emulator).create_dataset(dataset)
    table = "gs://lake/taxi/clean/green_trips"
    with pytest.raises(ValueError, match="the rows were not read from the lake table"):
        warehouse._create_lake_table("green_trips_lake", table, None)
    assert sql.tables() == set()
    for _ in range(2):  # the second time the table exists (Conflict): its definition is updated
        warehouse._create_lake_table("green_trips_lake", table, f"{table}/metadata/00004-5e7c.metadata.json")
    assert sql.tables() == {"green_trips_lake"}


# The IO manager on its own, on small tables ------------------------------------------------------------

BY_DAY = {PARTITION_COLUMN: "day"}


def trips(*days: date, **extra) -> pa.Table:
    n = len(days)
    return pa.table(
        {
            "n": pa.array(range(n), pa.int64()),
            "day": pa.array(days, pa.date32()),
            "fare": pa.array([2.5 * (i + 1) for i in range(n)]),
            "paid": pa.array([i % 2 == 0 for i in range(n)]),
            **extra,
        }
    )


def store(manager, obj, month=None, key=("warehouse", "trips"), metadata=BY_DAY):
    context = dg.build_output_context(
        asset_key=dg.AssetKey(list(key)),
        partition_key=month,
        asset_partitions_def=MONTHS if month else None,
        definition_metadata=metadata,
    )
    manager.handle_output(context, obj)
    return context.get_logged_metadata()


def load(manager, month=None, key=("warehouse", "trips"), key_range=None):
    upstream = dg.build_output_context(asset_key=dg.AssetKey(list(key)), definition_metadata=BY_DAY)
    context = dg.build_input_context(
        asset_key=dg.AssetKey(list(key)),
        partition_key=month,
        asset_partition_key_range=key_range,
        asset_partitions_def=MONTHS if month or key_range else None,
        upstream_output=upstream,
    )
    return manager.load_input(context)


@pytest.fixture
def small(bigquery_emulator, dataset):
    sql = BigQuerySQL(bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset=dataset)
    return BigQueryWarehouse(sql=sql)


def by_n(table: pa.Table) -> dict:
    return table.sort_by("n").to_pydict()


@pytest.mark.emulators
def test_a_table_whose_schema_the_api_answers_in_legacy_names_takes_a_second_month(small, bigquery_emulator):
    """The table as real BigQuery describes it (INTEGER, FLOAT, BOOLEAN): loading into it is no drift."""
    client = bigquery.Client(project=bigquery_emulator)
    client.create_dataset(small.sql.dataset)
    table = bigquery.Table(
        small.sql.table_id("trips"), schema=as_the_api_answers(trips(date(2020, 3, 1)).schema)
    )
    table.time_partitioning = bigquery.TimePartitioning(field="day")
    client.create_table(table)
    answered = [f.field_type for f in client.get_table(small.sql.table_id("trips")).schema]
    assert answered == ["INTEGER", "DATE", "FLOAT", "BOOLEAN"]

    march, april = trips(date(2020, 3, 1), date(2020, 3, 2)), trips(date(2020, 4, 30))
    store(small, march, "2020-03")
    stored = store(small, april, "2020-04")
    project, name = small.sql.bigquery.project, small.sql.dataset
    assert stored["console_url"].value == (
        f"https://console.cloud.google.com/bigquery?project={project}&ws=!1m5!1m4!4m3!1s{project}!2s{name}!3strips"
    )
    assert stored["dagster/table_name"].value == f"{project}.{name}.trips"
    assert by_n(load(small, "2020-03")) == march.to_pydict()
    assert by_n(load(small, "2020-04")) == april.to_pydict()
    ranged = load(small, key_range=dg.PartitionKeyRange("2020-03", "2020-04"))
    assert {month: by_n(t) for month, t in ranged.items()} == {
        "2020-03": march.to_pydict(),
        "2020-04": april.to_pydict(),
    }


@pytest.mark.emulators
def test_a_new_column_is_added_and_a_changed_type_fails_leaving_the_table(small):
    store(small, trips(date(2020, 3, 1)), "2020-03")
    paid_at = pa.array([datetime(2020, 4, 1, 12, 30)], pa.timestamp("us"))  # described: DATETIME
    store(small, trips(date(2020, 4, 1), tip=pa.array([0.5]), paid_at=paid_at), "2020-04")
    # The column as the table's data has it (the emulator's metadata does not follow ALTER TABLE).
    stored = small.sql.execute(f"SELECT * FROM {small.sql.ref('trips')} LIMIT 0").schema
    assert [(f.name, f.type) for f in stored] == [
        ("n", pa.int64()),
        ("day", pa.date32()),
        ("fare", pa.float64()),
        ("paid", pa.bool_()),
        ("tip", pa.float64()),
        ("paid_at", pa.timestamp("us")),
    ]
    assert load(small, "2020-03")["tip"].to_pylist() == [None]
    assert load(small, "2020-04").select(["tip", "paid_at"]).to_pylist() == [
        {"tip": 0.5, "paid_at": datetime(2020, 4, 1, 12, 30)}
    ]

    as_text = trips(date(2020, 3, 5)).set_column(0, "n", pa.array(["zero"]))
    with pytest.raises(
        ValueError, match=r"trips: column types changed \(table, data\): \{'n': \('INT64', 'STRING'\)\}$"
    ):
        store(small, as_text, "2020-03")
    assert load(small, "2020-03").to_pydict() == {
        **trips(date(2020, 3, 1)).to_pydict(),
        "tip": [None],
        "paid_at": [None],
    }
    assert small.sql.tables() == {"trips"}


@pytest.mark.emulators
def test_a_failed_merge_leaves_the_month_and_no_staging_table(small):
    store(small, trips(date(2020, 3, 1), date(2020, 3, 9)), "2020-03")
    with pytest.raises(BadRequest) as raised:  # the window on a column the table lacks: not transient
        store(small, trips(date(2020, 3, 2)), "2020-03", metadata={PARTITION_COLUMN: "nope"})
    assert [error["reason"] for error in raised.value.errors] == ["invalidQuery"]
    assert 'does not have a column named "nope"' in raised.value.message
    assert small.sql.tables() == {"trips"}  # the staging table is gone
    assert by_n(load(small, "2020-03")) == trips(date(2020, 3, 1), date(2020, 3, 9)).to_pydict()


@pytest.mark.emulators
def test_an_unpartitioned_table_is_replaced_whole_and_a_missing_dataset_has_no_tables(small):
    assert small.sql.tables() == set()  # the dataset does not exist yet
    zones = pa.table({"location_id": [1, 2], "zone": ["a", "NA"]})
    store(small, zones, key=("warehouse", "zones"), metadata={})
    store(small, zones.slice(1), key=("warehouse", "zones"), metadata={})
    assert load(small, key=("warehouse", "zones")).to_pydict() == {"location_id": [2], "zone": ["NA"]}
    assert small.sql.execute(f"SELECT COUNT(*) AS n FROM {small.sql.ref('zones')}").to_pydict() == {"n": [1]}


class _DatasetNotFound(BaseHTTPRequestHandler):
    """Answers as real BigQuery does for a dataset that does not exist (the emulator lists none)."""

    paths: list[str] = []

    def do_GET(self):
        self.paths.append(self.path.split("?")[0])
        body = {
            "error": {
                "code": 404,
                "message": "Not found: Dataset taxi-test-project:missing",
                "errors": [{"message": "Not found: Dataset taxi-test-project:missing", "reason": "notFound"}],
                "status": "NOT_FOUND",
            }
        }
        self.send_response(404)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.mark.emulators
def test_a_dataset_the_api_does_not_find_has_no_tables(bigquery_emulator, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DatasetNotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
        sql = BigQuerySQL(
            bigquery=BigQueryResource(project=bigquery_emulator, location="US"), dataset="missing"
        )
        assert sql.tables() == set()
        assert _DatasetNotFound.paths == [
            f"/bigquery/v2/projects/{bigquery_emulator}/datasets/missing/tables"
        ]
    finally:
        server.shutdown()
        server.server_close()


class _Recording(BaseHTTPRequestHandler):
    """Passes every request on to `upstream` (the emulator) and its answer back, recording
    (method, path, JSON body) of each."""

    upstream = ""
    requests: list[tuple[str, str, dict | None]] = []

    def _pass_on(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        content_type = self.headers.get("Content-Type", "")
        self.requests.append(
            (self.command, self.path.split("?")[0], json.loads(body) if "json" in content_type else None)
        )
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        upstream.request(self.command, self.path, body, headers)
        answer = upstream.getresponse()
        data = self.answer(self.path.split("?")[0], answer.read())
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() == "location":  # a resumable upload goes on through the proxy too
                value = value.replace(f"//{self.upstream}/", f"//127.0.0.1:{self.server.server_port}/")
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def answer(self, path: str, data: bytes) -> bytes:
        """The emulator's answer to `path`, as passed back."""
        return data

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _pass_on

    def log_message(self, *args):
        pass


class _FailingLoads(_Recording):
    """The recording proxy, but the first `failures` load jobs come back failed with a backend error,
    as BigQuery answers a job its backend could not finish (the rows the emulator loaded stay in the
    staging table, as they may in BigQuery)."""

    failures = 0

    def answer(self, path: str, data: bytes) -> bytes:
        # The load job as the upload's last request (a resumable upload's PUT) answers it.
        if not (self.command == "PUT" and path.startswith("/upload/")) or _FailingLoads.failures == 0:
            return data
        _FailingLoads.failures -= 1
        job = json.loads(data)
        error = {"reason": "backendError", "message": "injected: the backend could not finish the job"}
        job["status"] = {"state": "DONE", "errorResult": error, "errors": [error]}
        return json.dumps(job).encode()


def test_a_staging_table_expires_its_lifetime_after_its_creation():
    created = datetime(2026, 12, 7, 9, 30, 15, 250_000, tzinfo=UTC)
    table = staging_table_definition("p.d._staging_trips_0a1b2c3d4e5f", [], created)
    assert table.expires == datetime(2026, 12, 8, 9, 30, 15, 250_000, tzinfo=UTC)
    assert table.to_api_repr()["expirationTime"] == str(int(table.expires.timestamp() * 1000))


@pytest.mark.emulators
def test_the_staging_table_expires_by_itself_from_its_creation(small, monkeypatch):
    """A run killed mid-load leaves its staging table behind: BigQuery deletes it STAGING_LIFETIME after
    its creation. The emulator keeps no expiration, so the table BigQuery is asked to create is read
    from the requests, passed on to the emulator by a recording proxy: the staging table is created
    with its expiration before any row is loaded into it, and deleted after the MERGE."""
    _Recording.upstream = os.environ["BIGQUERY_EMULATOR_HOST"].removeprefix("http://")
    _Recording.requests = []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with monkeypatch.context() as through_the_proxy:
            through_the_proxy.setenv("BIGQUERY_EMULATOR_HOST", f"http://127.0.0.1:{proxy.server_port}")
            store(small, trips(date(2020, 3, 1), date(2020, 3, 2)), "2020-03")
    finally:
        proxy.shutdown()
        proxy.server_close()
    requests = _Recording.requests
    tables = f"/bigquery/v2/projects/{small.sql.bigquery.project}/datasets/{small.sql.dataset}/tables"
    [(created, body)] = [
        (i, body)
        for i, (method, path, body) in enumerate(requests)
        if method == "POST"
        and path == tables
        and body["tableReference"]["tableId"].startswith(STAGING_PREFIX)
    ]
    staging = body["tableReference"]["tableId"]
    assert "expirationTime" in body  # its value: test_a_staging_table_expires_its_lifetime_after_its_creation
    [loaded] = [
        i for i, (method, path, _) in enumerate(requests) if method == "PUT" and path.startswith("/upload/")
    ]
    [deleted] = [i for i, (method, path, _) in enumerate(requests) if method == "DELETE"]
    assert created < loaded < deleted
    assert requests[deleted][1] == f"{tables}/{staging}"
    assert small.sql.tables() == {"trips"}
    assert by_n(load(small, "2020-03")) == trips(date(2020, 3, 1), date(2020, 3, 2)).to_pydict()


@pytest.mark.emulators
def test_a_ledger_table_of_an_earlier_version_gains_the_new_columns(small, bigquery_emulator, dataset):
    """A ledger table made before `code_version` was one of its columns: the next audited write adds
    the column, and the earlier row reads it as null."""
    client = bigquery.Client(project=bigquery_emulator)
    client.create_dataset(f"{bigquery_emulator}.{dataset}", exists_ok=True)
    earlier = [field for field in LEDGER_SCHEMA if field.name != "code_version"]
    table_id = f"{bigquery_emulator}.{dataset}.load_audit"
    client.create_table(bigquery.Table(table_id, schema=as_written(pa.schema(earlier))))
    client.query(
        f"INSERT INTO `{table_id}` (asset_key, outcome) VALUES ('warehouse/earlier', 'published')"
    ).result()
    store(small, Audited(trips(date(2020, 3, 1), date(2020, 3, 2)), {"code_version": "0.1.0+abc"}), "2020-03")
    answer = client.query(
        f"SELECT asset_key, code_version, rows_loaded FROM `{table_id}` ORDER BY 1"
    ).result()
    assert [tuple(row.values()) for row in answer] == [
        ("warehouse/earlier", None, None),
        ("warehouse/trips", "0.1.0+abc", 2),
    ]
    # The columns as the table's data has them (the emulator's metadata does not follow ALTER TABLE).
    stored = small.sql.execute(f"SELECT * FROM `{table_id}` LIMIT 0").schema
    assert stored.names == [field.name for field in earlier] + ["code_version"]


@pytest.fixture
def failing_loads(monkeypatch):
    """The emulator behind a `_FailingLoads` proxy; set `_FailingLoads.failures` to fail loads."""
    _FailingLoads.upstream = os.environ["BIGQUERY_EMULATOR_HOST"].removeprefix("http://")
    _FailingLoads.requests, _FailingLoads.failures = [], 0
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _FailingLoads)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"http://127.0.0.1:{proxy.server_port}")
    yield _FailingLoads
    proxy.shutdown()
    proxy.server_close()


@pytest.fixture
def bigquery_retries():
    """The retry warnings of BigQuery writes outside a run (in a run: the run's log)."""
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("taxi_platform.io_managers.bigquery")
    logger.addHandler(handler)
    yield warnings
    logger.removeHandler(handler)


@pytest.mark.emulators
@pytest.mark.faults
def test_a_load_job_failed_by_the_backend_is_tried_again_whole_leaving_the_other_month(
    small, failing_loads, bigquery_retries
):
    store(small, trips(date(2020, 3, 1), date(2020, 3, 9)), "2020-03")
    april = trips(date(2020, 4, 1), date(2020, 4, 2))
    store(small, april, "2020-04")
    manager = BigQueryWarehouse(sql=small.sql, retry=RetrySettings(tries=3, first_wait=0.01, jitter=0))
    replacement = trips(date(2020, 3, 5), date(2020, 3, 6))
    failing_loads.failures, failing_loads.requests = 1, []
    store(manager, replacement, "2020-03")
    assert bigquery_retries == [
        f"{small.sql.table_id('trips')} rows with day in [2020-03-01, 2020-04-01) (BigQuery): try 1 of 3"
        " failed with InternalServerError: 500 injected: the backend could not finish the job; reason:"
        " backendError, message: injected: the backend could not finish the job; trying again in 0.01 s"
    ]
    loads = [
        path for method, path, _ in failing_loads.requests if method == "PUT" and path.startswith("/upload/")
    ]
    assert len(loads) == 2
    assert by_n(load(small, "2020-03")) == replacement.to_pydict()
    assert by_n(load(small, "2020-04")) == april.to_pydict()
    assert small.sql.tables() == {"trips"}  # the failed try's staging table deleted too


@pytest.mark.emulators
@pytest.mark.faults
def test_load_jobs_failing_through_every_try_fail_the_write_leaving_the_months(
    small, failing_loads, bigquery_retries
):
    march, april = trips(date(2020, 3, 1), date(2020, 3, 9)), trips(date(2020, 4, 1), date(2020, 4, 2))
    store(small, march, "2020-03")
    store(small, april, "2020-04")
    manager = BigQueryWarehouse(sql=small.sql, retry=RetrySettings(tries=2, first_wait=0.01, jitter=0))
    failing_loads.failures = 2
    with pytest.raises(RetriesExhausted) as raised:
        store(manager, trips(date(2020, 3, 5)), "2020-03")
    assert re.fullmatch(
        re.escape(f"{small.sql.table_id('trips')} rows with day in [2020-03-01, 2020-04-01) (BigQuery):")
        + r" failed after 2 tries over [0-9.]+ s \(tries 2\); the last: InternalServerError: 500 injected:"
        r" the backend could not finish the job; reason: backendError, message: injected: the backend could"
        r" not finish the job",
        str(raised.value),
    ), raised.value
    assert len(bigquery_retries) == 1
    assert by_n(load(small, "2020-03")) == march.to_pydict()
    assert by_n(load(small, "2020-04")) == april.to_pydict()
    assert small.sql.tables() == {"trips"}
