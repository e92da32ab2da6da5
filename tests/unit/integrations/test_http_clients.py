"""httpx, aiohttp and requests against real upstreams under uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import httpx
import pybreaker
import pytest
import requests
import structlog
import tenacity
import uvicorn

from meshmetrics._log import RateLimitedLog
from meshmetrics.integrations import _client
from meshmetrics.integrations import tenacity as mm_tenacity
from meshmetrics.integrations.aiohttp import mesh_trace_config
from meshmetrics.integrations.httpx import AsyncMeshTransport, MeshTransport, routing
from meshmetrics.integrations.pybreaker import instrument_breaker
from meshmetrics.integrations.requests import MeshAdapter, instrument_session
from meshmetrics.testing import CapturedMetrics, capture

SLOW_S = 1.0  # the /slow route's delay; clients time out long before
SHORT = httpx.Timeout(10.0, read=0.2)  # only for /slow: everything else gets 10 s, even on a loaded CPU


class Upstream:
    """A raw ASGI app that counts what it serves: /fail -> 503, /missing -> 404, /slow sleeps."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        path = scope["path"]
        with self.lock:
            self.hits[path] += 1
        status, headers = 200, [(b"content-type", b"text/plain")]
        if path.startswith("/fail"):
            status = 503
        elif path.startswith("/missing"):
            status = 404
        elif path.startswith("/slow"):
            await asyncio.sleep(SLOW_S)
        elif path.startswith("/redirect"):
            status, headers = 302, [*headers, (b"location", b"/ok/redirected")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def wait_for_hit(app: Upstream, path: str, expected: int, timeout: float = 10.0) -> None:
    """A timed-out request may reach a busy server after the client gave up: wait for it."""
    deadline = time.monotonic() + timeout
    while app.hits[path] < expected and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclass
class Server:
    app: Upstream
    port: int

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Server]]:
    """Two upstream instances, each its own uvicorn server on a free loopback port."""
    running = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        app = Upstream()
        server = uvicorn.Server(
            uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=3)
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock, Server(app, sock.getsockname()[1])))
    deadline = time.monotonic() + 20
    while not all(server.started for server, *_ in running):
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield [entry[3] for entry in running]
    finally:
        for server, thread, sock, _ in running:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()


@pytest.fixture
def refused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_request_counts(c: CapturedMetrics, service: str, instance: str, ok: int, errors: dict[str, int]):
    """mesh.lb.* for one instance: requests, durations split by error.type, errors."""
    failed = sum(errors.values())
    assert (
        c.value("mesh.lb.requests", service=service, instance=instance, strategy="round_robin") == ok + failed
    )
    durations = c.series("mesh.lb.request.duration", service=service, instance=instance)
    assert sorted(d.get("error.type", "") for d in durations) == sorted(["", *errors] if ok else errors)
    if ok:
        ok_series = [d for d in durations if "error.type" not in d]
        assert ok_series == [{"mesh.service": service, "mesh.instance": instance}]
    for kind, count in errors.items():
        assert c.histogram("mesh.lb.request.duration", instance=instance, error_type=kind).count == count
        assert c.value("mesh.lb.errors", service=service, instance=instance, error_type=kind) == count
    assert c.value("mesh.lb.errors", service=service, instance=instance) == failed


def assert_calls(c: CapturedMetrics, service: str, operation: str, ok: int, errors: dict[str, int]):
    assert (
        c.histogram("mesh.call.duration", service=service, operation=operation, outcome="success").count == ok
    )
    for kind, count in errors.items():
        failures = c.histogram(
            "mesh.call.duration", service=service, operation=operation, outcome="failure", error_type=kind
        )
        assert failures.count == count
    assert c.histogram("mesh.call.duration", service=service, operation=operation).count == ok + sum(
        errors.values()
    )
    assert c.value("mesh.calls.active", service=service, operation=operation) == 0


def exercise_sync(get, servers: list[Server], refused_port: int) -> None:
    """Against two instances: 3 + 1 successes, 2 503s, a refused connection and a read timeout."""
    a, b = servers
    for user in (1, 2, 3):
        assert get(a.url(f"/ok/users/{user}")) == 200
    assert get(b.url("/ok/users/4")) == 200
    assert get(b.url("/fail/orders/7")) == 503
    assert get(b.url("/fail/orders/8")) == 503


# httpx


def test_httpx_counts_each_outcome_per_instance_service_and_operation(servers, refused_port):
    a, b = servers
    before_a, before_b = a.app.hits.copy(), b.app.hits.copy()
    with capture() as c:
        client = httpx.Client(transport=MeshTransport(service="users"), timeout=10.0)
        with client:
            exercise_sync(lambda url: client.get(url).status_code, servers, refused_port)
            with pytest.raises(httpx.ConnectError):
                client.get(f"http://127.0.0.1:{refused_port}/ok/users/5")
            with pytest.raises(httpx.ReadTimeout):
                client.get(a.url("/slow/users/6"), timeout=SHORT)
    # what the upstreams themselves served
    wait_for_hit(a.app, "/slow/users/6", before_a["/slow/users/6"] + 1)
    assert a.app.hits - before_a == Counter(
        {"/ok/users/1": 1, "/ok/users/2": 1, "/ok/users/3": 1, "/slow/users/6": 1}
    )
    assert b.app.hits - before_b == Counter({"/ok/users/4": 1, "/fail/orders/7": 1, "/fail/orders/8": 1})
    assert_request_counts(c, "users", a.instance, ok=3, errors={"httpx.ReadTimeout": 1})
    assert_request_counts(c, "users", b.instance, ok=1, errors={"503": 2})
    refused = f"127.0.0.1:{refused_port}"
    assert_request_counts(c, "users", refused, ok=0, errors={"httpx.ConnectError": 1})
    assert c.value("mesh.lb.connection.failures", instance=refused, error_type="httpx.ConnectError") == 1
    assert c.value("mesh.lb.connection.failures") == 1  # a read timeout is not a connection failure
    assert_calls(c, "users", "GET /ok/users/{id}", ok=4, errors={"httpx.ConnectError": 1})
    assert_calls(c, "users", "GET /fail/orders/{id}", ok=0, errors={"503": 2})
    assert_calls(c, "users", "GET /slow/users/{id}", ok=0, errors={"httpx.ReadTimeout": 1})
    assert c.histogram("mesh.call.duration").count == 8


def test_httpx_async_transport(servers, refused_port):
    a, b = servers

    async def scenario() -> None:
        transport = AsyncMeshTransport(service={a.instance: "users", b.instance: "orders"})
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            results = await asyncio.gather(*(client.get(a.url(f"/ok/users/{i}")) for i in range(5)))
            assert [r.status_code for r in results] == [200] * 5
            assert (await client.get(b.url("/fail/orders/1"))).status_code == 503
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{refused_port}/ok/users/1")
            with pytest.raises(httpx.ReadTimeout):
                await client.get(b.url("/slow/orders/1"), timeout=SHORT)

    with capture() as c:
        asyncio.run(scenario())
    assert_request_counts(c, "users", a.instance, ok=5, errors={})
    assert_request_counts(c, "orders", b.instance, ok=0, errors={"503": 1, "httpx.ReadTimeout": 1})
    # an unmapped instance falls back to its host
    assert (
        c.value("mesh.lb.connection.failures", service="127.0.0.1", instance=f"127.0.0.1:{refused_port}") == 1
    )
    assert_calls(c, "users", "GET /ok/users/{id}", ok=5, errors={})
    assert_calls(c, "orders", "GET /slow/orders/{id}", ok=0, errors={"httpx.ReadTimeout": 1})


def test_4xx_is_a_success_by_default_and_a_failure_on_request(servers):
    a, _ = servers
    with capture() as c:
        default = httpx.Client(transport=MeshTransport(service="default"))
        strict = httpx.Client(transport=MeshTransport(service="strict", failure_status=lambda s: s >= 400))
        for client in (default, strict):
            with client:
                assert client.get(a.url("/missing/1")).status_code == 404
    assert_calls(c, "default", "GET /missing/{id}", ok=1, errors={})
    assert c.value("mesh.lb.errors", service="default") == 0
    assert_calls(c, "strict", "GET /missing/{id}", ok=0, errors={"404": 1})
    assert c.value("mesh.lb.errors", service="strict", error_type="404") == 1


def test_strategy_service_and_operation_per_request(servers):
    a, _ = servers
    transport = MeshTransport(service="users", strategy="random")
    with capture() as c, httpx.Client(transport=transport) as client:
        client.get(a.url("/ok/1"))
        client.get(a.url("/ok/2"), extensions={"meshmetrics": {"strategy": "least_connections"}})
        with routing(strategy="consistent_hash", service="profiles", operation="get_profile"):
            client.get(a.url("/ok/3"))
    assert c.value("mesh.lb.requests", service="users", strategy="random") == 1
    assert c.value("mesh.lb.requests", service="users", strategy="least_connections") == 1
    assert c.value("mesh.lb.requests", service="profiles", strategy="consistent_hash") == 1
    assert c.histogram("mesh.call.duration", service="profiles", operation="get_profile").count == 1
    assert c.histogram("mesh.call.duration", service="users", operation="GET /ok/{id}").count == 2


def test_user_functions_name_the_service_and_the_operation(servers):
    a, _ = servers
    with capture() as c:
        transport = MeshTransport(
            service=lambda instance: f"svc-{instance.rsplit(':', 1)[1]}",
            route=lambda path: "/" + path.split("/")[1],
        )
        with httpx.Client(transport=transport) as client:
            client.post(a.url("/ok/whatever/abc"))
    service = f"svc-{a.port}"
    assert c.series("mesh.call.duration") == [
        {"mesh.service": service, "mesh.operation": "POST /ok", "mesh.outcome": "success"}
    ]
    assert c.value("mesh.lb.requests", service=service, instance=a.instance) == 1


def test_tenacity_retries_are_one_call_and_several_attempts(servers):
    """A retried httpx call: one retry call, three attempts on mesh.lb.requests, breaker calls too."""
    _, b = servers
    before = b.app.hits["/fail/retried"]
    client = httpx.Client(transport=MeshTransport(service="orders"))
    breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=10, name="orders"))

    @mm_tenacity.retry(
        service="orders",
        operation="get_order",
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_none(),
        reraise=True,
    )
    @breaker
    def get_order() -> httpx.Response:
        return client.get(b.url("/fail/retried")).raise_for_status()

    with capture() as c, client, pytest.raises(httpx.HTTPStatusError):
        get_order()
    assert b.app.hits["/fail/retried"] - before == 3
    assert (
        c.value("mesh.retry.calls", service="orders", operation="get_order", outcome="failed_with_retry") == 1
    )
    assert c.value("mesh.retry.attempts", service="orders", operation="get_order") == 3
    assert c.value("mesh.retry.errors", service="orders", error_type="httpx.HTTPStatusError") == 3
    assert c.value("mesh.lb.requests", service="orders", instance=b.instance) == 3
    assert c.value("mesh.lb.errors", service="orders", instance=b.instance, error_type="503") == 3
    assert c.value("mesh.circuit_breaker.calls", service="orders", outcome="failure") == 3
    assert_calls(c, "orders", "GET /fail/retried", ok=0, errors={"503": 3})


def test_ten_thousand_urls_fold_into_a_bounded_operation_set():
    transport = MeshTransport(httpx.MockTransport(lambda request: httpx.Response(200)), service="catalog")
    with capture() as c, httpx.Client(transport=transport) as client:
        for i in range(10_000):
            client.get(f"http://catalog:8080/items/sku-{i}")
    operations = {s["mesh.operation"] for s in c.series("mesh.call.duration")}
    assert "_OTHER" in operations
    assert 2 <= len(operations) <= 51  # the registry's bounded(50) for mesh.operation, plus _OTHER
    assert c.histogram("mesh.call.duration", service="catalog").count == 10_000
    folded = c.value(
        "meshmetrics.attribute.overflows", meshmetrics_metric="mesh.call.duration", attribute="mesh.operation"
    )
    assert folded == c.histogram("mesh.call.duration", operation="_OTHER").count  # each fold counted
    assert folded >= 10_000 - 50


def test_instrumentation_failures_never_reach_the_caller(servers, monkeypatch):
    a, _ = servers
    monkeypatch.setattr(_client, "_log", RateLimitedLog())

    def broken_service(instance: str) -> str:
        raise RuntimeError("user's mapping is broken")

    client = httpx.Client(transport=MeshTransport(service=broken_service))
    with capture() as c, structlog.testing.capture_logs() as logs, client:
        assert client.get(a.url("/ok/1")).status_code == 200
        assert client.get(a.url("/ok/2")).status_code == 200
    assert c.value("mesh.lb.requests") == 0  # nothing half-recorded
    warnings = [log for log in logs if log["event"] == "meshmetrics_client_integration_failed"]
    assert len(warnings) == 1  # rate-limited
    assert "user's mapping is broken" in warnings[0]["error"]


def test_the_library_exception_propagates_unchanged(refused_port):
    original = httpx.ConnectError("refused")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise original

    client = httpx.Client(transport=MeshTransport(httpx.MockTransport(refuse)))
    with capture(), client, pytest.raises(httpx.ConnectError) as raised:
        client.get(f"http://127.0.0.1:{refused_port}/")
    assert raised.value is original


@pytest.mark.parametrize(
    ("error", "connection_failures"),
    [
        (httpx.ConnectTimeout, 1),
        (httpx.ConnectError, 1),
        (httpx.ReadTimeout, 0),
        (httpx.RemoteProtocolError, 0),
    ],
)
def test_only_connect_errors_and_connect_timeouts_are_connection_failures(error, connection_failures):
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("simulated")

    kind = f"httpx.{error.__name__}"
    client = httpx.Client(transport=MeshTransport(httpx.MockTransport(fail), service="api"))
    with capture() as c, client, pytest.raises(error):
        client.get("http://api-1:8080/things/1")
    assert (
        c.value("mesh.lb.connection.failures", instance="api-1:8080", error_type=kind) == connection_failures
    )
    assert c.value("mesh.lb.errors", instance="api-1:8080", error_type=kind) == 1


# aiohttp


def test_aiohttp_trace_config(servers, refused_port):
    a, b = servers

    async def scenario() -> None:
        config = mesh_trace_config(service="users")
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(trace_configs=[config], timeout=timeout) as session:
            for user in (1, 2):
                async with session.get(a.url(f"/ok/users/{user}")) as response:
                    assert response.status == 200
            async with session.get(b.url("/fail/orders/1")) as response:
                assert response.status == 503
            async with session.get(b.url("/redirect/1")) as response:  # 302, then /ok/redirected on b
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://127.0.0.1:{refused_port}/ok/users/3")
            with pytest.raises(aiohttp.SocketTimeoutError):
                async with session.get(
                    a.url("/slow/users/4"), timeout=aiohttp.ClientTimeout(total=10, sock_read=0.2)
                ) as response:
                    await response.read()
            async with session.get(
                a.url("/ok/users/5"), trace_request_ctx={"meshmetrics": {"strategy": "least_connections"}}
            ) as response:
                assert response.status == 200

    with capture() as c:
        asyncio.run(scenario())
    assert_request_counts(c, "users", b.instance, ok=2, errors={"503": 1})  # 302 and its target
    # aiohttp's read timeout is a TimeoutError: classify_error calls it `timeout`
    assert c.value("mesh.lb.requests", instance=a.instance, strategy="round_robin") == 3
    assert c.value("mesh.lb.requests", instance=a.instance, strategy="least_connections") == 1
    assert c.value("mesh.lb.errors", instance=a.instance, error_type="timeout") == 1
    refused = f"127.0.0.1:{refused_port}"
    connector_error = "aiohttp.client_exceptions.ClientConnectorError"
    assert c.value("mesh.lb.connection.failures", instance=refused, error_type=connector_error) == 1
    assert c.value("mesh.lb.connection.failures") == 1
    assert_calls(c, "users", "GET /ok/users/{id}", ok=3, errors={connector_error: 1})
    assert_calls(c, "users", "GET /redirect/{id}", ok=1, errors={})
    assert_calls(c, "users", "GET /ok/redirected", ok=1, errors={})
    assert_calls(c, "users", "GET /slow/users/{id}", ok=0, errors={"timeout": 1})
    assert_calls(c, "users", "GET /fail/orders/{id}", ok=0, errors={"503": 1})


# requests


def test_requests_session(servers, refused_port):
    a, b = servers
    with capture() as c:
        session = instrument_session(requests.Session(), service="users")
        with session:
            exercise_sync(lambda url: session.get(url, timeout=10).status_code, servers, refused_port)
            with pytest.raises(requests.ConnectionError):
                session.get(f"http://127.0.0.1:{refused_port}/ok/users/5", timeout=10)
            with pytest.raises(requests.ReadTimeout):
                session.get(a.url("/slow/users/6"), timeout=(10, 0.2))
    assert_request_counts(c, "users", a.instance, ok=3, errors={"requests.exceptions.ReadTimeout": 1})
    assert_request_counts(c, "users", b.instance, ok=1, errors={"503": 2})
    refused = f"127.0.0.1:{refused_port}"
    kind = "requests.exceptions.ConnectionError"
    assert c.value("mesh.lb.connection.failures", instance=refused, error_type=kind) == 1
    assert c.value("mesh.lb.connection.failures") == 1
    assert_calls(c, "users", "GET /ok/users/{id}", ok=4, errors={kind: 1})
    assert_calls(c, "users", "GET /fail/orders/{id}", ok=0, errors={"503": 2})


def test_requests_adapter_mounted_by_hand(servers):
    a, _ = servers
    with capture() as c, requests.Session() as session:
        session.mount("http://", MeshAdapter(service="users", strategy="random", pool_maxsize=2))
        assert session.get(a.url("/ok/1"), timeout=10).status_code == 200
    assert c.value("mesh.lb.requests", service="users", instance=a.instance, strategy="random") == 1


# import isolation


def test_importing_meshmetrics_imports_no_client_library():
    code = (
        "import sys, meshmetrics, meshmetrics.integrations;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'httpx', 'aiohttp', 'requests', 'grpc', 'urllib3', 'uvicorn'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
