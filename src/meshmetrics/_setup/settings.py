"""Turn ``configure()`` arguments and the standard ``OTEL_*`` environment into one settings object.

Arguments win over environment variables, which win over defaults. Timeouts
are read as the OpenTelemetry specification defines them (milliseconds) and
kept in seconds here, the unit the Python exporters take.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meshmetrics._serve.exposition import read_secret_file

Protocol = Literal["grpc", "http/protobuf"]
Temporality = Literal["cumulative", "delta", "lowmemory"]
HistogramAggregation = Literal["explicit_bucket_histogram", "base2_exponential_bucket_histogram"]
Detail = Literal["full", "standard", "minimal"]

DEFAULT_PROMETHEUS_HOST = "localhost"
DEFAULT_PROMETHEUS_PORT = 9464
DEFAULT_EXPORT_INTERVAL_S = 60.0
DEFAULT_EXPORT_TIMEOUT_S = 30.0
DEFAULT_OTLP_TIMEOUT_S = 10.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_MAX_LABEL_LENGTH = 128

_TRUE = {"1", "true", "yes", "on"}
_PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http/protobuf")
_TEMPORALITIES: tuple[Temporality, ...] = ("cumulative", "delta", "lowmemory")
_HISTOGRAMS: tuple[HistogramAggregation, ...] = (
    "explicit_bucket_histogram",
    "base2_exponential_bucket_histogram",
)
_DETAILS: tuple[Detail, ...] = ("full", "standard", "minimal")
_ON_FORK = ("disable", "offset")


@dataclass(frozen=True)
class Settings:
    """Everything ``configure()`` decided, after arguments and environment are merged."""

    disabled: bool = False
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    prometheus_enabled: bool = True
    prometheus_host: str = DEFAULT_PROMETHEUS_HOST
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT
    prometheus_server: bool = True
    prometheus_bearer_token: str | None = field(default=None, repr=False)
    prometheus_basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    prometheus_certfile: str | None = None
    prometheus_keyfile: str | None = None
    prometheus_client_cafile: str | None = None
    prometheus_on_fork: Literal["disable", "offset"] = "disable"
    prometheus_fork_port_range: int = 64
    otlp_endpoint: str | None = None
    otlp_protocol: Protocol = "grpc"
    otlp_headers: Mapping[str, str] | None = None
    otlp_insecure: bool | None = None
    otlp_timeout_s: float = DEFAULT_OTLP_TIMEOUT_S
    otlp_temporality: Temporality = "cumulative"
    otlp_histogram_aggregation: HistogramAggregation = "explicit_bucket_histogram"
    export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S
    export_timeout_s: float = DEFAULT_EXPORT_TIMEOUT_S
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    strict: bool = False
    detail: Detail = "standard"
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH
    fast_path: bool = True
    series_ttl_s: float = 0.0
    attribute_policies: Mapping[str, Any] = field(default_factory=dict)
    normalizers: Mapping[str, Callable[[str], str]] = field(default_factory=dict)

    def dropped(self) -> frozenset[str]:
        """Attribute keys configured away (``drop()``)."""
        return frozenset(key for key, policy in self.attribute_policies.items() if policy.kind == "drop")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _flag(environ: Mapping[str, str], name: str) -> bool | None:
    value = _env(environ, name)
    return None if value is None else value.lower() in _TRUE


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return lowered


def _millis_as_seconds(environ: Mapping[str, str], name: str) -> float | None:
    value = _env(environ, name)
    if value is None:
        return None
    try:
        millis = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of milliseconds") from None
    if millis <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number of milliseconds")
    return millis / 1000.0


def _port(value: str | int, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a port number") from None
    if not 0 <= port <= 65535:  # noqa: PLR2004 - the TCP port range
        raise ValueError(f"{name}={value!r} is not a port number (0-65535)")
    return port


def parse_key_values(text: str, name: str) -> dict[str, str]:
    """Parse the ``key=value,key=value`` form of ``OTEL_RESOURCE_ATTRIBUTES`` and headers."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def _otlp_endpoint(argument: str | None, environ: Mapping[str, str], protocol: Protocol) -> str | None:
    if argument:
        return argument
    specific = _env(environ, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    if specific:
        return specific
    generic = _env(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if generic and protocol == "http/protobuf":
        # The specification appends the signal path to the generic endpoint only.
        return generic.rstrip("/") + "/v1/metrics"
    return generic


def _endpoint_security(
    env: Mapping[str, str],
    *,
    token: str | None,
    token_file: str | None,
    basic: tuple[str, str] | None,
    certfile: str | None,
    keyfile: str | None,
    client_cafile: str | None,
) -> dict[str, Any]:
    """Credentials and TLS files of the pull endpoint, from arguments, files or environment."""
    token = token or _env(env, "MESHMETRICS_PROMETHEUS_BEARER_TOKEN")
    token_file = token_file or _env(env, "MESHMETRICS_PROMETHEUS_BEARER_TOKEN_FILE")
    if token is None and token_file:
        token = read_secret_file(token_file)
    basic_user = _env(env, "MESHMETRICS_PROMETHEUS_BASIC_AUTH_USERNAME")
    if basic is None and basic_user:
        password_file = _env(env, "MESHMETRICS_PROMETHEUS_BASIC_AUTH_PASSWORD_FILE")
        password = (
            read_secret_file(password_file)
            if password_file
            else _env(env, "MESHMETRICS_PROMETHEUS_BASIC_AUTH_PASSWORD")
        )
        basic = (basic_user, password or "")
    certfile = certfile or _env(env, "MESHMETRICS_PROMETHEUS_CERTFILE")
    keyfile = keyfile or _env(env, "MESHMETRICS_PROMETHEUS_KEYFILE")
    if bool(certfile) != bool(keyfile):
        raise ValueError("prometheus_certfile and prometheus_keyfile go together")
    client_cafile = client_cafile or _env(env, "MESHMETRICS_PROMETHEUS_CLIENT_CAFILE")
    if client_cafile and not certfile:
        raise ValueError(
            "prometheus_client_cafile (mutual TLS) needs prometheus_certfile and prometheus_keyfile"
        )
    return {
        "prometheus_bearer_token": token,
        "prometheus_basic_auth": basic,
        "prometheus_certfile": certfile,
        "prometheus_keyfile": keyfile,
        "prometheus_client_cafile": client_cafile,
    }


def _check_attribute_keys(policies: Mapping[str, Any], normalizers: Mapping[str, Any]) -> None:
    from meshmetrics import semconv  # noqa: PLC0415 - semconv imports this module's package

    for key in (*policies, *normalizers):
        if key not in semconv.ATTRIBUTES:
            raise ValueError(f"{key!r} is not an attribute of the conventions registry")
    for key, policy in policies.items():
        if policy.kind in ("bounded", "hashed") and semconv.ATTRIBUTES[key].type == "enum":
            raise ValueError(f"{key!r} is an enum: only drop() applies to it")


def _series_ttl(argument: float | None, env: Mapping[str, str]) -> float:
    if argument is None:
        raw = _env(env, "MESHMETRICS_SERIES_TTL")
        try:
            argument = float(raw) if raw else 0.0
        except ValueError:
            raise ValueError(f"MESHMETRICS_SERIES_TTL={raw!r} is not a number of seconds") from None
    if argument < 0:
        raise ValueError(f"series_ttl={argument!r} must be >= 0 seconds (0 = never)")
    return argument


def resolve(  # noqa: C901 - one branch per documented knob reads clearest
    *,
    environ: Mapping[str, str] | None = None,
    service_name: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    prometheus: bool | None = None,
    prometheus_host: str | None = None,
    prometheus_port: int | None = None,
    prometheus_server: bool = True,
    prometheus_bearer_token: str | None = None,
    prometheus_bearer_token_file: str | None = None,
    prometheus_basic_auth: tuple[str, str] | None = None,
    prometheus_certfile: str | None = None,
    prometheus_keyfile: str | None = None,
    prometheus_client_cafile: str | None = None,
    prometheus_on_fork: str | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    otlp_insecure: bool | None = None,
    otlp_temporality: str | None = None,
    otlp_histogram_aggregation: str | None = None,
    export_interval: float | None = None,
    export_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    strict: bool | None = None,
    detail: str | None = None,
    max_label_length: int | None = None,
    fast_path: bool | None = None,
    series_ttl: float | None = None,
    attribute_policies: Mapping[str, Any] | None = None,
    normalizers: Mapping[str, Callable[[str], str]] | None = None,
) -> Settings:
    """Merge arguments (seconds for durations) over the environment over defaults."""
    env = os.environ if environ is None else environ
    if _flag(env, "OTEL_SDK_DISABLED"):
        return Settings(disabled=True)

    protocol = _choice(
        otlp_protocol
        or _env(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or _env(env, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        _PROTOCOLS,
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    )
    resolved_protocol: Protocol = "http/protobuf" if protocol == "http/protobuf" else "grpc"

    resource: dict[str, str] = {}
    env_resource = _env(env, "OTEL_RESOURCE_ATTRIBUTES")
    if env_resource:
        resource.update(parse_key_values(env_resource, "OTEL_RESOURCE_ATTRIBUTES"))
    if resource_attributes:
        resource.update(resource_attributes)

    headers: Mapping[str, str] | None = otlp_headers
    env_headers = _env(env, "OTEL_EXPORTER_OTLP_METRICS_HEADERS") or _env(env, "OTEL_EXPORTER_OTLP_HEADERS")
    if headers is None and env_headers:
        headers = parse_key_values(env_headers, "OTEL_EXPORTER_OTLP_HEADERS")

    host = prometheus_host or _env(env, "OTEL_EXPORTER_PROMETHEUS_HOST") or DEFAULT_PROMETHEUS_HOST
    if prometheus_port is not None:
        port = _port(prometheus_port, "prometheus_port")
    else:
        env_port = _env(env, "OTEL_EXPORTER_PROMETHEUS_PORT")
        port = (
            DEFAULT_PROMETHEUS_PORT if env_port is None else _port(env_port, "OTEL_EXPORTER_PROMETHEUS_PORT")
        )

    if prometheus is None:
        exporters = _env(env, "OTEL_METRICS_EXPORTER")
        prometheus = exporters is None or "prometheus" in exporters.split(",")

    temporality = _choice(
        otlp_temporality or _env(env, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"),
        _TEMPORALITIES,
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    )
    histogram = _choice(
        otlp_histogram_aggregation or _env(env, "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"),
        _HISTOGRAMS,
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
    )
    chosen_detail = _choice(detail or _env(env, "MESHMETRICS_DETAIL"), _DETAILS, "detail")
    if strict is None:
        strict = bool(_flag(env, "MESHMETRICS_STRICT"))
    if max_label_length is not None and max_label_length < 1:
        raise ValueError(f"max_label_length={max_label_length!r} must be at least 1")
    for name, seconds in (
        ("export_interval", export_interval),
        ("export_timeout", export_timeout),
        ("shutdown_timeout", shutdown_timeout),
    ):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"{name}={seconds!r} must be a positive number of seconds")

    security = _endpoint_security(
        env,
        token=prometheus_bearer_token,
        token_file=prometheus_bearer_token_file,
        basic=prometheus_basic_auth,
        certfile=prometheus_certfile,
        keyfile=prometheus_keyfile,
        client_cafile=prometheus_client_cafile,
    )
    on_fork = _choice(
        prometheus_on_fork or _env(env, "MESHMETRICS_PROMETHEUS_ON_FORK"), _ON_FORK, "prometheus_on_fork"
    )

    if fast_path is None:
        fast_path = _flag(env, "MESHMETRICS_FAST_PATH") is not False
    series_ttl = _series_ttl(series_ttl, env)

    _check_attribute_keys(attribute_policies or {}, normalizers or {})

    return Settings(
        attribute_policies=dict(attribute_policies or {}),
        normalizers=dict(normalizers or {}),
        fast_path=fast_path,
        series_ttl_s=series_ttl,
        prometheus_server=prometheus_server,
        **security,
        prometheus_on_fork=on_fork or "disable",  # type: ignore[arg-type]
        service_name=service_name or _env(env, "OTEL_SERVICE_NAME"),
        resource_attributes=resource,
        prometheus_enabled=prometheus,
        prometheus_host=host,
        prometheus_port=port,
        otlp_endpoint=_otlp_endpoint(otlp_endpoint, env, resolved_protocol),
        otlp_protocol=resolved_protocol,
        otlp_headers=headers,
        otlp_insecure=otlp_insecure
        if otlp_insecure is not None
        else _flag(env, "OTEL_EXPORTER_OTLP_INSECURE"),
        otlp_timeout_s=_millis_as_seconds(env, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT")
        or _millis_as_seconds(env, "OTEL_EXPORTER_OTLP_TIMEOUT")
        or DEFAULT_OTLP_TIMEOUT_S,
        otlp_temporality=temporality or "cumulative",  # type: ignore[arg-type]
        otlp_histogram_aggregation=histogram or "explicit_bucket_histogram",  # type: ignore[arg-type]
        export_interval_s=export_interval
        or _millis_as_seconds(env, "OTEL_METRIC_EXPORT_INTERVAL")
        or DEFAULT_EXPORT_INTERVAL_S,
        export_timeout_s=export_timeout
        or _millis_as_seconds(env, "OTEL_METRIC_EXPORT_TIMEOUT")
        or DEFAULT_EXPORT_TIMEOUT_S,
        shutdown_timeout_s=shutdown_timeout or DEFAULT_SHUTDOWN_TIMEOUT_S,
        strict=strict,
        detail=chosen_detail or "standard",  # type: ignore[arg-type]
        max_label_length=max_label_length or DEFAULT_MAX_LABEL_LENGTH,
    )
