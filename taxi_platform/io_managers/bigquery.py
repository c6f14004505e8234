"""The warehouse on BigQuery: the contract of `taxi_platform.io_managers.warehouse`, kept in a module
of its own so that only the gcp profile imports the Google client libraries."""

import json
import tempfile
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import requests
from dagster_gcp import BigQueryResource
from pydantic import Field

from taxi_platform.io_managers.arrow_data import stream
from taxi_platform.io_managers.warehouse import (
    WarehouseIOManager,
    WarehouseSQL,
    Window,
    check_drift,
    checked_name,
)
from taxi_platform.ledger import LEDGER_TABLE, PUBLISHED, missing_columns
from taxi_platform.retrying import BIGQUERY_WRITE, RetrySettings, retried

T = TypeVar("T")

if TYPE_CHECKING:
    from google.cloud.bigquery import SchemaField

# The tables API answers a table's schema in the legacy type names; `_bq_type` writes the standard ones.
_STANDARD_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}
# Job error reasons BigQuery's documentation says to retry.
_TRANSIENT_REASONS = {
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "jobBackendError",
    "jobInternalError",
}
# A staging table is deleted when its load is merged or fails; one a killed run left expires.
STAGING_LIFETIME = timedelta(days=1)
STAGING_PREFIX = "_staging_"


class BigQuerySQL(WarehouseSQL):
    """SQL in a BigQuery dataset."""

    bigquery: BigQueryResource

    def table_id(self, name: str) -> str:
        return f"{self.bigquery.project}.{checked_name(self.dataset)}.{name}"

    def ref(self, name: str) -> str:
        return f"`{self.table_id(checked_name(name))}`"

    def dbt_output(self) -> dict:
        """dbt-bigquery with Application Default Credentials (oauth), as the client here finds them."""
        return {
            "type": "bigquery",
            "method": "oauth",
            "project": self.bigquery.project,
            "dataset": self.dataset,
            "location": self.bigquery.location,
        }

    def execute(self, statement: str) -> pa.Table:
        with self.bigquery.get_client() as client:
            return client.query(statement).result().to_arrow(create_bqstorage_client=False)

    def tables(self) -> set[str]:
        from google.api_core.exceptions import NotFound

        with self.bigquery.get_client() as client:
            try:
                return {t.table_id for t in client.list_tables(f"{self.bigquery.project}.{self.dataset}")}
            except NotFound:
                return set()


class BigQueryWarehouse(WarehouseIOManager):
    """The GCP warehouse: native partitioned, clustered BigQuery tables. A write meeting a transient
    error (`_transient`) is tried again whole under `retry`, each retry a warning in the run's log."""

    sql: BigQuerySQL
    lake_connection: str = Field(
        default="",
        description="The BigLake connection (project.location.connection) through which BigQuery reads "
        "the lake's Iceberg tables, for `<table>_lake` tables.",
    )
    retry: RetrySettings = Field(
        default=BIGQUERY_WRITE, description="Tries of a write meeting transient errors."
    )

    @property
    def warehouse(self) -> BigQuerySQL:
        return self.sql

    def _replace(self, name, data, window, cluster_by, descriptions, ledger) -> dict:
        from google.cloud import bigquery

        sql = self.sql
        schema = [
            bigquery.SchemaField(f.name, _bq_type(f.type), description=descriptions.get(f.name))
            for f in data.schema
        ]

        def merge():
            """The rows staged in a table of their own, then merged in place of the window's: tried
            whole again on a transient error."""
            with sql.bigquery.get_client() as client:
                self._ensure_dataset(client)
                target = self._ensure_table(client, name, schema, window, cluster_by)
                staging_id = sql.table_id(f"{STAGING_PREFIX}{name}_{uuid.uuid4().hex[:12]}")
                try:
                    client.create_table(staging_table_definition(staging_id, schema, datetime.now(UTC)))
                    self._load(client, staging_id, data, schema)
                    columns = ", ".join(f"`{f.name}`" for f in data.schema)
                    bounds = ""
                    if window:
                        bounds = (
                            f" AND T.`{window.column}` >= DATE '{window.start}'"
                            f" AND T.`{window.column}` < DATE '{window.end}'"
                        )
                    client.query(
                        f"MERGE `{target}` T USING `{staging_id}` S ON FALSE"
                        f" WHEN NOT MATCHED BY SOURCE{bounds} THEN DELETE"
                        f" WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({columns})"
                    ).result()
                finally:
                    client.delete_table(staging_id, not_found_ok=True)
                return client.get_table(target)

        stored = self._retried(merge, sql.table_id(name) + (f" rows with {window}" if window else ""))
        if ledger is not None:  # BigQuery has no transaction spanning the MERGE and this load
            self._retried(lambda: self.append_ledger(ledger), sql.table_id(LEDGER_TABLE))
        project = sql.bigquery.project
        url = (
            f"https://console.cloud.google.com/bigquery?project={project}"
            f"&ws=!1m5!1m4!4m3!1s{project}!2s{sql.dataset}!3s{name}"
        )
        return {
            "console_url": dg.MetadataValue.url(url),
            "table_bytes": stored.num_bytes or 0,
            "table_rows": stored.num_rows or 0,
        }

    def _retried(self, call: Callable[[], T], what: str) -> T:
        return retried(call, self.retry, transient=_transient, log=self.sql.log, what=what, where="BigQuery")

    def _create_lake_table(self, name, prefix, metadata_file) -> None:
        from google.api_core.exceptions import Conflict

        if metadata_file is None:
            raise ValueError(
                f"{name}: the rows were not read from the lake table {prefix}: no version to show"
            )
        table = lake_table_definition(self.sql.table_id(name), metadata_file, self.lake_connection)
        with self.sql.bigquery.get_client() as client:
            try:
                client.create_table(table)
            except Conflict:
                client.update_table(table, ["external_data_configuration"])

    def _ensure_table(self, client, name, schema, window, cluster_by) -> str:
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        table_id = self.sql.table_id(name)
        try:
            existing = client.get_table(table_id)
        except NotFound:
            table = bigquery.Table(table_id, schema=schema)
            if window:
                table.time_partitioning = bigquery.TimePartitioning(field=window.column)
            table.clustering_fields = cluster_by or None
            client.create_table(table)
            return table_id
        for field in new_columns(table_id, existing.schema, schema):
            # DDL, a column a statement: idempotent, and writers adding columns at once lose none.
            options = f" OPTIONS(description={json.dumps(field.description)})" if field.description else ""
            client.query(
                f"ALTER TABLE `{table_id}` ADD COLUMN IF NOT EXISTS `{field.name}` {field.field_type}{options}"
            ).result()
        return table_id

    def held_versions(self, asset_key: str) -> dict[str | None, int]:
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        table_id = self.sql.table_id(LEDGER_TABLE)
        with self.sql.bigquery.get_client() as client:
            try:
                if "lake_version" not in [field.name for field in client.get_table(table_id).schema]:
                    return {}
            except NotFound:
                return {}
            job = client.query(
                f"SELECT partition_key, MAX(lake_version) AS version FROM `{table_id}` WHERE asset_key = @asset"
                " AND outcome = @outcome AND lake_version IS NOT NULL GROUP BY partition_key",
                job_config=bigquery.QueryJobConfig(
                    query_parameters=[
                        bigquery.ScalarQueryParameter("asset", "STRING", asset_key),
                        bigquery.ScalarQueryParameter("outcome", "STRING", PUBLISHED),
                    ]
                ),
            )
            return {row["partition_key"]: row["version"] for row in job.result()}

    def append_ledger(self, rows: pa.Table, within=None) -> None:
        """Loaded on its own (BigQuery has no transaction to join): `within` is never given. The table
        is created, or given its missing columns (at its end), first; the rows go in its column order."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        table_id = self.sql.table_id(LEDGER_TABLE)
        with self.sql.bigquery.get_client() as client, tempfile.TemporaryFile() as file:
            self._ensure_dataset(client)
            try:
                existing = [field.name for field in client.get_table(table_id).schema]
            except NotFound:
                existing = []
            wanted = [bigquery.SchemaField(f.name, _bq_type(f.type)) for f in rows.schema]
            self._ensure_table(client, LEDGER_TABLE, wanted, None, [])
            if existing:
                rows = rows.select(existing + [field.name for field in missing_columns(existing)])
            config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.PARQUET,
                schema=[bigquery.SchemaField(f.name, _bq_type(f.type)) for f in rows.schema],
                write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            )
            pq.write_table(rows, file)
            file.seek(0)
            client.load_table_from_file(file, table_id, job_config=config).result()

    def _ensure_dataset(self, client) -> None:
        from google.cloud import bigquery

        dataset = bigquery.Dataset(f"{self.sql.bigquery.project}.{self.sql.dataset}")
        dataset.location = self.sql.bigquery.location
        client.create_dataset(dataset, exists_ok=True)

    def _load(self, client, staging_id: str, data: ds.Dataset, schema) -> None:
        from google.cloud import bigquery

        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=schema,
            # Into the staging table as created (its expiration kept): it must still be empty.
            write_disposition=bigquery.WriteDisposition.WRITE_EMPTY,
        )
        with tempfile.TemporaryFile() as file:  # the parquet to load, written batch by batch, on disk
            with pq.ParquetWriter(file, data.schema) as writer:
                for batch in stream(data):
                    writer.write_batch(batch)
            file.seek(0)
            client.load_table_from_file(file, staging_id, job_config=config).result()

    def _read(self, name: str, window: Window | None) -> pa.Table:
        from google.cloud import bigquery

        query, params = f"SELECT * FROM {self.sql.ref(name)}", []
        if window:
            query += f" WHERE `{window.column}` >= @start AND `{window.column}` < @end"
            params = [
                bigquery.ScalarQueryParameter("start", "DATE", window.start),
                bigquery.ScalarQueryParameter("end", "DATE", window.end),
            ]
        with self.sql.bigquery.get_client() as client:
            job = client.query(query, job_config=bigquery.QueryJobConfig(query_parameters=params))
            return job.result().to_arrow(create_bqstorage_client=False)


def staging_table_definition(table_id: str, schema, now: datetime):
    """A staging table created `now`, which BigQuery deletes by itself `STAGING_LIFETIME` later."""
    from google.cloud import bigquery

    table = bigquery.Table(table_id, schema=schema)
    table.expires = now + STAGING_LIFETIME
    return table


def lake_table_definition(table_id: str, metadata_uri: str, connection: str):
    """A BigLake external table over a version of the lake's Iceberg table (its metadata file):
    (re)defined at each load, so it reads the version the warehouse loaded."""
    from google.cloud import bigquery

    external = bigquery.ExternalConfig("ICEBERG")
    external.source_uris = [metadata_uri]
    external.connection_id = connection
    table = bigquery.Table(table_id)
    table.external_data_configuration = external
    return table


def new_columns(
    table_id: str, existing: Sequence["SchemaField"], wanted: Sequence["SchemaField"]
) -> list["SchemaField"]:
    """The wanted fields the table lacks; a ValueError naming the columns whose type changed. Legacy
    and standard names of a type are the same type (INTEGER is INT64, FLOAT FLOAT64, BOOLEAN BOOL)."""
    check_drift(
        table_id,
        {f.name: standard_type(f.field_type) for f in existing},
        {f.name: standard_type(f.field_type) for f in wanted},
    )
    names = {f.name for f in existing}
    return [f for f in wanted if f.name not in names]


def _transient(error: BaseException) -> bool:
    """What is transient for BigQuery: the answers its documentation says to retry (429, 500, 502,
    503, 504), a job that failed for a reason of the same kind (a backend or internal error, a rate
    limit), and a connection lost. The client library tries each request again on its own; these are
    what reaches a whole write nonetheless (a load job's failure, a request out of its own tries)."""
    from google.api_core import exceptions

    retried_statuses = (
        exceptions.TooManyRequests,
        exceptions.InternalServerError,
        exceptions.BadGateway,
        exceptions.ServiceUnavailable,
        exceptions.GatewayTimeout,
    )
    if isinstance(error, retried_statuses):
        return True
    if isinstance(error, exceptions.GoogleAPICallError):
        return any(e.get("reason") in _TRANSIENT_REASONS for e in error.errors or [] if isinstance(e, dict))
    return isinstance(error, (ConnectionError, requests.ConnectionError))


def standard_type(name: str | None) -> str:
    """A BigQuery type's standard SQL name, whichever name it is given in."""
    upper = (name or "").upper()
    return _STANDARD_TYPES.get(upper, upper)


def _bq_type(arrow_type: pa.DataType) -> str:
    for matches, name in [
        (pa.types.is_integer, "INT64"),
        (pa.types.is_floating, "FLOAT64"),
        (pa.types.is_boolean, "BOOL"),
        (pa.types.is_date32, "DATE"),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "STRING"),
        (lambda t: pa.types.is_timestamp(t) and t.tz is None, "DATETIME"),
        (pa.types.is_timestamp, "TIMESTAMP"),
    ]:
        if matches(arrow_type):
            return name
    raise TypeError(f"no BigQuery type for arrow type {arrow_type}")
