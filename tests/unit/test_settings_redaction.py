"""Secrets in an OTLP endpoint or headers never reach a log line or an exception message."""

from __future__ import annotations

import logging
import socket

import pytest
import structlog

import meshmetrics
from meshmetrics import ServiceMeshMetrics
from meshmetrics._setup.settings import ConfigurationError, redact_url, resolve

SECRET = "SECRET"


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: exports fail at once with 'connection refused'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("http://user:SECRET@host:4317", "http://***@host:4317"),
        ("https://SECRET@host/v1/metrics", "https://***@host/v1/metrics"),
        ("user:SECRET@host:4317", "***@host:4317"),
        ("http://user:SE/CRET@host:4317", "http://***@host:4317"),
        ("http://host:4317", "http://host:4317"),
    ],
)
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_endpoint_user_info_never_logged(closed_port, protocol, caplog):
    endpoint = f"http://user:{SECRET}@127.0.0.1:{closed_port}"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=endpoint,
            otlp_protocol=protocol,
            otlp_timeout=1,
            export_interval=3600,
            set_global=False,
            environ={},
        )
        ServiceMeshMetrics().record_call_success(service="api", operation="op", duration=0.3)
        assert handle.force_flush(timeout=5) is False
        handle.shutdown(timeout=5)
    events = {entry["event"]: entry for entry in logs}
    assert events["meshmetrics_configured"]["otlp_endpoint"] == f"http://***@127.0.0.1:{closed_port}"
    failed = events["meshmetrics_otlp_export_failed"]
    assert failed["endpoint"] is not None
    assert "***@127.0.0.1" in failed["endpoint"]
    assert SECRET not in repr(logs)
    assert SECRET not in caplog.text  # nor in the OpenTelemetry exporters' own warnings
    assert SECRET not in repr(handle.settings)


@pytest.mark.parametrize(
    "url",
    [f"ftp://user:{SECRET}@host:4317", f"http://user:{SECRET}@host:99999", f"http://user:{SECRET}@:4317"],
)
def test_endpoint_user_info_never_in_an_error(url):
    with pytest.raises(
        ConfigurationError, match=r"otlp_endpoint: argument otlp_endpoint='ftp|http://\*\*\*@"
    ) as raised:
        resolve(environ={}, otlp_endpoint=url)
    assert SECRET not in str(raised.value)
    with pytest.raises(ConfigurationError) as raised:
        resolve(environ={"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": url})
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("environ", "arguments", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_HEADERS": f"api-key=ok,Authorization Bearer {SECRET}"}, {}, "entry 2"),
        ({"OTEL_EXPORTER_OTLP_METRICS_HEADERS": f"bad key={SECRET}"}, {}, "'bad key'"),
        ({}, {"otlp_headers": {"x-token": f"{SECRET}\r\nInjected: 1"}}, "'x-token'"),
        ({}, {"otlp_headers": {"x-token": 42}}, "'x-token'"),
        ({}, {"otlp_headers": f"authorization={SECRET}"}, "otlp_headers"),
    ],
)
def test_invalid_headers_name_the_key_only(environ, arguments, named):
    arguments.setdefault("otlp_headers", None)
    with pytest.raises(ConfigurationError, match="otlp_headers") as raised:
        resolve(environ=environ, **arguments)
    assert named in str(raised.value)
    assert SECRET not in str(raised.value)


def test_headers_and_tokens_never_in_the_settings_repr():
    settings = resolve(
        environ={"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {SECRET}"},
        otlp_endpoint=f"http://u:{SECRET}@collector:4317",
        prometheus_bearer_token=SECRET,
    )
    assert settings.otlp_headers == {"authorization": f"Bearer {SECRET}"}
    assert SECRET not in repr(settings)
