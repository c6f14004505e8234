"""A real HTTP server on loopback standing in for both public sources, with faults on demand.

It serves files from an overlay folder (files a test writes) and then from the sample-data folder,
whose layout mirrors the public URLs. ETag and Last-Modified are sent as the public sources do.
"""

import email.utils
import hashlib
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTML_PAGE = b"<!DOCTYPE html><html><body>Rate limit exceeded, sign in</body></html>"


class SourceServer:
    def __init__(self, *roots: Path):
        self.roots = roots
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"source": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, path: str, *faults: str) -> None:
        """Answer the next requests of `path` with these faults: 500, html, truncated."""
        self.faults[path].extend(faults)

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
        fault = self.source.faults[self.path].pop(0) if self.source.faults[self.path] else None
        if fault == "500":
            return self._send(500, b"upstream error", "text/plain", body)
        if fault == "html":
            return self._send(200, HTML_PAGE, "text/html; charset=utf-8", body)
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
        self._send(200, data, "application/octet-stream", body, headers)

    def _send(self, status, data, content_type, body, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)
