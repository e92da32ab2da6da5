from __future__ import annotations

import pytest

from meshmetrics._setup.settings import resolve


def test_defaults():
    settings = resolve(environ={})
    assert (settings.prometheus_host, settings.prometheus_port) == ("localhost", 9464)
    assert settings.prometheus_enabled
    assert settings.otlp_endpoint is None
    assert settings.otlp_protocol == "grpc"
    assert settings.export_interval_s == 60.0
    assert not settings.strict
    assert settings.detail == "standard"


def test_standard_environment_variables():
    settings = resolve(
        environ={
            "OTEL_SERVICE_NAME": "checkout",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, team=mesh",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
            "OTEL_EXPORTER_PROMETHEUS_PORT": "9999",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_METRIC_EXPORT_TIMEOUT": "2000",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1500",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "DELTA",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=secret",
            "MESHMETRICS_STRICT": "1",
            "MESHMETRICS_DETAIL": "minimal",
        }
    )
    assert settings.service_name == "checkout"
    assert settings.resource_attributes == {"deployment.environment": "prod", "team": "mesh"}
    assert (settings.prometheus_host, settings.prometheus_port) == ("0.0.0.0", 9999)
    # the generic endpoint gets the signal path for http/protobuf
    assert settings.otlp_endpoint == "http://collector:4318/v1/metrics"
    assert settings.otlp_protocol == "http/protobuf"
    # OTEL_* timeouts are milliseconds; settings hold seconds (the exporters' unit)
    assert settings.export_interval_s == 5.0
    assert settings.export_timeout_s == 2.0
    assert settings.otlp_timeout_s == 1.5
    assert settings.otlp_temporality == "delta"
    assert settings.otlp_headers == {"api-key": "secret"}
    assert settings.strict
    assert settings.detail == "minimal"


def test_signal_specific_endpoint_is_used_as_is_and_wins():
    settings = resolve(
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://metrics:4317",
        }
    )
    assert settings.otlp_endpoint == "http://metrics:4317"


def test_arguments_win_over_environment():
    settings = resolve(
        environ={"OTEL_EXPORTER_PROMETHEUS_PORT": "9999", "OTEL_SERVICE_NAME": "env"},
        prometheus_port=1234,
        service_name="arg",
        export_interval=0.5,
    )
    assert settings.prometheus_port == 1234
    assert settings.service_name == "arg"
    assert settings.export_interval_s == 0.5


def test_sdk_disabled():
    assert resolve(environ={"OTEL_SDK_DISABLED": "true"}).disabled


def test_metrics_exporter_none_disables_prometheus():
    assert not resolve(environ={"OTEL_METRICS_EXPORTER": "otlp"}).prometheus_enabled


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_EXPORTER_PROMETHEUS_PORT": "http"}, "OTEL_EXPORTER_PROMETHEUS_PORT"),
        ({"OTEL_EXPORTER_PROMETHEUS_PORT": "70000"}, "from 0 to 65535"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "-5"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"MESHMETRICS_DETAIL": "verbose"}, "detail"),
    ],
)
def test_configuration_mistakes_raise_a_clear_value_error(environ, message):
    with pytest.raises(ValueError, match=message):
        resolve(environ=environ)
