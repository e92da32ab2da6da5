"""The built-in ``/metrics`` HTTP(S) server: bounded, authenticated, and quiet.

Each connection has its own daemon thread with a socket timeout, so a slow or
stalled client cannot hold the endpoint; ``http.server`` already rejects
garbage request lines and oversized headers.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from meshmetrics._serve.exposition import EndpointAuth, respond

CLIENT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TLSConfig:
    """Server certificate and, for mutual TLS, the CA that client certificates must chain to."""

    certfile: str
    keyfile: str
    client_cafile: str | None = None

    def context(self) -> ssl.SSLContext:
        """An SSL context for the server side."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certfile, self.keyfile)
        if self.client_cafile:
            context.load_verify_locations(cafile=self.client_cafile)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], family: socket.AddressFamily, tls: ssl.SSLContext | None
    ) -> None:
        self.address_family = family
        self.tls = tls
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.settimeout(CLIENT_TIMEOUT_S)
        if self.tls is not None:
            # handshake lazily in the connection's own thread, not in the accept loop
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that misbehaves is not worth a traceback on stderr."""


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT_S
    registry: CollectorRegistry
    auth: EndpointAuth

    def _answer(self) -> None:
        status, headers, body = respond(
            method=self.command,
            path=self.path,
            authorization=self.headers.get("Authorization"),
            accept=self.headers.get("Accept"),
            accept_encoding=self.headers.get("Accept-Encoding"),
            registry=self.server.registry,
            auth=self.server.auth,
        )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = _answer  # noqa: N815 - http.server's naming
    do_HEAD = _answer  # noqa: N815
    do_POST = _answer  # noqa: N815
    do_PUT = _answer  # noqa: N815
    do_DELETE = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """No access log on stderr: the application owns its logs."""


@dataclass
class MetricsServer:
    """A running ``/metrics`` server."""

    server: _Server
    thread: threading.Thread
    host: str
    scheme: str

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def close_inherited(self) -> None:
        """In a forked child: release the parent's listening socket without touching its thread."""
        self.server.server_close()


def serve(
    registry: CollectorRegistry, host: str, port: int, auth: EndpointAuth, tls: TLSConfig | None = None
) -> MetricsServer:
    """Serve ``registry`` on ``/metrics`` from a daemon thread."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    server = _Server((str(address[0]), int(address[1])), family, tls.context() if tls else None)
    server.registry = registry  # type: ignore[attr-defined]
    server.auth = auth  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="meshmetrics-metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread, host, "https" if tls else "http")
