"""The /metrics endpoint under hostile or sloppy clients: methods, negotiation, HEAD, limits, secrets.

Every test runs a real server on 127.0.0.1 (port 0) over a fixed registry, and
talks to it with http.client or raw sockets; the WSGI and ASGI apps are called
directly with the same registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import http.client
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.registry import Collector

from meshmetrics._serve import http as serve_http
from meshmetrics._serve.apps import make_asgi_app, make_wsgi_app
from meshmetrics._serve.exposition import EndpointAuth, accepts_gzip
from tests.conftest import parse_samples
from tests.tls import make_certificates

HOST = "127.0.0.1"
TOKEN = "s3cr3t-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFUSED_METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW"]


def fixed_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("demo_requests", "Requests.", ["service"], registry=registry)
    for index in range(40):  # enough repetitive text that gzip changes the length a lot
        counter.labels(f"service-{index}").inc(index + 1)
    return registry


def totals(body: bytes) -> dict:
    return {key: value for key, value in parse_samples(body.decode()).items() if key[0].endswith("_total")}


EXPECTED = {("demo_requests_total", frozenset({("service", f"service-{i}")})): i + 1.0 for i in range(40)}

APP_REGISTRY = fixed_registry()  # one registry, so its _created samples read the same every time


@contextlib.contextmanager
def running(registry=None, auth=None, **limits) -> Iterator[serve_http.MetricsServer]:
    server = serve_http.serve(
        registry or fixed_registry(), HOST, 0, auth or EndpointAuth(bearer_token=TOKEN), **limits
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[serve_http.MetricsServer]:
    """One server for the tests that need no special limits (stopping one takes half a second)."""
    auth = EndpointAuth(bearer_token=TOKEN, basic_username="prom", basic_password="pw")
    with running(auth=auth) as server:
        yield server


def fetch(
    port: int, method: str = "GET", path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key.lower() == name.lower()]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def without_date(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(key, value) for key, value in headers if key.lower() != "date"]


def call_wsgi(method: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    app = make_wsgi_app(APP_REGISTRY, EndpointAuth(bearer_token=TOKEN))
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/metrics"}
    environ.update({"HTTP_" + key.upper().replace("-", "_"): value for key, value in headers.items()})
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(app(environ, lambda status, response_headers: started.append((status, response_headers))))
    return int(started[0][0].split()[0]), started[0][1], body


def call_asgi(method: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    app = make_asgi_app(APP_REGISTRY, EndpointAuth(bearer_token=TOKEN))
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": "/metrics",
        "headers": [(key.lower().encode(), value.encode()) for key, value in headers.items()],
    }
    asyncio.run(app(scope, receive, send))
    response_headers = [(key.decode(), value.decode()) for key, value in sent[0]["headers"]]
    return sent[0]["status"], response_headers, sent[1]["body"]


# --- methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", REFUSED_METHODS)
def test_every_method_but_get_and_head_gets_405_with_allow(server, method):
    for path in ("/metrics", "/elsewhere"):
        status, headers, _ = fetch(server.port, method, path, AUTH)
        assert (status, header(headers, "Allow")) == (405, "GET, HEAD"), (method, path)
    for call in (call_wsgi, call_asgi):
        status, headers, _ = call(method, AUTH)
        assert (status, header(headers, "Allow")) == (405, "GET, HEAD"), (call.__name__, method)


def test_a_refused_request_with_a_body_leaves_the_connection_usable(server):
    connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        connection.request("POST", "/metrics", body=b"x" * 5000, headers=AUTH)
        response = connection.getresponse()
        assert response.status == 405
        response.read()
        connection.request("GET", "/metrics", headers=AUTH)  # the same connection: the body was skipped
        response = connection.getresponse()
        assert response.status == 200
        assert totals(response.read()) == EXPECTED
    finally:
        connection.close()


# --- content negotiation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        (None, False),
        ("gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0.5", True),
        ("*;q=0", False),
        ("*", True),
        ("br, *;q=0.1", True),
        ("identity", False),
        ("gzip;q=0, *;q=1", False),  # gzip's own weight wins over the wildcard
        ("GZIP;Q=1", True),
        ("gzip;q=nonsense", False),
        ("deflate, x-gzip", True),
    ],
)
def test_gzip_only_when_its_weight_is_above_zero(server, accept_encoding, gzipped):
    headers = dict(AUTH)
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    status, response_headers, body = fetch(server.port, headers=headers)
    assert status == 200
    assert header(response_headers, "Vary") == "Accept, Accept-Encoding"
    assert header(response_headers, "Content-Encoding") == ("gzip" if gzipped else None)
    assert totals(gzip.decompress(body) if gzipped else body) == EXPECTED
    assert accepts_gzip(accept_encoding) is gzipped


def test_vary_is_on_every_metrics_response(server):
    for headers in ({}, AUTH, {**AUTH, "Accept-Encoding": "gzip"}):  # 401, 200, 200 gzipped
        for method in ("GET", "HEAD"):
            _, response_headers, _ = fetch(server.port, method, headers=headers)
            assert header(response_headers, "Vary") == "Accept, Accept-Encoding", (method, headers)


# --- HEAD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept_encoding", ["identity", "gzip"])
def test_head_sends_exactly_the_headers_of_get_and_no_body(server, accept_encoding):
    headers = {**AUTH, "Accept-Encoding": accept_encoding}
    connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        connection.request("HEAD", "/metrics", headers=headers)
        head = connection.getresponse()
        head_headers = head.getheaders()
        assert head.read() == b""
        # the same kept-alive connection: had HEAD sent body bytes, this response would not parse
        connection.request("GET", "/metrics", headers=headers)
        get = connection.getresponse()
        get_headers, body = get.getheaders(), get.read()
    finally:
        connection.close()
    assert (head.status, get.status) == (200, 200)
    assert without_date(head_headers) == without_date(get_headers)
    assert header(head_headers, "Content-Length") == str(len(body)) != "0"
    assert header(head_headers, "Content-Encoding") == ("gzip" if accept_encoding == "gzip" else None)
    for call in (call_wsgi, call_asgi):
        head_status, app_head_headers, head_body = call("HEAD", headers)
        get_status, app_get_headers, get_body = call("GET", headers)
        assert (head_status, get_status, head_body) == (200, 200, b""), call.__name__
        assert [(k.lower(), v) for k, v in app_head_headers] == [(k.lower(), v) for k, v in app_get_headers]
        assert header(app_head_headers, "Content-Length") == str(len(get_body))


# --- limits ----------------------------------------------------------------------------------


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


def test_connections_beyond_the_cap_get_503_and_threads_stay_bounded(monkeypatch):
    cap, extra = 4, 6
    monkeypatch.setattr(serve_http, "_warnings", serve_http.RateLimitedLog())
    baseline = threading.active_count()
    with running(max_connections=cap) as server, structlog.testing.capture_logs() as logs:
        idle = [socket.create_connection((HOST, server.port), timeout=10) for _ in range(cap)]
        try:
            # accepted in connect order: the idle clients hold every slot, so the surplus is refused
            surplus = [socket.create_connection((HOST, server.port), timeout=10) for _ in range(extra)]
            for sock in surplus:
                reply = read_until_closed(sock, timeout=5)
                assert reply.startswith(b"HTTP/1.1 503 "), reply
                assert b"\r\nRetry-After: 1\r\n" in reply
                sock.close()
            started = time.monotonic()
            status, headers, _ = fetch(server.port, headers=AUTH)  # a scrape while the cap is reached
            assert (status, header(headers, "Retry-After")) == (503, "1")
            assert time.monotonic() - started < 3  # refused at once, not after the idle clients' deadline
            assert threading.active_count() <= baseline + 1 + cap + 1
        finally:
            for sock in idle:
                sock.close()
        # the idle clients gone, their slots free up and scrapes are served again
        wait_until(lambda: fetch(server.port, headers=AUTH)[0] == 200, what="a 200 once slots are free")
    busy = [log for log in logs if log["event"] == "metrics_endpoint_connection_limit"]
    assert busy and busy[0]["max_connections"] == cap


def test_a_burst_of_connects_is_queued_not_dropped():
    # the accept loop is not running: only the listen backlog holds these connections
    server = serve_http._Server(
        (HOST, 0),
        socket.AF_INET,
        None,
        registry=fixed_registry(),
        auth=EndpointAuth(),
        max_connections=64,
        request_timeout=10,
    )
    clients = []
    try:
        port = server.server_address[1]
        for _ in range(100):
            sock = socket.socket()
            sock.setblocking(False)
            assert sock.connect_ex((HOST, port)) in (0, errno.EINPROGRESS)
            clients.append(sock)
        # on loopback the kernel completes a handshake at once while the backlog has room; with a
        # backlog of 5 only 6 complete, and the others' SYN retries fail too while nothing is accepted
        connected: set[socket.socket] = set()
        deadline = time.monotonic() + 2
        while len(connected) < len(clients) and time.monotonic() < deadline:
            _, writable, _ = select.select([], [c for c in clients if c not in connected], [], 0.1)
            connected.update(c for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        assert len(connected) == 100
    finally:
        for sock in clients:
            sock.close()
        server.server_close()


def test_a_dripping_client_is_cut_off_at_the_request_deadline():
    with running(request_timeout=1.0) as server:
        drip = socket.create_connection((HOST, server.port), timeout=10)
        connected = time.monotonic()
        payload = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        cut_off_after = None
        try:
            for index in range(40):  # at most 40 bytes, 8 s: the deadline must end it long before
                try:
                    drip.send(payload[index : index + 1])
                except (BrokenPipeError, ConnectionResetError):
                    cut_off_after = time.monotonic() - connected
                    break
                if select.select([drip], [], [], 0.2)[0]:
                    assert read_until_closed(drip, timeout=5) == b""  # closed, nothing echoed back
                    cut_off_after = time.monotonic() - connected
                    break
                if index == 2:  # others are served while the drip is under way
                    assert fetch(server.port, headers=AUTH)[0] == 200
        finally:
            drip.close()
        assert cut_off_after is not None, "the dripping client was never cut off"
        assert 0.9 <= cut_off_after <= 4.0, cut_off_after
        assert fetch(server.port, headers=AUTH)[0] == 200


def test_an_idle_tls_client_is_cut_off_at_the_request_deadline(tmp_path):
    certificates = make_certificates(tmp_path)
    tls = serve_http.TLSConfig(str(certificates.server_cert), str(certificates.server_key))
    server = serve_http.serve(fixed_registry(), HOST, 0, EndpointAuth(), tls, request_timeout=1.0)
    try:
        silent = socket.create_connection((HOST, server.port), timeout=10)  # never starts the handshake
        started = time.monotonic()
        assert read_until_closed(silent, timeout=8) == b""
        assert 0.9 <= time.monotonic() - started <= 4.0
        silent.close()
    finally:
        server.stop()


def test_an_oversized_request_head_gets_431(server):
    # each line is within http.server's 64 KiB, the head as a whole is not
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 60_000) for i in range(3))
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        assert b" 431 " in read_until_closed(sock, timeout=5).split(b"\r\n", 1)[0] + b" "


@pytest.mark.parametrize(
    ("keyword", "value"), [("max_connections", 0), ("request_timeout", 0), ("request_timeout", float("inf"))]
)
def test_limits_must_be_sensible(keyword, value):
    with pytest.raises(ValueError, match=keyword):
        serve_http.serve(fixed_registry(), HOST, 0, EndpointAuth(), **{keyword: value})


# --- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", " ", "\t\n "])
@pytest.mark.parametrize(
    ("field", "others"),
    [
        ("bearer_token", {}),
        ("basic_username", {"basic_password": "pw"}),
        ("basic_password", {"basic_username": "prom"}),
    ],
)
def test_endpoint_auth_refuses_blank_secrets(field, others, blank):
    with pytest.raises(ValueError, match=field):
        EndpointAuth(**{field: blank}, **others)


def test_endpoint_auth_refuses_half_a_basic_pair_and_hides_secrets_in_repr():
    with pytest.raises(ValueError, match="go together"):
        EndpointAuth(basic_username="prom")
    with pytest.raises(ValueError, match="go together"):
        EndpointAuth(basic_password="pw")
    with pytest.raises(ValueError, match="':'"):
        EndpointAuth(basic_username="a:b", basic_password="pw")
    text = repr(EndpointAuth(bearer_token=TOKEN, basic_username="prom-user", basic_password="pw-9f3"))
    assert TOKEN not in text and "prom-user" not in text and "pw-9f3" not in text


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Bearer \t",
        "bearer",
        "Basic ",
        "Basic Og==",
        "Token s3cr3t-token",
        "",
    ],
)
def test_an_empty_or_foreign_credential_gets_401(server, authorization):
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        # a raw request: http.client would not send every one of these values as written
        sock.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nConnection: close\r\n\r\n"
            % authorization.encode()
        )
        reply = read_until_closed(sock, timeout=5)
        assert reply.startswith(b"HTTP/1.1 401 "), reply[:100]
    assert call_wsgi("GET", {"Authorization": authorization})[0] == 401
    assert server.server.auth.allows("Bearer " + TOKEN) and not server.server.auth.allows(authorization)


def test_two_authorization_headers_are_refused(server):
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n"
        sock.sendall(request % TOKEN.encode())
        assert read_until_closed(sock, timeout=5).startswith(b"HTTP/1.1 401 ")


class Failing(Collector):
    def collect(self):
        raise RuntimeError(f"collector broke while holding {TOKEN}")


def test_no_header_value_or_secret_reaches_a_log_or_a_response(capfd, monkeypatch):
    from meshmetrics._serve import exposition

    monkeypatch.setattr(serve_http, "_warnings", serve_http.RateLimitedLog())
    monkeypatch.setattr(exposition, "_failures", exposition.RateLimitedLog())
    broken = CollectorRegistry()
    broken.register(Failing())
    replies = []
    with structlog.testing.capture_logs() as logs:
        with running(registry=broken) as server:
            status, _, body = fetch(server.port, headers=AUTH)
            assert status == 500
            replies.append(body)
        with running() as server:
            for value in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
                status, _, body = fetch(server.port, headers={"Authorization": value, "X-Other": TOKEN})
                assert status == 401
                replies.append(body)
            for request in (  # malformed requests carrying the secret: the error must not echo it
                b"GET /metrics?t=%s HTTP/1.1 extra\r\n\r\n",
                b"GET /metrics HTTP/%s\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nConnection: close\r\nBroken header %s\r\n\r\n",
            ):
                with socket.create_connection((HOST, server.port), timeout=10) as sock:
                    sock.sendall(request % TOKEN.encode())
                    reply = read_until_closed(sock, timeout=5)
                    assert b" 40" in reply, reply[:100]  # 400 (as HTTP/0.9 without a valid version), 401
                    replies.append(reply)
        # accepted first, the silent client holds the only slot: the scrape after it is refused
        with running(max_connections=1) as server, socket.create_connection((HOST, server.port), timeout=10):
            status, _, body = fetch(server.port, headers=AUTH)
            assert status == 503
            replies.append(body)
    events = {log["event"] for log in logs}
    assert {"metrics_exposition_failed", "metrics_endpoint_connection_limit"} <= events  # the capture works
    assert TOKEN not in repr(logs)
    assert not [reply for reply in replies if TOKEN.encode() in reply]
    captured = capfd.readouterr()
    assert TOKEN not in captured.out and TOKEN not in captured.err
