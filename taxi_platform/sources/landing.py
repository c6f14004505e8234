"""The landing zone: `landing/` under the lake's root (a folder or a bucket prefix), where people drop
source files by hand.

A file named like a source file, `<dataset>_tripdata_<YYYY-MM>.csv.gz` or `.parquet`, is that month of
that dataset. Its run reads it instead of the public source (the run tag `taxi/landed_file` names it);
after the run succeeds it moves to `landing/processed/`. A tag is trusted only as far as `inside_landing`
places it directly in `landing/`. One code path for a folder and a bucket, through the lake's `filesystem`.
"""

import hashlib
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs

from taxi_platform.datasets import DATASETS, DatasetSpec
from taxi_platform.lake.files import filesystem

LANDED_FILE_TAG = "taxi/landed_file"
_NAME = re.compile(r"^(?P<dataset>\w+?)_tripdata_(?P<month>\d{4}-\d{2})\.(?P<ext>csv\.gz|parquet)$")


class BadLandedName(ValueError):
    """A landed file whose name does not say which dataset and month it holds."""


class OutsideLanding(ValueError):
    """A path that is not of a file directly in the landing folder."""


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
    # A local file's status change time: any write or os.utime sets it, nothing sets it back. 0 in a
    # bucket, where mtime is the object's update time, which nobody can set.
    ctime_ns: int = 0

    @property
    def version(self) -> str:
        """Changes whenever the file may have: its size, modification time and status change time."""
        return hashlib.sha256(f"{self.size}|{self.mtime_ns}|{self.ctime_ns}".encode()).hexdigest()[:16]


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


def landing_folder(lake_root: str) -> str:
    """`landing/` under the lake's root: a resolved local path, or a gs:// URI."""
    if "://" in lake_root:
        return f"{lake_root.rstrip('/')}/landing"
    return Path(lake_root, "landing").resolve().as_posix()


def inside_landing(path: str, lake_root: str) -> str:
    """`path` as a file directly in `<lake_root>/landing/` (not in a subfolder such as processed/): a
    local path with `..` and symlinks resolved, a gs:// URI as given; OutsideLanding names any other."""
    landing = landing_folder(lake_root)
    if "://" in lake_root:
        folder, _, name = path.rpartition("/")
        if folder == landing and name not in ("", ".", ".."):
            return path
        raise OutsideLanding(f"{path} is not a file directly in the landing folder {landing}/")
    resolved = Path(path).resolve()
    if resolved.parent.as_posix() == landing:
        return resolved.as_posix()
    shown = path if resolved.as_posix() == path else f"{path} (resolved: {resolved.as_posix()})"
    raise OutsideLanding(f"{shown} is not a file directly in the landing folder {landing}/")


def list_landed(lake_root: str, gcs_endpoint: str = "") -> list[LandedFile]:
    """The files directly in `<lake_root>/landing/` (not in processed/), by name."""
    fs, base = filesystem(lake_root, gcs_endpoint)
    selector = pafs.FileSelector(f"{base.rstrip('/')}/landing", allow_not_found=True)
    scheme = lake_root.split("://")[0] + "://" if "://" in lake_root else ""
    local = isinstance(fs, pafs.LocalFileSystem)
    files = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        try:
            ctime_ns = os.stat(info.path).st_ctime_ns if local else 0
        except FileNotFoundError:  # gone since it was listed
            continue
        files.append(
            LandedFile(f"{scheme}{info.path}", info.base_name, info.size, info.mtime_ns or 0, ctime_ns)
        )
    return sorted(files, key=lambda file: file.name)


def _chunks(fs: pafs.FileSystem, path: str) -> Iterator[bytes]:
    with fs.open_input_stream(path, compression=None) as source:
        while chunk := source.read(1 << 20):
            yield chunk


def sha256_of(uri: str, gcs_endpoint: str = "") -> str:
    """The sha256 of a landed file's bytes."""
    fs, path = filesystem(uri, gcs_endpoint)
    digest = hashlib.sha256()
    for chunk in _chunks(fs, path):
        digest.update(chunk)
    return digest.hexdigest()


def copy_to_local(uri: str, dest: Path, gcs_endpoint: str = "") -> tuple[int, str, str]:
    """Copy a landed file to `dest`; returns its bytes, sha256 and modification time (ISO 8601)."""
    fs, path = filesystem(uri, gcs_endpoint)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"landed file {uri} does not exist")
    digest, size = hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for chunk in _chunks(fs, path):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    modified = datetime.fromtimestamp((info.mtime_ns or 0) / 1e9, UTC).isoformat()
    return size, digest.hexdigest(), modified


def move_to_processed(uri: str, lake_root: str, gcs_endpoint: str = "") -> str | None:
    """Move a landed file to `landing/processed/` (replacing one of the same name); returns the new
    URI, or None when the file is no longer there (already moved: moving is idempotent).
    OutsideLanding, and nothing moved, when `uri` is not a file directly in the landing folder."""
    landed = inside_landing(uri, lake_root)
    fs, path = filesystem(landed, gcs_endpoint)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    folder, name = posixpath.split(path)
    target = f"{folder}/processed/{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(target), recursive=True)
    fs.copy_file(path, target)  # copy then delete: a bucket has no rename
    fs.delete_file(path)
    return f"{landing_folder(lake_root)}/processed/{name}"
