"""Connections to PostgreSQL: the URL's, or the embedded server of the local profile (started once per
process); what is transient for a write; and errors told without the URL's password."""

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import psycopg

from taxi_platform.redaction import redact

# Tried again: serialization failure, deadlock, lock not available (lock_timeout), and the server
# ending or refusing the session (admin/crash shutdown, starting up); class 08: connection exceptions.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}


class PostgresUnavailable(Exception):
    """No connection could be made; `transient` if trying again may help (the server unreachable,
    starting, or refusing more sessions; psycopg gives such failures no SQLSTATE to tell them from a
    refused login), not for a malformed URL."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


@contextmanager
def connect(url: str, embedded_dir: str) -> Iterator[psycopg.Connection]:
    """A connection to `url`, or to the embedded server in `embedded_dir` when `url` is empty;
    PostgresUnavailable, without the URL's secrets, if none can be made."""
    url = url or _embedded_url(embedded_dir)
    try:
        conn = psycopg.connect(url)
    except psycopg.Error as error:
        # Raised from None: the driver's own message may quote the password (a malformed URL).
        raise PostgresUnavailable(
            f"cannot connect to PostgreSQL: {type(error).__name__}:"
            f" {redact(str(error).strip(), *_url_secrets(url))}",
            transient=isinstance(error, psycopg.OperationalError),
        ) from None
    with conn:
        yield conn


def transient(error: BaseException) -> bool:
    """Whether trying the write again, in a new transaction, may succeed."""
    if isinstance(error, PostgresUnavailable):
        return error.transient
    if isinstance(error, psycopg.Error) and error.sqlstate:
        return error.sqlstate in _TRANSIENT_SQLSTATES or error.sqlstate.startswith("08")
    # No SQLSTATE: the client lost the connection (the server gone, the session terminated).
    return isinstance(error, psycopg.OperationalError)


def describe(error: BaseException, url: str) -> str:
    """The error's class and message, without the secrets of `url`."""
    if isinstance(error, PostgresUnavailable):
        return str(error)
    return f"{type(error).__name__}: {redact(str(error).strip(), *_url_secrets(url))}"


def _url_secrets(url: str) -> list[str]:
    """The password of a URL or key=value connection string, as written and decoded, found even when
    the rest of it is malformed."""
    found = re.findall(r"://[^:/@\s]*:([^@\s]+)@", url) + re.findall(r"\bpassword\s*=\s*'?([^\s'&]+)", url)
    return found + [unquote(secret) for secret in found]


_embedded_lock = threading.Lock()


def _embedded_url(folder: str) -> str:
    """Start (once per process) the embedded PostgreSQL of the local profile, and return its URL."""
    from pgserver.postgres_server import get_server

    if not folder:
        raise ValueError("no PostgreSQL URL and no folder for the embedded server")
    with _embedded_lock:
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
        return get_server(folder, cleanup_mode=None).get_uri()
