"""A BigQuery emulator (bqemulator, DuckDB-backed) in its own process, reached by the real client.

The production code finds credentials through Application Default Credentials, as on GCP. Here ADC
is a GOOGLE_APPLICATION_CREDENTIALS service-account file, with a key made for the session, whose
token_uri is a local token endpoint; the emulator accepts any token. BIGQUERY_EMULATOR_HOST points
the client at the emulator.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PROJECT = "taxi-test-project"
EMULATOR = (
    "import sys; from duckdb_extensions import import_extension; "
    "import_extension('spatial'); import_extension('avro'); "
    "from bqemulator.cli import main; sys.argv[0] = 'bqemulator'; main()"
)


class _TokenEndpoint(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": "emulator", "expires_in": 3600, "token_type": "Bearer"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory):
    """Yields the project id; BIGQUERY_EMULATOR_HOST and ADC are set for the session."""
    import google.cloud.bigquery.client as bigquery_client

    rest, grpc = _free_port(), _free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-c",
            EMULATOR,
            "start",
            "--rest-port",
            str(rest),
            "--grpc-port",
            str(grpc),
            "--project",
            PROJECT,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tokens = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    adc = tmp_path_factory.mktemp("adc") / "application_default_credentials.json"
    adc.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "session",
                "private_key": _private_key_pem(),
                "client_email": f"taxi-tests@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{tokens.server_port}/token",
            }
        )
    )
    saved = {k: os.environ.get(k) for k in ("BIGQUERY_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    os.environ.update(
        BIGQUERY_EMULATOR_HOST=f"http://127.0.0.1:{rest}", GOOGLE_APPLICATION_CREDENTIALS=str(adc)
    )
    # The emulator reads multipart uploads only with this content type (a known bqemulator limit).
    generic_content_type = bigquery_client._GENERIC_CONTENT_TYPE
    bigquery_client._GENERIC_CONTENT_TYPE = "application/octet-stream"
    try:
        _wait_until_up(f"http://127.0.0.1:{rest}/", emulator)
        yield PROJECT
    finally:
        bigquery_client._GENERIC_CONTENT_TYPE = generic_content_type
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        emulator.terminate()
        emulator.wait(timeout=30)
        tokens.shutdown()


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the BigQuery emulator exited"
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the BigQuery emulator did not start")
