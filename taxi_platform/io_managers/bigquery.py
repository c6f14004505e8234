"""The warehouse on BigQuery: the contract of `taxi_platform.io_managers.warehouse`, kept in a module
of its own so that only the gcp profile imports the Google client libraries."""

import json
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from dagster_gcp import BigQueryResource

from taxi_platform.io_managers.arrow_data import stream
from taxi_platform.io_managers.ledger import LEDGER_TABLE
from taxi_platform.io_managers.warehouse import (
    WarehouseIOManager,
    WarehouseSQL,
    Window,
    _check_drift,
    _checked_name,
)

if TYPE_CHECKING:
    from google.cloud.bigquery import SchemaField

# The tables API answers a table's schema in the legacy type names; `_bq_type` writes the standard ones.
_STANDARD_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}
# A staging table is deleted when its load is merged or fails; one a killed run left expires.
STAGING_LIFETIME = timedelta(days=1)
STAGING_PREFIX = "_staging_"


class BigQuerySQL(WarehouseSQL):
    """SQL in a BigQuery dataset."""

    bigquery: BigQueryResource

    def table_id(self, name: str) -> str:
        return f"{self.bigquery.project}.{_checked_name(self.dataset)}.{name}"

    def ref(self, name: str) -> str:
        return f"`{self.table_id(_checked_name(name))}`"

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
    """The GCP warehouse: native partitioned, clustered BigQuery tables."""

    sql: BigQuerySQL

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
        with sql.bigquery.get_client() as client:
            dataset = bigquery.Dataset(f"{sql.bigquery.project}.{sql.dataset}")
            dataset.location = sql.bigquery.location
            client.create_dataset(dataset, exists_ok=True)
            target = self._ensure_table(client, name, schema, window, cluster_by)
            staging_id = sql.table_id(f"{STAGING_PREFIX}{name}_{uuid.uuid4().hex[:12]}")
            try:
                client.create_table(staging_table_definition(staging_id, schema))
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
            stored = client.get_table(target)
        if ledger is not None:  # BigQuery has no transaction spanning the MERGE and this load
            self._append_ledger(ledger)
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

    def _create_lake_table(self, name, prefix, partition_column) -> None:
        from google.api_core.exceptions import Conflict

        table = lake_table_definition(self.sql.table_id(name), prefix, partition_column)
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

    def _append_ledger(self, rows: pa.Table) -> None:
        from google.cloud import bigquery

        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=[bigquery.SchemaField(f.name, _bq_type(f.type)) for f in rows.schema],
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
        )
        with self.sql.bigquery.get_client() as client, tempfile.TemporaryFile() as file:
            pq.write_table(rows, file)
            file.seek(0)
            client.load_table_from_file(file, self.sql.table_id(LEDGER_TABLE), job_config=config).result()

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


def staging_table_definition(table_id: str, schema):
    """A staging table that BigQuery deletes by itself `STAGING_LIFETIME` after its creation."""
    from google.cloud import bigquery

    table = bigquery.Table(table_id, schema=schema)
    table.expires = datetime.now(UTC) + STAGING_LIFETIME
    return table


def lake_table_definition(table_id: str, prefix: str, partition_column: str | None):
    """A BigQuery external table over the parquet under `prefix`, hive-partitioned by a DATE column."""
    from google.cloud import bigquery

    external = bigquery.ExternalConfig("PARQUET")
    external.source_uris = [f"{prefix}/*.parquet"]  # not the lake's staged *.tmp objects
    if partition_column:
        hive = bigquery.HivePartitioningOptions()
        hive.mode = "CUSTOM"
        hive.source_uri_prefix = f"{prefix}/{{{partition_column}:DATE}}"
        external.hive_partitioning = hive
    table = bigquery.Table(table_id)
    table.external_data_configuration = external
    return table


def new_columns(
    table_id: str, existing: Sequence["SchemaField"], wanted: Sequence["SchemaField"]
) -> list["SchemaField"]:
    """The wanted fields the table lacks; a ValueError naming the columns whose type changed. Legacy
    and standard names of a type are the same type (INTEGER is INT64, FLOAT FLOAT64, BOOLEAN BOOL)."""
    _check_drift(
        table_id,
        {f.name: standard_type(f.field_type) for f in existing},
        {f.name: standard_type(f.field_type) for f in wanted},
    )
    names = {f.name for f in existing}
    return [f for f in wanted if f.name not in names]


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
