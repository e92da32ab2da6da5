"""Configuration validated as a whole: every mistake is a ConfigurationError naming setting, source and rule."""

from __future__ import annotations

import math
import time

import pytest

import meshmetrics
from meshmetrics._setup.settings import ConfigurationError, resolve

NOT_FINITE = ["nan", "inf", "-inf", "1e308"]


def _raises(match: str, *, environ: dict[str, str] | None = None, **arguments: object) -> str:
    with pytest.raises(ConfigurationError, match=match) as raised:
        resolve(environ=environ or {}, **arguments)
    assert isinstance(raised.value, ValueError)
    return str(raised.value)


@pytest.mark.parametrize("value", [*NOT_FINITE, "0.001", "99", "0", "-5", "86400001", "soon"])
def test_export_interval_variable(value):
    message = _raises(
        "export_interval: variable OTEL_METRIC_EXPORT_INTERVAL",
        environ={"OTEL_METRIC_EXPORT_INTERVAL": value},
    )
    assert f"={value!r}" in message
    assert "milliseconds from 100 to 86400000" in message


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e308, 0.001, 0, -1, True, "5"])
def test_export_interval_argument(value):
    _raises(r"export_interval: argument export_interval=.*seconds", export_interval=value)


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"])
@pytest.mark.parametrize("value", [*NOT_FINITE, "0", "3600001"])
def test_otlp_timeout_variables(variable, value):
    message = _raises(f"otlp_timeout: variable {variable}=", environ={variable: value})
    assert "milliseconds from 1 to 3600000" in message


@pytest.mark.parametrize("value", ["nan", "inf", "0.5", "-1", "2592001", "1e308"])
def test_series_ttl_variable(value):
    message = _raises(
        "series_ttl: variable MESHMETRICS_SERIES_TTL", environ={"MESHMETRICS_SERIES_TTL": value}
    )
    assert "or 0 for never" in message


@pytest.mark.parametrize("name", ["export_timeout", "shutdown_timeout", "otlp_timeout"])
def test_a_timeout_argument_of_inf_means_the_longest_allowed(name):
    settings = resolve(environ={}, **{name: math.inf})
    field = {"otlp_timeout": "otlp_timeout_s"}.get(name, f"{name}_s")
    assert getattr(settings, field) == 3600.0
    for bad in (math.nan, 1e308, 3600.5, 0, 0.0001, -math.inf):
        _raises(f"{name}: argument {name}=", **{name: bad})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OTEL_METRIC_EXPORT_INTERVAL": "100"}, ("export_interval_s", 0.1)),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "86400000"}, ("export_interval_s", 86400.0)),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "1"}, ("otlp_timeout_s", 0.001)),
        (
            {"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "250", "OTEL_EXPORTER_OTLP_TIMEOUT": "9"},
            ("otlp_timeout_s", 0.25),
        ),
        ({"MESHMETRICS_SERIES_TTL": "0"}, ("series_ttl_s", 0.0)),
        ({"MESHMETRICS_SERIES_TTL": "2592000"}, ("series_ttl_s", 2592000.0)),
        ({"OTEL_METRIC_EXPORT_INTERVAL": ""}, ("export_interval_s", 60.0)),  # empty = unset (the spec)
    ],
)
def test_range_edges_are_allowed(environ, expected):
    field, value = expected
    assert getattr(resolve(environ=environ), field) == value


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://collector:4317",
        "http://collector:99999",
        "http://collector:0",
        "http://:4317",
        "collector:4317",
        "grpc://collector:4317",
    ],
)
@pytest.mark.parametrize("source", ["argument", "variable"])
def test_otlp_endpoint_must_be_an_http_url(url, source):
    if source == "argument":
        message = _raises("otlp_endpoint: argument otlp_endpoint=", otlp_endpoint=url)
    else:
        message = _raises(
            "otlp_endpoint: variable OTEL_EXPORTER_OTLP_ENDPOINT",
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": url},
        )
    assert "http:// or https://" in message


@pytest.mark.parametrize(
    "url", ["http://collector:4317", "https://collector", "http://[::1]:4318/v1/metrics"]
)
def test_good_otlp_endpoints(url):
    assert resolve(environ={}, otlp_endpoint=url).otlp_endpoint == url


@pytest.mark.parametrize(
    "variable",
    [
        "MESHMETRICS_STRICT",
        "OTEL_EXPORTER_OTLP_INSECURE",
        "MESHMETRICS_FAST_PATH",
        "OTEL_SDK_DISABLED",
    ],
)
@pytest.mark.parametrize("value", ["maybe", "perhaps", "2", "enabled", "t"])
def test_booleans_are_strict(variable, value):
    message = _raises(f"variable {variable}={value!r}", environ={variable: value})
    assert "true/false, 1/0, yes/no, on/off" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [(v, True) for v in ("true", "TRUE", "1", "yes", "On", " on ")]
    + [(v, False) for v in ("false", "False", "0", "no", "OFF")],
)
def test_boolean_spellings(value, expected):
    assert resolve(environ={"MESHMETRICS_STRICT": value}).strict is expected
    assert resolve(environ={"OTEL_SDK_DISABLED": value}).disabled is expected


@pytest.mark.parametrize("name", ["strict", "fast_path", "prometheus_server", "otlp_insecure", "prometheus"])
def test_boolean_arguments_must_be_bools(name):
    _raises(f"{name}: argument {name}='yes': must be True or False", **{name: "yes"})


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (
            {"max_label_length": 0},
            "max_label_length: argument max_label_length=0: must be a whole number from 1",
        ),
        ({"max_label_length": True}, "max_label_length"),
        ({"prometheus_port": 70000}, "prometheus_port: argument prometheus_port=70000"),
        ({"prometheus_port": "9464"}, "prometheus_port"),
        ({"detail": "verbose"}, "detail: argument detail='verbose': must be one of full, standard, minimal"),
        ({"otlp_protocol": "thrift"}, "otlp_protocol"),
        ({"prometheus_on_fork": "share"}, "prometheus_on_fork"),
        ({"otlp_temporality": "sometimes"}, "otlp_temporality"),
        ({"service_name": " "}, "service_name: argument service_name=' ': must be a non-empty string"),
        ({"resource_attributes": 3}, "resource_attributes"),
    ],
)
def test_argument_mistakes(arguments, match):
    _raises(match, **arguments)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="export_intervall"):
        resolve(environ={}, export_intervall=5)


def test_disabled_wins_over_everything_else():
    # the kill switch works even when the rest of the configuration is broken
    settings = resolve(environ={"OTEL_SDK_DISABLED": "true", "OTEL_METRIC_EXPORT_INTERVAL": "nan"})
    assert settings.disabled


def test_configure_raises_before_starting_anything():
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_INSECURE"):
        meshmetrics.configure(set_global=False, environ={"OTEL_EXPORTER_OTLP_INSECURE": "perhaps"})
    assert meshmetrics.current_handle() is None


def test_shutdown_with_an_infinite_timeout_works():
    handle = meshmetrics.configure(prometheus=False, shutdown_timeout=math.inf, set_global=False, environ={})
    assert handle.settings.shutdown_timeout_s == 3600.0
    started = time.monotonic()
    assert handle.shutdown(timeout=math.inf) is True
    assert time.monotonic() - started < 30
    # what the atexit handler runs, with the configured (infinite) timeout
    again = meshmetrics.configure(prometheus=False, shutdown_timeout=math.inf, set_global=False, environ={})
    assert again.shutdown() is True


@pytest.mark.parametrize("timeout", [math.nan, -1, 0, 1e308])
def test_shutdown_and_flush_timeouts_are_checked(timeout):
    with meshmetrics.configure(prometheus=False, set_global=False, environ={}) as handle:
        with pytest.raises(ConfigurationError, match="shutdown: argument timeout="):
            handle.shutdown(timeout=timeout)
        with pytest.raises(ConfigurationError, match="force_flush: argument timeout="):
            handle.force_flush(timeout=timeout)
