"""Where the lake's files lie: a local folder or a Cloud Storage bucket, through one code path.

pyarrow's filesystems write and read the data files; pyiceberg's catalog and FileIO (gcsfs in a
bucket) write and read the tables' metadata. In a bucket a "directory" is only a prefix of object
names. When STORAGE_EMULATOR_HOST names a Cloud Storage emulator (the convention of Google's client
libraries, which pyarrow does not read), the profile passes it as `gcs_endpoint` and both are pointed
there, without credentials.
"""

import posixpath
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from pyiceberg.catalog.sql import SqlCatalog


def filesystem(root: str, gcs_endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """The filesystem of a local folder or a URI, and the path of `root` in it; a gs:// URI is reached
    at `gcs_endpoint` (an emulator) when one is given."""
    if "://" not in root:
        return pafs.LocalFileSystem(), Path(root).resolve().as_posix()
    fs, base = pafs.FileSystem.from_uri(root)
    if fs.type_name == "gcs" and gcs_endpoint:
        url = _endpoint(gcs_endpoint)
        fs = pafs.GcsFileSystem(anonymous=True, scheme=url.scheme, endpoint_override=url.netloc)
    return fs, base.rstrip("/")


def uri(root: str, path: str) -> str:
    """The URI of filesystem path `path` of the lake under `root` (gs://bucket/..., or a local path)."""
    return f"{root.split('://')[0]}://{path}" if "://" in root else path


@cache
def catalog(url: str, warehouse: str, gcs_endpoint: str = "") -> SqlCatalog:
    """The lake's Iceberg catalog at SQLAlchemy `url` (one a process and settings); in a bucket the
    tables' metadata goes through gcsfs, pointed at the emulator when there is one."""
    properties = {"uri": url.replace("postgresql://", "postgresql+psycopg://", 1), "warehouse": warehouse}
    if warehouse.startswith("gs://"):
        properties["py-io-impl"] = "pyiceberg.io.fsspec.FsspecFileIO"
        if gcs_endpoint:
            url_parts = _endpoint(gcs_endpoint)
            properties |= {
                "gcs.service.host": f"{url_parts.scheme}://{url_parts.netloc}",
                "gcs.oauth2.token": "anon",
                "gcs.project-id": "emulator",  # an emulator has no project; gcsfs warns without one
            }
    return SqlCatalog("lake", **properties)


def _endpoint(gcs_endpoint: str):
    return urlsplit(gcs_endpoint if "://" in gcs_endpoint else f"http://{gcs_endpoint}")


def make_parent(fs: pafs.FileSystem, path: str) -> None:
    """Create the folder of `path` (a bucket has no folders to create)."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)
