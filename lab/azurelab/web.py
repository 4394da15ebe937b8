"""The little HTTP plumbing the lab's JSON servers share (standard library ``http.server`` only).

Not emulated: HTTP/2, chunked request bodies, compression; every response carries ``Content-Length`` so the
SDKs' keep-alive connections work.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .config import HOST

log = logging.getLogger("azurelab")


class LabHTTPServer(ThreadingHTTPServer):
    """A threading server bound to 127.0.0.1 that carries the component (``app``) its handlers serve."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], app, tls: ssl.SSLContext | None = None):
        super().__init__((HOST, port), handler)
        self.app = app
        self.tls = tls

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the request's own thread, so one slow client cannot stall the accept loop.
        if self.tls is not None:
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)
        request.close()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError)):
            # Port probes (``up`` waiting for the port) and clients dropping a connection: not worth a traceback.
            log.debug("connection from %s ended: %r", client_address, error)
        else:
            log.warning("connection from %s failed", client_address, exc_info=True)

    def start(self, name: str) -> threading.Thread:
        # A short poll interval keeps shutdown() (and so `down`) quick.
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True)
        thread.start()
        return thread


class JsonHandler(BaseHTTPRequestHandler):
    """Base handler: parsed path and query, JSON/form bodies, JSON answers, logging to the lab log."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server_version = "azurelab"
    sys_version = ""

    @property
    def app(self):
        return self.server.app

    @property
    def route(self) -> str:
        """The path without its query string."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, last value wins, keys as sent."""
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def read_form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.read_body().decode(), keep_blank_values=True).items()}

    def send_json(self, status: int, body, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def reset_connection(self) -> None:
        """Answer nothing: close the connection with a TCP RST (``SO_LINGER`` 0, no TLS close_notify), as a load
        balancer or a crashed backend does. The client's read fails with ECONNRESET."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        log.info("%s %s %s reset", type(self).__name__, self.command, self.route)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.info("%s %s", type(self).__name__, format % args)

    def log_request(self, code="-", size="-"):
        # Method, path and status only: never query strings or bodies, which may carry secrets.
        log.info("%s %s %s %s", type(self).__name__, self.command, self.route, code)
