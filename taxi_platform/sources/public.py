"""Where a month's file lives, probing its version, and fetching it: streamed to disk, retried, verified.

A month comes from the public source `locate` picks, or from a file dropped into the lake's landing zone.
"""

import contextlib
import hashlib
import math
import os
import select
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import dagster as dg
import requests
from pydantic import Field

from taxi_platform.datasets import DatasetSpec
from taxi_platform.retrying import SOURCE_DOWNLOAD, RetriesExhausted, RetrySettings, RunLogged, retried
from taxi_platform.sources import landing

RELEASES_URL = "https://github.com/DataTalksClub/nyc-tlc-data/releases/download"
TLC_URL = "https://d37ci6vzurychx.cloudfront.net"
# First bytes each form must start with: a gzip stream, a parquet file.
MAGIC = {"csv": b"\x1f\x8b", "parquet": b"PAR1"}
SourceChoice = Literal["auto", "releases", "tlc"]
SOURCE_CHOICES: tuple[SourceChoice, ...] = get_args(SourceChoice)


class SourceError(Exception):
    """A source file that cannot be used; the message names the URL and the month."""


class MonthNotPublished(SourceError):
    """The source answered 404 (or 403, as CloudFront does for a missing object): not published."""


class SourceUnavailable(SourceError):
    """Connection errors, 5xx or 429 persisted through the retry time, or the download passed its
    deadline; worth trying again later."""


@dataclass(frozen=True)
class SourceFile:
    """One month's file at one source."""

    kind: str  # releases | tlc | landing
    form: str  # csv (gzip-compressed) | parquet
    url: str  # an http(s) URL; for a landed file, its path or gs:// URI
    label: str  # "green 2020-10", for messages


@dataclass(frozen=True)
class FileVersion:
    """What identifies one publication of a file: ETag, Last-Modified and size, as the source sends them."""

    etag: str | None
    last_modified: str | None
    bytes: int | None

    @property
    def id(self) -> str:
        """A short, stable id of the version, for cursors and run keys."""
        text = f"{self.etag or ''}|{self.last_modified or ''}|{self.bytes if self.bytes is not None else ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return f"ETag {self.etag}, Last-Modified {self.last_modified}, {self.bytes} bytes"

    @classmethod
    def of_materialization(cls, metadata: Mapping[str, Any]) -> "FileVersion":
        """The version a raw materialization recorded (see `Download.metadata`)."""

        def value(name):
            entry = metadata.get(name)
            return getattr(entry, "value", entry) or None

        size = value("source_bytes")
        return cls(value("source_etag"), value("source_last_modified"), int(size) if size else None)


@dataclass(frozen=True)
class Download:
    url: str
    path: Path
    bytes: int
    sha256: str
    etag: str | None
    last_modified: str | None

    @property
    def metadata(self) -> dict:
        return {
            "source_url": dg.MetadataValue.url(self.url),
            "source_bytes": self.bytes,
            "source_sha256": self.sha256,
            "source_etag": self.etag or "",
            "source_last_modified": self.last_modified or "",
        }


class TaxiSource(RunLogged):
    """The two public sources of trip files: the course's CSV.gz releases and the TLC's parquet."""

    releases_url: str = Field(default=RELEASES_URL, description="Base of the course's releases.")
    tlc_url: str = Field(default=TLC_URL, description="Base of the TLC's trip-data and misc files.")
    source: SourceChoice = Field(
        default="auto",
        description="auto: the releases for the months they hold, the TLC otherwise; or releases|tlc.",
    )
    retry: RetrySettings = Field(
        default=SOURCE_DOWNLOAD,
        description="Tries of a download meeting connection errors, resets, 5xx and 429; when they run "
        "out, SourceUnavailable, for the step's retry policy.",
    )
    timeout_seconds: float = Field(
        default=60.0, description="Longest wait to connect, or for any one read of the answer."
    )
    deadline_seconds: float = Field(
        default=1800.0,
        description="Longest a download may take in all, tries included; past it the connection is "
        "cut and the download fails with SourceUnavailable (for the step's retry policy), so a "
        "trickling source cannot hold a download slot.",
    )
    gcs_endpoint: str = Field(
        default="", description="A Cloud Storage emulator's host, for landed files in a bucket."
    )

    def locate(self, spec: DatasetSpec, month: str, landed: str | None = None) -> SourceFile:
        """The one place that decides which source serves a month: the landed file if one is given
        (its name must be the month's), else the releases or the TLC."""
        if landed:
            try:
                name = landing.parse(landed.rsplit("/", 1)[-1])
            except landing.BadLandedName as error:
                raise SourceError(f"landed file {landed}: {error}") from error
            if (name.spec, name.month) != (spec, month):
                raise SourceError(f"landed file {landed} is not {spec.name} {month}")
            return SourceFile("landing", name.form, landed, f"{spec.name} {month} (landed)")
        kind = self.source
        if kind == "auto":
            kind = "releases" if spec.releases and month in spec.releases else "tlc"
        label = f"{spec.name} {month}"
        if kind == "releases":
            name = spec.file_name(month, "csv")
            return SourceFile(kind, "csv", f"{self.releases_url}/{spec.name}/{name}", label)
        name = spec.file_name(month, "parquet")
        return SourceFile(kind, "parquet", f"{self.tlc_url}/trip-data/{name}", label)

    def zones_url(self) -> str:
        return f"{self.tlc_url}/misc/taxi_zone_lookup.csv"

    def probe(self, file: SourceFile) -> FileVersion | None:
        """The version of the published file from one HEAD request (redirects followed), or None when
        the source says it is not published (404, or CloudFront's 403). No retries: a sensor asks again
        on its next tick. Raises SourceUnavailable on connection errors and 5xx."""
        try:
            response = requests.head(file.url, allow_redirects=True, timeout=min(self.timeout_seconds, 10))
        except (requests.ConnectionError, requests.Timeout) as error:
            raise SourceUnavailable(f"{file.label}: HEAD {file.url} failed: {error}") from error
        if response.status_code in (403, 404):
            return None
        if response.status_code != 200:
            raise SourceUnavailable(f"{file.label}: HEAD {file.url} answered HTTP {response.status_code}")
        size = response.headers.get("Content-Length")
        return FileVersion(
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
            int(size) if size else None,
        )

    def fetch(self, file: SourceFile, folder: str | Path) -> Download:
        """The month's file as a local file in `folder`: downloaded, or copied from the landing zone."""
        dest = Path(folder) / file.url.rsplit("/", 1)[-1]
        if file.kind == "landing":
            try:
                size, sha256, modified = landing.copy_to_local(file.url, dest, self.gcs_endpoint)
            except OSError as error:
                raise SourceError(f"{file.label}: cannot read {file.url}: {error}") from error
            _verify_form(dest, file.url, file.label, file.form)
            return Download(file.url, dest, size, sha256, etag=None, last_modified=modified)
        return self.download(file.url, dest, file.label, file.form)

    def download(self, url: str, dest: Path, label: str, form: str | None = None) -> Download:
        """Stream `url` to `dest`. Connection errors, resets, 5xx and 429 are tried again under
        `retry`, then raise SourceUnavailable; so does passing `deadline_seconds`. Any other answer,
        or a file not of `form`, fails at once."""
        deadline = time.monotonic() + self.deadline_seconds
        budget = min(self.deadline_seconds, math.inf if self.retry.budget is None else self.retry.budget)
        try:
            return retried(
                lambda: self._download_once(url, dest, label, form, deadline),
                self.retry.model_copy(update={"budget": budget}),
                transient=lambda error: isinstance(error, _Transient),
                log=self.log,
                what=label,
                where=url,
                describe=str,
            )
        except RetriesExhausted as exhausted:
            raise SourceUnavailable(str(exhausted)) from exhausted.last

    def _download_once(self, url: str, dest: Path, label: str, form: str | None, deadline: float) -> Download:
        past_deadline = SourceUnavailable(
            f"{label}: {url} did not finish within its deadline (deadline_seconds {self.deadline_seconds:g})"
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise past_deadline
        try:
            response = requests.get(url, stream=True, timeout=min(self.timeout_seconds, remaining))
        except (requests.ConnectionError, requests.Timeout) as error:
            if time.monotonic() >= deadline:
                raise past_deadline from error
            raise _Transient(error) from error
        with response:
            if response.status_code in (403, 404):
                raise MonthNotPublished(f"{label} is not published: {url} answered {response.status_code}")
            if response.status_code >= 500 or response.status_code == 429:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise SourceError(f"{label}: {url} answered HTTP {response.status_code}")
            if "text/html" in response.headers.get("Content-Type", ""):
                raise SourceError(f"{label}: {url} returned an HTML page, not the data file")
            digest, size = hashlib.sha256(), 0
            dest.parent.mkdir(parents=True, exist_ok=True)
            with _Watchdog(response, deadline - time.monotonic()) as watchdog:
                try:
                    with open(dest, "wb") as out:
                        for chunk in response.iter_content(chunk_size=1 << 20):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                    # A read times out after at most the time left at the request: then it is the deadline.
                    if watchdog.fired or time.monotonic() >= deadline:
                        raise past_deadline from error
                    raise _Transient(f"connection broke after {size} bytes: {error}") from error
            if watchdog.fired:  # an answer without Content-Length ends quietly when cut
                raise past_deadline
            _verify_form(dest, url, label, form)
            return Download(
                url=url,
                path=dest,
                bytes=size,
                sha256=digest.hexdigest(),
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )


class _Transient(Exception):
    """What is transient at the source: a connection error, a reset, 5xx or 429, within the deadline."""


class _Watchdog:
    """Shuts the answer's socket after `seconds`, which ends a read blocked on it: a source that
    trickles cannot hold a download past its deadline. It waits in `select` on a pipe of its own (which
    `__exit__` writes to), whose timeout is relative: a threading timer's wait until a monotonic
    instant stalls when the clock is shifted (libfaketime), and the deadline with it."""

    def __init__(self, response: requests.Response, seconds: float):
        self.response, self.seconds = response, max(0.0, seconds)
        self.fired = False
        self.wake_read, self.wake_write = os.pipe()
        self.thread = threading.Thread(target=self.watch, name="download-deadline", daemon=True)

    def __enter__(self) -> "_Watchdog":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # Joined: the answer (and its file descriptor) is closed only once the watch is done with it.
        os.write(self.wake_write, b"x")
        self.thread.join()
        os.close(self.wake_read)
        os.close(self.wake_write)

    def watch(self) -> None:
        woken, _, _ = select.select([self.wake_read], [], [], self.seconds)
        if not woken:
            self.fire()

    def fire(self) -> None:
        self.fired = True
        # The descriptor, not the connection's socket: http.client lets go of that once it has the headers
        # of an answer that ends with the connection. Shutting a duplicate shuts the connection.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.response.raw.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _verify_form(path: Path, url: str, label: str, form: str | None) -> None:
    """Reject what is plainly not the expected file: an HTML page, or the wrong kind of file."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise SourceError(f"{label}: {url} returned an HTML page, not the data file")
    if form and not head.startswith(MAGIC[form]):
        kind = "gzip-compressed CSV" if form == "csv" else "parquet file"
        raise SourceError(f"{label}: {url} is not a {kind} (it starts with {head[:16]!r})")
