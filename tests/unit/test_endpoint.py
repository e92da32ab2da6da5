"""The /metrics endpoint: authentication, TLS, mutual TLS, WSGI/ASGI, and misbehaving clients."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import ssl
import time
import urllib.error
from urllib.request import Request, urlopen

import pytest

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from tests.conftest import parse_samples
from tests.tls import make_certificates


def get(
    url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict, bytes]:
    try:
        with urlopen(Request(url, headers=headers or {}), timeout=5, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def protected():
    handle = meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_bearer_token="s3cr3t",
        set_global=False,
        environ={},
    )
    LoadBalancerMetrics().record_request("api", "a", "random")
    yield handle
    handle.shutdown()


def test_bearer_token(protected):
    url = protected.prometheus_url
    status, headers, _ = get(url)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="meshmetrics"'
    assert get(url, {"Authorization": "Bearer wrong"})[0] == 401
    assert get(url, {"Authorization": "Basic czNjcjN0"})[0] == 401
    status, _, body = get(url, {"Authorization": "Bearer s3cr3t"})
    assert status == 200
    assert (
        "mesh_lb_requests_total",
        frozenset({("mesh_service", "api"), ("mesh_instance", "a"), ("mesh_lb_strategy", "random")}),
    ) in parse_samples(body.decode())


def test_only_metrics_is_served(protected):
    base = protected.prometheus_url.rsplit("/", 1)[0]
    assert get(base + "/")[0] == 404
    assert get(base + "/favicon.ico")[0] == 404
    assert get(base + "/metrics/../admin")[0] == 404
    status, _, _ = get(protected.prometheus_url + "?name[]=x", {"Authorization": "Bearer s3cr3t"})
    assert status == 200
    request = Request(
        protected.prometheus_url, data=b"x", method="POST", headers={"Authorization": "Bearer s3cr3t"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urlopen(request, timeout=5)
    assert error.value.code == 405


def test_basic_auth_and_gzip():
    with meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_basic_auth=("prom", "p@ss:word"),
        set_global=False,
        environ={},
    ) as handle:
        LoadBalancerMetrics().record_request("api", "a", "random")
        good = "Basic " + base64.b64encode(b"prom:p@ss:word").decode()
        bad = "Basic " + base64.b64encode(b"prom:nope").decode()
        status, headers, _ = get(handle.prometheus_url)
        assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="meshmetrics"')
        assert get(handle.prometheus_url, {"Authorization": bad})[0] == 401
        assert get(handle.prometheus_url, {"Authorization": "Basic !!notbase64"})[0] == 401
        status, headers, body = get(handle.prometheus_url, {"Authorization": good, "Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert b"target_info" in gzip.decompress(body)


def test_token_from_file_and_environment(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    with meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_bearer_token_file=str(token_file),
        set_global=False,
        environ={},
    ) as handle:
        assert get(handle.prometheus_url, {"Authorization": "Bearer from-file"})[0] == 200
    monkeypatch.setenv("MESHMETRICS_PROMETHEUS_BEARER_TOKEN", "from-env")
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
    with meshmetrics.configure(prometheus_port=0, set_global=False) as handle:
        assert get(handle.prometheus_url)[0] == 401
        assert get(handle.prometheus_url, {"Authorization": "Bearer from-env"})[0] == 200


def test_default_bind_address_is_localhost():
    settings = meshmetrics._setup.settings.resolve(environ={})
    assert settings.prometheus_host == "localhost"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def test_tls(certificates):
    with meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_certfile=str(certificates.server_cert),
        prometheus_keyfile=str(certificates.server_key),
        prometheus_bearer_token="t",
        set_global=False,
        environ={},
    ) as handle:
        assert handle.prometheus_url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(certificates.ca))
        assert get(handle.prometheus_url, {"Authorization": "Bearer t"}, trusted)[0] == 200
        assert get(handle.prometheus_url, {}, trusted)[0] == 401
        with pytest.raises(urllib.error.URLError):  # an unknown CA is refused by the client
            get(handle.prometheus_url, {"Authorization": "Bearer t"}, ssl.create_default_context())
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port
            get(handle.prometheus_url.replace("https", "http"), {"Authorization": "Bearer t"})
        assert get(handle.prometheus_url, {"Authorization": "Bearer t"}, trusted)[0] == 200  # still serving


def test_mutual_tls(certificates):
    with meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_certfile=str(certificates.server_cert),
        prometheus_keyfile=str(certificates.server_key),
        prometheus_client_cafile=str(certificates.ca),
        set_global=False,
        environ={},
    ) as handle:
        without_cert = ssl.create_default_context(cafile=str(certificates.ca))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            get(handle.prometheus_url, {}, without_cert)
        with_cert = ssl.create_default_context(cafile=str(certificates.ca))
        with_cert.load_cert_chain(str(certificates.client_cert), str(certificates.client_key))
        assert get(handle.prometheus_url, {}, with_cert)[0] == 200


def test_tls_settings_must_be_complete():
    with pytest.raises(ValueError, match="go together"):
        meshmetrics.configure(prometheus_certfile="x.pem", set_global=False, environ={})
    with pytest.raises(ValueError, match="mutual TLS"):
        meshmetrics.configure(prometheus_client_cafile="ca.pem", set_global=False, environ={})


def test_misbehaving_clients_leave_the_endpoint_serving(protected):
    host, port = "127.0.0.1", protected.prometheus_port
    auth = {"Authorization": "Bearer s3cr3t"}
    slow = socket.create_connection((host, port))  # a slow client: connects and says nothing
    slow.sendall(b"GET /metr")
    for payload, expected in (
        (b"\x00\xff garbage \r\n\r\n", b" 400 "),
        (b"GET /metrics HTTP/1.1\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n", b" 431 "),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", b" 431 "),
        (b"GET /metrics HTTP/9.9\r\n\r\n", b" 505 "),
    ):
        with socket.create_connection((host, port), timeout=5) as bad:
            bad.sendall(payload)
            reply = b""
            while chunk := bad.recv(4096):
                reply += chunk
            assert expected in reply, reply[:200]
    started = time.monotonic()
    assert get(protected.prometheus_url, auth)[0] == 200  # served while the slow client still hangs
    assert time.monotonic() - started < 2
    slow.close()


def test_wsgi_app_authenticates_like_the_server(protected):
    app = protected.wsgi_app()
    responses = []

    def call(path: str, authorization: str | None = None) -> bytes:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
        if authorization:
            environ["HTTP_AUTHORIZATION"] = authorization
        return b"".join(app(environ, lambda status, headers: responses.append((status, dict(headers)))))

    call("/metrics")
    assert responses[-1][0] == "401 Unauthorized" and "WWW-Authenticate" in responses[-1][1]
    assert b"mesh_lb_requests_total" in call("/metrics", "Bearer s3cr3t")
    assert responses[-1][0] == "200 OK"
    call("/other", "Bearer s3cr3t")
    assert responses[-1][0] == "404 Not Found"


def test_asgi_app_authenticates_like_the_server(protected):
    app = protected.asgi_app()

    async def call(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path, "headers": headers}, receive, send)
        return sent[0]["status"], sent[1]["body"]

    assert asyncio.run(call("/metrics", []))[0] == 401
    status, body = asyncio.run(call("/metrics", [(b"authorization", b"Bearer s3cr3t")]))
    assert status == 200 and b"mesh_lb_requests_total" in body
    assert asyncio.run(call("/nope", [(b"authorization", b"Bearer s3cr3t")]))[0] == 404


def test_app_without_own_server():
    with meshmetrics.configure(prometheus_server=False, set_global=False, environ={}) as handle:
        assert handle.prometheus_url is None
        LoadBalancerMetrics().record_request("api", "a", "random")
        body = b"".join(
            handle.wsgi_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda *a: None)
        )
        assert b"mesh_lb_requests_total" in body
