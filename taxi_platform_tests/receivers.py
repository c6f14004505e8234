"""Real receivers of alerts: an HTTP server taking webhooks, and an SMTP server (aiosmtpd) taking mail."""

import email
import email.policy
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Delivery:
    path: str
    content_type: str
    body: bytes

    def fields(self) -> dict[str, str]:
        """A form body's fields."""
        return dict(urllib.parse.parse_qsl(self.body.decode()))


class WebhookReceiver:
    """Takes every POST on loopback and keeps it."""

    def __init__(self):
        self.deliveries: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                size = int(self.headers.get("Content-Length") or 0)
                receiver.deliveries.append(
                    Delivery(self.path, self.headers.get("Content-Type", ""), self.rfile.read(size))
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_port}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def on(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]


class SmtpReceiver:
    """A real SMTP server on loopback keeping every message."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        with socket.socket() as probe:  # aiosmtpd needs a concrete port to check it started
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def __enter__(self):
        from aiosmtpd.controller import Controller

        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                receiver.messages.append(message)  # type: ignore[arg-type]
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def url(self, to: str = "ops@example.com") -> str:
        """An Apprise mailto:// URL delivering here, in the clear."""
        return f"mailto://127.0.0.1:{self.port}?from=taxi@example.com&to={to}&mode=insecure"

    @staticmethod
    def text(message) -> str:
        return message.get_body(preferencelist=("plain",)).get_content()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns a truthy value; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
