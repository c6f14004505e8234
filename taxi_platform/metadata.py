"""Metadata the Dagster UI shows: column schemas and lineage, from arrow schemas and dataset specs."""

import dagster as dg
import pyarrow as pa

from taxi_platform.datasets import PICKUP_DATE, TRIP_KEY, DatasetSpec


def column_schema(schema: pa.Schema, descriptions: dict[str, str] | None = None) -> dg.TableSchema:
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=f.name, type=str(f.type), description=descriptions.get(f.name))
            for f in schema
        ]
    )


def clean_column_lineage(spec: DatasetSpec) -> dg.TableColumnLineage:
    """Each clean column comes from its raw column; the derived ones from the columns they use."""
    raw_key = spec.raw_key
    pickup_source = next(c.source for c in spec.columns if c.name == spec.pickup)
    deps = {c.name: [dg.TableColumnDep(raw_key, c.source)] for c in spec.columns}
    deps[PICKUP_DATE] = [dg.TableColumnDep(raw_key, pickup_source)]
    deps[TRIP_KEY] = [dg.TableColumnDep(raw_key, c.source) for c in spec.columns]
    return dg.TableColumnLineage(deps_by_column=deps)


CLEAN_DESCRIPTIONS = {
    TRIP_KEY: "64-bit hash of every trip column: TLC trips carry no id, so the whole row is the key.",
    PICKUP_DATE: "Day of the pickup (New York local time); the lake's hive partition.",
    "reject_reason": "The first cleaning rule the row broke.",
}
