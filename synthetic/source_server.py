"""A real HTTP server on loopback standing in for both public sources, with faults on demand.

It serves files from an overlay folder (files a test writes) and then from the sample-data folder,
whose layout mirrors the public URLs. ETag and Last-Modified are sent as the public sources do.
"""

import email.utils
import hashlib
import queue
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTML_PAGE = b"<!DOCTYPE html><html><body>Rate limit exceeded, sign in</body></html>"
# A trickle sends this many bytes, then pauses this long: a few hundred bytes a second.
TRICKLE_BYTES, TRICKLE_PAUSE_SECONDS = 16, 0.05


class SourceServer:
    def __init__(self, *roots: Path):
        self.roots = roots
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.outages: dict[str, tuple[float, int]] = {}  # path: (monotonic end, status)
        self.stopped = threading.Event()
        # Each trickle, as it ends (the client gone, the file sent or the server stopped): (path, bytes sent).
        self.trickles: queue.Queue[tuple[str, int]] = queue.Queue()
        self.requests: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"source": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        # A short poll: stopping the server waits for the serving loop to look up.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, path: str, *faults: str) -> None:
        """Answer the next requests of `path` with these faults, one a request:
        - an HTTP status ("500", "429", "403", ...): that status, a short text body;
        - "html": a sign-in page as text/html; "html_as_data": the same page as application/octet-stream;
        - "truncated": the first half of the file, as a whole answer (Content-Length of the half);
        - "cut": the whole file's Content-Length, then half of it, then the connection closes;
        - "drop": the connection closes before any answer;
        - "trickle": the whole file, a few bytes at a time with pauses, until the client goes or the server stops."""
        self.faults[path].extend(faults)

    def outage(self, path: str, seconds: float, status: int = 503) -> None:
        """Answer every request of `path` with `status` for `seconds` from now, then serve it normally.
        While the outage lasts, the faults queued by `fail` wait."""
        self.outages[path] = (time.monotonic() + seconds, status)

    def reset(self) -> None:
        """Forget every queued fault, outage and recorded request: a fresh server for the next user."""
        self.faults.clear()
        self.outages.clear()
        self.requests.clear()

    def find(self, path: str) -> Path | None:
        for root in self.roots:
            candidate = (root / path.lstrip("/")).resolve()
            if candidate.is_file() and candidate.is_relative_to(root.resolve()):
                return candidate
        return None


class _Handler(BaseHTTPRequestHandler):
    source: SourceServer

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool):
        self.source.requests.append((self.command, self.path))
        end, status = self.source.outages.get(self.path, (0.0, 0))
        if time.monotonic() < end:
            return self._send(status, f"HTTP {status}".encode(), "text/plain", body)
        fault = self.source.faults[self.path].pop(0) if self.source.faults[self.path] else None
        if fault == "drop":
            self.close_connection = True
            return
        if fault and fault.isdigit():
            return self._send(int(fault), f"HTTP {fault}".encode(), "text/plain", body)
        if fault in ("html", "html_as_data"):
            kind = "text/html; charset=utf-8" if fault == "html" else "application/octet-stream"
            return self._send(200, HTML_PAGE, kind, body)
        file = self.source.find(self.path)
        if file is None:
            return self._send(404, b"not found", "text/plain", body)
        data = file.read_bytes()
        if fault == "truncated":
            data = data[: len(data) // 2]
        stat = file.stat()
        headers = {
            "ETag": '"' + hashlib.md5(data).hexdigest() + '"',
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
        }
        if fault == "cut":
            headers["Content-Length"] = str(len(data))
            data = data[: len(data) // 2]
            self.close_connection = True
        if fault == "trickle" and body:
            return self._trickle(data, headers)
        self._send(200, data, "application/octet-stream", body, headers)

    def _trickle(self, data: bytes, headers: dict[str, str]) -> None:
        self._send(200, data, "application/octet-stream", False, headers)
        self.close_connection = True
        sent = 0
        try:
            # Paced by sleep, not by waiting on `stopped`: a timed wait stalls under a shifted clock.
            while sent < len(data) and not self.source.stopped.is_set():
                time.sleep(TRICKLE_PAUSE_SECONDS)
                sent += self.wfile.write(data[sent : sent + TRICKLE_BYTES]) or 0
        except OSError:  # the client cut the connection
            pass
        self.source.trickles.put((self.path, sent))

    def _send(self, status, data, content_type, body, headers=None):
        headers = {"Content-Length": str(len(data)), **(headers or {})}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)
