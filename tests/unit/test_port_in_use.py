"""A pull endpoint whose port is taken never takes the service down (unless asked to)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from meshmetrics._setup import provider
from meshmetrics._setup.settings import (
    ConfigurationError,
    PrometheusEndpointError,
    PrometheusPortInUseError,
    Settings,
)
from meshmetrics.testing import CapturedMetrics


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (say, the first gunicorn worker) is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        yield other.getsockname()[1]


def test_port_in_use_is_logged_once_and_the_service_keeps_recording(taken_port):
    reader = InMemoryMetricReader()
    with structlog.testing.capture_logs() as logs:
        handle = meshmetrics.configure(
            prometheus_host="127.0.0.1",
            prometheus_port=taken_port,
            readers=[reader],
            set_global=False,
            environ={},
        )
    try:
        assert handle.prometheus_url is None
        assert handle.prometheus_port is None
        warnings = [e for e in logs if e["event"] == "meshmetrics_prometheus_port_in_use"]
        assert len(warnings) == 1, logs
        assert warnings[0]["port"] == taken_port
        assert warnings[0]["log_level"] == "warning"
        assert "prometheus_port=0" in warnings[0]["fix"]
        configured = [e for e in logs if e["event"] == "meshmetrics_configured"]
        assert configured[0]["prometheus_url"] is None
        LoadBalancerMetrics().record_request("api", "i", "random")
        assert CapturedMetrics(reader).value("mesh.lb.requests", service="api") == 1
        # the Prometheus registry is still there to mount in the application's own server
        status: list[str] = []
        body = b"".join(
            handle.wsgi_app()(
                {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}, lambda s, _h: status.append(s)
            )
        )
        assert status == ["200 OK"]
        assert b'mesh_lb_requests_total{mesh_instance="i"' in body
    finally:
        assert handle.shutdown()


@pytest.mark.parametrize(
    ("argument", "environ"),
    [("raise", {}), (None, {"MESHMETRICS_PROMETHEUS_PORT_IN_USE": "RAISE"})],
)
def test_port_in_use_raises_only_when_asked(taken_port, argument, environ):
    with pytest.raises(PrometheusPortInUseError) as raised:
        meshmetrics.configure(
            prometheus_host="127.0.0.1",
            prometheus_port=taken_port,
            prometheus_port_in_use=argument,
            set_global=False,
            environ=environ,
        )
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, OSError)  # what `except OSError` caught before
    assert raised.value.errno == errno.EADDRINUSE
    assert raised.value.port == taken_port
    assert str(taken_port) in str(raised.value)
    # nothing half-built is left behind: configure() works right after
    with meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, environ={}
    ) as ok:
        assert ok.prometheus_url is not None


def test_port_in_use_setting_is_validated():
    with pytest.raises(ConfigurationError, match=r"MESHMETRICS_PROMETHEUS_PORT_IN_USE.*warn, raise"):
        meshmetrics.configure(set_global=False, environ={"MESHMETRICS_PROMETHEUS_PORT_IN_USE": "ignore"})


def test_an_address_that_cannot_be_bound_is_a_configuration_error():
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine
    with pytest.raises(PrometheusEndpointError, match=r"192\.0\.2\.1") as raised:
        meshmetrics.configure(prometheus_host="192.0.2.1", prometheus_port=0, set_global=False, environ={})
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, OSError)


@pytest.mark.parametrize(
    ("port", "ports"),
    [(0, [0]), (9464, list(range(9465, 9465 + 64))), (65_500, list(range(65_501, 65_536))), (65_535, [0])],
)
def test_the_ports_a_forked_child_tries(port, ports):
    settings = Settings(prometheus_port=port, prometheus_on_fork="offset")
    assert provider._child_ports(settings) == ports
