"""The built-in ``/metrics`` HTTP(S) server: bounded, authenticated, and quiet.

Bounds, so that no client can hold the endpoint:

- at most ``max_connections`` connections are served at once, each on its own
  daemon thread; one more is answered ``503`` with ``Retry-After: 1`` straight
  from the accept loop (HTTPS: closed at once, a handshake would need a thread)
  and closed, so the thread count never exceeds the cap;
- the TLS handshake and the complete request head must arrive within
  ``request_timeout`` seconds of the connection (of the previous response, on
  a kept-alive connection), however slowly the bytes drip; then the connection
  is closed;
- the response must be taken within ``RESPONSE_TIMEOUT_S``; a request head
  larger than ``MAX_REQUEST_HEAD_BYTES`` gets ``431``.

``http.server`` already rejects garbage request lines and oversized header
lines. Nothing is logged per request, so no header value can reach a log.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import math
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from meshmetrics._log import RateLimitedLog
from meshmetrics._serve.exposition import EndpointAuth, respond

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 10.0
RESPONSE_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 128
MAX_REQUEST_HEAD_BYTES = 128 * 1024  # the sum of all lines; http.server bounds each to 64 KiB
MAX_DISCARDED_BODY_BYTES = 64 * 1024
SERVER_NAME = "meshmetrics"

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 20\r\n"
    b"\r\n"
    b"Too many connections"
)
_warnings = RateLimitedLog()


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


class _HeadTooLargeError(http.client.HTTPException):
    """Raised while reading a request head past ``MAX_REQUEST_HEAD_BYTES`` (``http.server`` answers 431)."""


class _Deadline:
    """A connection's socket whose every read and write ends by one deadline, not per call."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.read_budget = MAX_REQUEST_HEAD_BYTES

    def restart(self, seconds: float, read_budget: int = MAX_REQUEST_HEAD_BYTES) -> None:
        """Give the next phase ``seconds`` from now and ``read_budget`` bytes."""
        self.deadline = time.monotonic() + seconds
        self.read_budget = read_budget

    def arm(self) -> None:
        """Let the next socket call block only until the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(remaining)


class _Reader(io.RawIOBase):
    def __init__(self, connection: _Deadline) -> None:
        self._connection = connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        connection = self._connection
        if connection.read_budget <= 0:
            raise _HeadTooLargeError(f"request head larger than {MAX_REQUEST_HEAD_BYTES} bytes")
        connection.arm()
        view = memoryview(buffer).cast("B")
        count = connection.sock.recv_into(view[: connection.read_budget])
        connection.read_budget -= count
        return count


class _Writer(io.BufferedIOBase):
    def __init__(self, connection: _Deadline) -> None:
        self._connection = connection

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            self._connection.arm()
            sent += self._connection.sock.send(view[sent:])
        return sent


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def __init__(
        self, request: socket.socket, client_address: Any, server: _Server, deadline: float | None = None
    ) -> None:
        self._first_deadline = deadline
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        with contextlib.suppress(OSError):
            # headers and body are two writes: without this, Nagle holds the body for a delayed ACK
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = self.request
        self._deadline = _Deadline(self.request, self._first_deadline or math.inf)
        self.rfile = io.BufferedReader(_Reader(self._deadline))
        self.wfile = _Writer(self._deadline)

    def handle_one_request(self) -> None:
        if self._first_deadline is None:  # a kept-alive connection: the clock starts now
            self._deadline.restart(self.server.request_timeout)
        self._first_deadline = None
        super().handle_one_request()

    def __getattr__(self, name: str) -> Callable[[], None]:
        # http.server dispatches to do_<METHOD> and answers 501 when there is none;
        # every method is answered here instead (405 with Allow for all but GET and HEAD)
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _answer(self) -> None:
        keep_alive = self._discard_body()
        status, headers, body = respond(
            method=self.command,
            path=self.path,
            authorization=self._field("Authorization"),
            accept=self._field("Accept"),
            accept_encoding=self._field("Accept-Encoding"),
            registry=self.server.registry,
            auth=self.server.auth,
            native_histograms=self.server.native_histograms,
        )
        self._deadline.restart(RESPONSE_TIMEOUT_S)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if not keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _field(self, name: str) -> str | None:
        # repeated fields combine (RFC 9110 5.3): two Authorization headers then match no secret
        values = self.headers.get_all(name)
        return ", ".join(values) if values else None

    def _discard_body(self) -> bool:
        """Read past a small request body so the connection stays usable; False: close it instead."""
        if self.headers.get("Transfer-Encoding"):
            return False
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return False
        if not 0 <= length <= MAX_DISCARDED_BODY_BYTES:
            return False
        self._deadline.read_budget = max(self._deadline.read_budget, length)
        return len(self.rfile.read(length)) == length

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:  # noqa: ARG002
        """Answer an error with its standard phrase only: http.server's details quote the request back."""
        super().send_error(code)

    def version_string(self) -> str:
        """No Python version in the ``Server`` header."""
        return SERVER_NAME

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """No access log on stderr: the application owns its logs, and request lines are not ours to echo."""


class _Server(HTTPServer):
    """Accepts connections and serves each on a thread of its own, at most ``max_connections`` at once."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        tls: ssl.SSLContext | None,
        *,
        registry: CollectorRegistry,
        auth: EndpointAuth,
        max_connections: int,
        request_timeout: float,
    ) -> None:
        self.address_family = family
        self.tls = tls
        self.registry = registry
        self.auth = auth
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.native_histograms = False
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup of the host (slow, and unused)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a thread of its own, or refuse it when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        deadline = time.monotonic() + self.request_timeout
        try:
            threading.Thread(
                target=self._serve_connection,
                args=(request, client_address, deadline),
                name="meshmetrics-metrics-connection",
                daemon=True,
            ).start()
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        """A connection that could not be handed to a thread (say, no thread left): logged, never traced."""
        _warnings.warning(
            "handoff", "metrics_endpoint_connection_failed", error=type(sys.exc_info()[1]).__qualname__
        )

    def _serve_connection(self, request: socket.socket, client_address: Any, deadline: float) -> None:
        connection = request
        try:
            if self.tls is not None:
                connection = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                if not _handshake(connection, deadline):
                    return
            _Handler(connection, client_address, self, deadline)
        except Exception:  # noqa: S110 - a misbehaving client is not worth a traceback (nor a log of what it sent)
            pass
        finally:
            self.shutdown_request(connection)
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        _warnings.warning("busy", "metrics_endpoint_connection_limit", max_connections=self.max_connections)
        with contextlib.suppress(OSError):
            request.settimeout(0.0)  # non-blocking: the accept loop must never wait on a client
            if self.tls is None:
                # read what already arrived, so closing does not reset the connection before the 503 is read
                with contextlib.suppress(BlockingIOError):
                    request.recv(MAX_REQUEST_HEAD_BYTES)
                request.send(_BUSY)
        self.shutdown_request(request)


def _handshake(connection: ssl.SSLSocket, deadline: float) -> bool:
    """The TLS handshake, done by ``deadline`` however slowly the client sends (unlike per-read timeouts)."""
    connection.settimeout(0.0)  # non-blocking
    while True:
        try:
            connection.do_handshake()
        except ssl.SSLWantReadError:
            readable, writable = [connection], []
        except ssl.SSLWantWriteError:
            readable, writable = [], [connection]
        except OSError:  # ssl.SSLError included: a failed handshake, a plain-HTTP client, a reset
            return False
        else:
            connection.settimeout(None)  # blocking again; reads and writes set their own deadlines
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
            return False


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
    registry: CollectorRegistry,
    host: str,
    port: int,
    auth: EndpointAuth,
    tls: TLSConfig | None = None,
    *,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT_S,
    native_histograms: bool = False,
) -> MetricsServer:
    """Serve ``registry`` on ``/metrics`` from a daemon thread.

    ``native_histograms`` lets a scraper that asks for Prometheus' protobuf
    format get native histograms (see :func:`~meshmetrics._serve.exposition.respond`).

    ``max_connections`` bounds the connections (and threads) served at once;
    ``request_timeout`` is the time a connection has to deliver its TLS
    handshake and complete request head (see the module's docstring).
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    if not 0 < request_timeout < math.inf:
        raise ValueError(f"request_timeout must be > 0 seconds and finite, got {request_timeout}")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    server = _Server(
        (str(address[0]), int(address[1])),
        family,
        tls.context() if tls else None,
        registry=registry,
        auth=auth,
        max_connections=max_connections,
        request_timeout=request_timeout,
    )
    server.native_histograms = native_histograms
    thread = threading.Thread(target=server.serve_forever, name="meshmetrics-metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread, host, "https" if tls else "http")
