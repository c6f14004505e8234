"""The landing zone: `landing/` under the lake's root (a folder or a bucket prefix), where people drop
source files by hand.

A file named like a source file, `<dataset>_tripdata_<YYYY-MM>.csv.gz` or `.parquet`, is that month of
that dataset. Its run reads it instead of the public source (the run tag `taxi/landed_file` names it);
after the run succeeds it moves to `landing/processed/`. One code path for a folder and a bucket, through
the lake's `filesystem`.
"""

import hashlib
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs

from taxi_platform.datasets import DATASETS, DatasetSpec
from taxi_platform.io_managers.lake import filesystem

LANDED_FILE_TAG = "taxi/landed_file"
_NAME = re.compile(r"^(?P<dataset>\w+?)_tripdata_(?P<month>\d{4}-\d{2})\.(?P<ext>csv\.gz|parquet)$")


class BadLandedName(ValueError):
    """A landed file whose name does not say which dataset and month it holds."""


@dataclass(frozen=True)
class LandedName:
    spec: DatasetSpec
    month: str
    form: str  # csv | parquet


@dataclass(frozen=True)
class LandedFile:
    uri: str  # a local path, or gs://bucket/prefix/landing/<name>
    name: str
    size: int
    mtime_ns: int

    @property
    def version(self) -> str:
        return hashlib.sha256(f"{self.size}|{self.mtime_ns}".encode()).hexdigest()[:16]


def parse(name: str) -> LandedName:
    """The dataset, month and form a landed file's name declares; BadLandedName says what is wrong."""
    match = _NAME.match(name)
    if not match:
        raise BadLandedName(
            f"{name}: not named like a source file (<dataset>_tripdata_<YYYY-MM>.csv.gz or .parquet)"
        )
    spec, month = DATASETS.get(match["dataset"]), match["month"]
    if spec is None:
        raise BadLandedName(f"{name}: unknown dataset {match['dataset']!r}, not one of {sorted(DATASETS)}")
    if month not in spec.partitions_def.get_partition_keys():
        raise BadLandedName(
            f"{name}: {month} is not a month of {spec.name} ({spec.first_month} to the last complete month)"
        )
    return LandedName(spec, month, "csv" if match["ext"] == "csv.gz" else "parquet")


def list_landed(lake_root: str, gcs_endpoint: str = "") -> list[LandedFile]:
    """The files directly in `<lake_root>/landing/` (not in processed/), by name."""
    fs, base = filesystem(lake_root, gcs_endpoint)
    selector = pafs.FileSelector(f"{base.rstrip('/')}/landing", allow_not_found=True)
    scheme = lake_root.split("://")[0] + "://" if "://" in lake_root else ""
    return sorted(
        (
            LandedFile(f"{scheme}{info.path}", info.base_name, info.size, info.mtime_ns or 0)
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ),
        key=lambda file: file.name,
    )


def copy_to_local(uri: str, dest: Path, gcs_endpoint: str = "") -> tuple[int, str, str]:
    """Copy a landed file to `dest`; returns its bytes, sha256 and modification time (ISO 8601)."""
    fs, path = filesystem(uri, gcs_endpoint)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"landed file {uri} does not exist")
    digest, size = hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path, compression=None) as source, open(dest, "wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    modified = datetime.fromtimestamp((info.mtime_ns or 0) / 1e9, UTC).isoformat()
    return size, digest.hexdigest(), modified


def move_to_processed(uri: str, gcs_endpoint: str = "") -> str | None:
    """Move a landed file to `landing/processed/` (replacing one of the same name); returns the new
    URI, or None when the file is no longer there (already moved: moving is idempotent)."""
    fs, path = filesystem(uri, gcs_endpoint)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    folder, name = posixpath.split(path)
    target = f"{folder}/processed/{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(target), recursive=True)
    fs.copy_file(path, target)  # copy then delete: a bucket has no rename
    fs.delete_file(path)
    return uri[: len(uri) - len(name)] + f"processed/{name}"
