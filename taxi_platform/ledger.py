"""The load ledger: a row for every partition a sink published, or failed to, kept beside the data.

An asset hands a sink IO manager `Audited(rows, provenance)` (one a partition, or a dict of them): the
rows to store and what the ledger should say of where they came from. Each sink is a `LedgerSink`: it
stores the rows and appends the ledger rows to `LEDGER_TABLE` of the same schema or dataset, in the same
transaction where its back end allows it (PostgreSQL, DuckDB), so a ledger row exists if and only if its
data is visible. A write that fails adds a row with outcome "failed" and the first line of its error, in
a transaction of its own, and leaves the published rows and their ledger row alone. That sequence is
`write_audited`, the one copy every sink calls.

A column added to `LEDGER_SCHEMA` reaches the tables already written by itself: each sink adds the
columns `missing_columns` names before it appends (earlier rows read it as null).
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import dagster as dg
import pyarrow as pa

from taxi_platform.redaction import redact
from taxi_platform.run_guard import refuse_if_run_ended

T = TypeVar("T")
LEDGER_TABLE = "load_audit"
PUBLISHED, FAILED = "published", "failed"
_TIMESTAMP = pa.timestamp("us", tz="UTC")
LEDGER_SCHEMA = pa.schema(
    # What was written, by which run, and how it ended: PUBLISHED, or FAILED with its error's first line.
    [(name, pa.string()) for name in ("asset_key", "partition_key", "run_id", "outcome", "error")]
    # Where the rows came from, and how many there were at each step.
    + [(name, pa.string()) for name in ("source_url", "source_sha256", "source_etag", "source_last_modified")]
    + [(name, pa.int64()) for name in ("rows_raw", "rows_clean", "rows_rejected", "rows_loaded")]
    # Each check's name and outcome; the package version, and the git commit when known.
    + [(name, pa.string()) for name in ("checks", "code_version")]
    + [(name, _TIMESTAMP) for name in ("started_at", "published_at")]
    # The lake's version of the month that was loaded; "load", or "rollback" to the version that run
    # `restored_run_id` had published (taxi_platform/rollback.py).
    + [("lake_version", pa.int64()), ("operation", pa.string()), ("restored_run_id", pa.string())]
)


@dataclass(frozen=True)
class Audited:
    """A partition's rows, and the ledger columns the asset knows of them (source, counts, checks,
    code_version, started_at); the IO manager adds the rest."""

    rows: Any
    provenance: Mapping[str, Any]


class LedgerSink(ABC):
    """What a sink IO manager implements for the ledger."""

    @abstractmethod
    def append_ledger(self, rows: pa.Table, within: Any = None) -> None:
        """Append ledger rows to LEDGER_TABLE: in the transaction `within` (the data's: a connection of
        the sink's), or in a transaction of their own when None. The table is created if missing, and
        its `missing_columns` added first."""

    @abstractmethod
    def held_versions(self, asset_key: str) -> dict[str | None, int]:
        """{partition key: the newest `lake_version` this sink's ledger says it published} of the asset."""


def missing_columns(existing: Iterable[str]) -> list[pa.Field]:
    """The ledger's columns a ledger table with `existing` columns lacks, for the sink to add."""
    have = set(existing)
    return [field for field in LEDGER_SCHEMA if field.name not in have]


class StaleLakeVersion(ValueError):
    """A sink asked to load a lake version older than the one it already holds."""


def refuse_older(context: dg.OutputContext, provenance: Mapping, sink: LedgerSink) -> None:
    """Raise StaleLakeVersion when a partition's lake version is older than the one the sink holds:
    of two runs loading one month, the one that read the lake first cannot overwrite the newer."""
    offered = {
        key: known["lake_version"]
        for key, known in provenance.items()
        if known.get("lake_version") is not None
    }
    if not offered:
        return
    asset = context.asset_key.to_user_string()
    held = sink.held_versions(asset)
    older = {
        key: (version, held[key]) for key, version in offered.items() if key in held and version < held[key]
    }
    if older:
        raise StaleLakeVersion(
            f"{asset}: refused to load lake versions older than those it holds: "
            + ", ".join(f"{key} version {version} < {newer}" for key, (version, newer) in older.items())
        )


LedgerRows = Callable[[Mapping[str | None, int | None]], pa.Table]


def write_audited(
    context: dg.OutputContext,
    obj,
    sink: LedgerSink,
    write: Callable[[Any, LedgerRows | None], T],
) -> T:
    """The one sequence of an audited write. `write(rows, ledger)` stores the rows (`obj` unwrapped
    of its `Audited`), and when `ledger` is given appends `ledger(rows loaded by partition)` in the
    data's transaction; if it fails, the failed attempt's ledger rows are appended in a transaction of
    their own, and its error is raised."""
    keys: list[str | None] = list(context.asset_partition_keys) if context.has_asset_partitions else [None]
    rows, provenance = unwrap(obj, keys)
    if provenance is None:
        return write(rows, None)

    def ledger(loaded: Mapping[str | None, int | None]) -> pa.Table:
        # Again within the data's transaction, just before it commits (where PostgreSQL's write holds
        # the month's writer lock): a newer version that another writer committed while this one
        # waited is not overwritten, and a run that ended meanwhile publishes nothing.
        refuse_older(context, provenance, sink)
        refuse_if_run_ended(context)
        return ledger_rows(context, provenance, loaded)

    try:
        refuse_older(context, provenance, sink)  # before any row moves
        refuse_if_run_ended(context)
        return write(rows, ledger)
    except Exception as error:
        record_failure(context, provenance, error, sink)
        raise


def unwrap(obj, keys: list[str | None]) -> tuple[Any, dict[str | None, Mapping[str, Any]] | None]:
    """The rows to store (the same shape as given: a value, or a dict by partition) and the provenance
    by partition key (`keys`: the output's partition keys, or [None]); (obj, None) when nothing is
    audited."""
    if isinstance(obj, Audited):
        if len(keys) != 1:
            raise ValueError(f"one Audited value for partitions {keys}: give a dict, one a partition")
        return obj.rows, {keys[0]: obj.provenance}
    if isinstance(obj, dict) and obj and all(isinstance(v, Audited) for v in obj.values()):
        return {k: v.rows for k, v in obj.items()}, {k: v.provenance for k, v in obj.items()}
    return obj, None


def ledger_rows(
    context: dg.OutputContext,
    provenance: Mapping[str | None, Mapping[str, Any]],
    loaded: Mapping[str | None, int | None],
    error: Exception | None = None,
    secrets: tuple[str, ...] = (),
) -> pa.Table:
    """The ledger rows of a write: published with the rows loaded, or failed with its error."""
    now = datetime.now(UTC)
    first_line = (
        redact(str(error).strip().splitlines()[0], *secrets) if error and str(error).strip() else None
    )
    rows = []
    for key, known in provenance.items():
        rows.append(
            {name: known.get(name) for name in LEDGER_SCHEMA.names}
            | {
                "asset_key": context.asset_key.to_user_string(),
                "partition_key": key,
                "run_id": context.run_id,
                "outcome": FAILED if error else PUBLISHED,
                "error": first_line or (type(error).__name__ if error else None),
                "rows_loaded": None if error else loaded.get(key),
                "published_at": None if error else now,
            }
        )
    return pa.Table.from_pylist(rows, LEDGER_SCHEMA)


def record_failure(context: dg.OutputContext, provenance, error: Exception, sink: LedgerSink) -> None:
    """Append the failed attempt's ledger rows on their own; a ledger that cannot be written either
    (the store is down) is logged, and the write's own error is the one raised."""
    try:
        sink.append_ledger(ledger_rows(context, provenance, {}, error))
    except Exception as failure:  # noqa: BLE001 (logged; the caller raises the write's error)
        context.log.warning(
            f"{LEDGER_TABLE}: the failed attempt could not be recorded: {type(failure).__name__}"
        )
