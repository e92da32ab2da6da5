"""Every setting of ``configure()``, declared once, and their resolution into one :class:`Settings`.

:data:`OPTIONS` is the one declaration: each :class:`Option` names its
``configure()`` keyword, its environment variables (first set one wins), its
documented default, the group it belongs to, and how an argument and a
variable are checked. :func:`resolve` reads it; ``configure()``'s typed
signature and the README's configuration table follow it, and a test fails
when they drift apart.

Arguments win over environment variables, which win over defaults. Durations
given as arguments are seconds; ``OTEL_*`` durations are milliseconds (as the
OpenTelemetry specification defines them). Every mistake raises
:class:`ConfigurationError` (a ``ValueError``) naming the setting, where the
value came from and what is allowed; secrets are never echoed.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from meshmetrics._definitions import Conventions, ConventionsConflictError, combine
from meshmetrics._engine.exemplars import FILTERS as EXEMPLAR_FILTERS
from meshmetrics._engine.exemplars import ExemplarFilter
from meshmetrics._errors import ConfigurationError
from meshmetrics._policy.profiles import ALIASES as DETAIL_ALIASES
from meshmetrics._policy.profiles import DETAILS

Protocol = Literal["grpc", "http/protobuf"]
Temporality = Literal["cumulative", "delta", "lowmemory"]
HistogramAggregation = Literal["explicit_bucket_histogram", "base2_exponential_bucket_histogram"]
Detail = Literal["full", "standard", "minimal"]
OnFork = Literal["disable", "offset"]
PortInUse = Literal["warn", "raise"]

DEFAULT_PROMETHEUS_HOST = "localhost"
DEFAULT_PROMETHEUS_PORT = 9464
DEFAULT_EXPORT_INTERVAL_S = 60.0
DEFAULT_EXPORT_TIMEOUT_S = 30.0
DEFAULT_OTLP_TIMEOUT_S = 10.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_MAX_LABEL_LENGTH = 128

# The ranges every duration must fall in (seconds).
EXPORT_INTERVAL_RANGE_S = (0.1, 86_400.0)  # 100 ms .. 24 h
TIMEOUT_RANGE_S = (0.001, 3_600.0)  # 1 ms .. 1 h; an argument of inf means the upper bound
SERIES_TTL_RANGE_S = (1.0, 2_592_000.0)  # 1 s .. 30 days, or 0 for never
PUBLISH_INTERVAL_RANGE_S = (0.1, 60.0)  # multiprocess mode: how often a worker publishes
DEFAULT_PUBLISH_INTERVAL_S = 1.0
MAX_LABEL_LENGTH_RANGE = (1, 65_536)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class PrometheusEndpointError(ConfigurationError, OSError):
    """The pull endpoint cannot listen on ``prometheus_host``:``prometheus_port`` (also an ``OSError``)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        """Name the address and why it could not be bound."""
        super().__init__(
            f"prometheus_host/prometheus_port: cannot listen on {host}:{port} "
            f"({cause.strerror or type(cause).__name__}); allowed: a local address and a port "
            "this process may bind (ports below 1024 need privileges), or 0 for any free port"
        )
        self.host, self.port = host, port


class PrometheusPortInUseError(PrometheusEndpointError):
    """The pull endpoint's port is taken and ``prometheus_port_in_use="raise"`` was asked for."""

    def __init__(self, host: str, port: int) -> None:
        """Name the port that is taken and what to do."""
        ConfigurationError.__init__(
            self,
            f"prometheus_port: port {port} on {host} is already in use (another process, or "
            "another worker of this server); allowed: a free port, 0 for any free port, "
            "prometheus_on_fork='offset' in pre-fork servers, or prometheus_port_in_use='warn' "
            "to go on without this endpoint",
        )
        self.host, self.port = host, port
        self.errno = errno.EADDRINUSE


def redact_url(url: str) -> str:
    """``url`` with any user info (``user:password@``) replaced by ``***@``: safe to log."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?.*@", r"\1***@", url, flags=re.DOTALL)


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
    prometheus_on_fork: OnFork = "disable"
    prometheus_fork_port_range: int = 64
    prometheus_port_in_use: PortInUse = "warn"
    prometheus_native_histograms: bool = False
    otlp_endpoint: str | None = field(default=None, repr=False)  # may carry user info
    otlp_protocol: Protocol = "grpc"
    otlp_headers: Mapping[str, str] | None = field(default=None, repr=False)
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
    exemplar_filter: ExemplarFilter = "trace_based"
    multiprocess_dir: str | None = None
    multiprocess_push: str = "worker"
    multiprocess_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S
    attribute_policies: Mapping[str, Any] = field(default_factory=dict)
    normalizers: Mapping[str, Callable[[str], str]] = field(default_factory=dict)
    conventions: tuple[Conventions, ...] = ()
    """Plugin registries loaded by ``configure(conventions=...)``."""

    def dropped(self) -> frozenset[str]:
        """Attribute keys configured away (``drop()``)."""
        return frozenset(key for key, policy in self.attribute_policies.items() if policy.kind == "drop")

    @property
    def otlp_endpoint_redacted(self) -> str | None:
        """The OTLP endpoint without user info: the form that may be logged."""
        return None if self.otlp_endpoint is None else redact_url(self.otlp_endpoint)


# --- checks: (value, where) -> value; ``where`` is "argument x=" or "variable X" ---------------


def _fail(where: str, shown: object, rule: str) -> ConfigurationError:
    """The error for a value (``shown``; None for a secret) from ``where`` that breaks ``rule``.

    ``where`` reads ``"export_interval: variable OTEL_METRIC_EXPORT_INTERVAL"``
    or ``"export_interval: argument export_interval="``.
    """
    value = "" if shown is None else f"{'' if where.endswith('=') else '='}{shown!r}"
    return ConfigurationError(f"{where}{value}: {rule}")


def _num(number: float) -> str:
    return f"{number:.15g}"


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, value, "must be a non-empty string")
    return value.strip()


def _from_variable(where: str) -> bool:
    return " variable " in f" {where}"


def _flag(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if not _from_variable(where):
        raise _fail(where, value, "must be True or False")
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(where, value, "must be one of true/false, 1/0, yes/no, on/off (any case)")


def _choice(*allowed: str) -> Callable[[object, str], str]:
    def check(value: object, where: str) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise _fail(where, value, "must be one of " + ", ".join(allowed))

    return check


def _number(value: object, where: str, unit: str) -> float:
    if isinstance(value, bool):
        raise _fail(where, value, f"must be a number of {unit}")
    if isinstance(value, str) and _from_variable(where):
        try:
            return float(value.strip())
        except ValueError:
            raise _fail(where, value, f"must be a number of {unit}") from None
    if isinstance(value, int | float):
        return float(value)
    raise _fail(where, value, f"must be a number of {unit}")


def _bounded_seconds(
    low: float, high: float, *, inf_is_high: bool = False, zero: str | None = None
) -> Callable[[object, str], float]:
    """A duration in seconds (arguments) or milliseconds (``OTEL_*`` variables) within a range."""

    def check(value: object, where: str) -> float:
        millis = "variable OTEL_" in where
        unit = "milliseconds" if millis else "seconds"
        scale = 1000.0 if millis else 1.0
        allowed = f"must be a number of {unit} from {_num(low * scale)} to {_num(high * scale)}" + (
            f", or 0 for {zero}" if zero else ""
        )
        if inf_is_high and not _from_variable(where):
            allowed += " (inf means the longest allowed)"
        try:
            number = _number(value, where, unit)
        except ConfigurationError:
            raise _fail(where, value, allowed) from None
        if number == math.inf and inf_is_high and not _from_variable(where):
            return high
        seconds = number / scale
        if zero and seconds == 0:
            return 0.0
        if not (math.isfinite(number) and low <= seconds <= high):
            raise _fail(where, value, allowed)
        return seconds

    return check


_TIMEOUT = _bounded_seconds(*TIMEOUT_RANGE_S, inf_is_high=True)


def timeout_seconds(value: object, where: str) -> float:
    """A timeout argument in seconds: 1 ms .. 1 h, ``inf`` meaning 1 h."""
    return _TIMEOUT(value, where)


def _count(low: int, high: int) -> Callable[[object, str], int]:
    def check(value: object, where: str) -> int:
        try:
            number = int(value) if isinstance(value, str) and _from_variable(where) else value
        except ValueError:
            number = None
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise _fail(where, value, f"must be a whole number from {low} to {high}")
        return number

    return check


_port = _count(0, 65_535)


def _url(value: object, where: str) -> str:
    allowed = "must be an http:// or https:// URL with a host (and a port from 1 to 65535 if given)"
    shown = redact_url(value) if isinstance(value, str) else value
    if not isinstance(value, str):
        raise _fail(where, shown, allowed)
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise _fail(where, shown, allowed) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == 0:
        raise _fail(where, shown, allowed)
    return text


def _key_values(value: object, where: str, *, headers: bool = False) -> dict[str, str]:
    """``k=v,k=v`` (variables) or a mapping (arguments); header values are never echoed."""
    from_variable = _from_variable(where)
    allowed = "key=value pairs separated by commas" if from_variable else "a mapping of str to str"
    if not (isinstance(value, str) if from_variable else isinstance(value, Mapping)):
        raise _fail(where, None, f"must be {allowed}")
    if isinstance(value, str):
        items: list[tuple[str, str]] = []
        for number, item in enumerate(value.split(","), start=1):
            if not item.strip():
                continue
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                shown = f"entry {number}" if headers else item
                raise _fail(where, None, f"{shown!s} is not key=value ({allowed})")
            items.append((key.strip(), text.strip()))
    elif isinstance(value, Mapping):
        items = list(value.items())
    pairs: dict[str, str] = {}
    for key, text in items:
        if not isinstance(key, str) or not isinstance(text, str):
            shown_key = key if isinstance(key, str) else type(key).__name__
            raise _fail(where, None, f"the value of {shown_key!r} must be a str")
        if headers and (not _HEADER_NAME.match(key) or "\r" in text or "\n" in text):
            raise _fail(
                where,
                None,
                f"header {key!r} is not a valid HTTP header name and value (value not shown)",
            )
        pairs[key] = text
    return pairs


def _headers(value: object, where: str) -> dict[str, str]:
    return _key_values(value, where, headers=True)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, type(value).__name__, "must be a mapping from attribute key to value")
    return dict(value)


def _secret(value: object, where: str) -> str:
    """A token or password: never empty or blank, never echoed."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(
            where,
            None,
            "is empty or blank, which would leave /metrics open: give a non-empty secret "
            "or leave the setting out",
        )
    return value.strip()


def read_secret_file(path: str, where: str) -> str:
    """Read a token or password from ``path`` (surrounding whitespace removed); never empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise _fail(where, path, f"must be a readable file holding the secret ({error.strerror})") from None
    return _secret(text, f"{where} (file {path})")


def _basic_auth(value: object, where: str) -> tuple[str, str]:
    if not (isinstance(value, tuple | list) and len(value) == 2):  # noqa: PLR2004 - (user, password)
        raise _fail(where, None, "must be a (username, password) pair of non-empty strings")
    user = _secret(value[0], f"{where} (username)")
    if ":" in user:
        raise _fail(where, None, "the username must not contain ':' (HTTP basic auth)")
    return user, _secret(value[1], f"{where} (password)")


def _conventions(value: object, where: str) -> tuple[Conventions, ...]:
    """Plugin registries: a path, or a list of paths (a variable: paths separated by ``os.pathsep``)."""
    from meshmetrics import semconv  # noqa: PLC0415 - semconv imports this module's package
    from meshmetrics._conventions.loader import load  # noqa: PLC0415 - only plugins need the loader

    paths: list[object] = [value]
    if isinstance(value, str) and _from_variable(where):
        paths = [path for path in value.split(os.pathsep) if path]
    elif isinstance(value, (list, tuple)):
        paths = list(value)
    files = [path for path in paths if isinstance(path, (str, os.PathLike)) and str(path).strip()]
    if len(files) != len(paths):
        rule = "must be a path or a list of paths to conventions YAML files"
        raise _fail(where, value if isinstance(value, str) else type(value).__name__, rule)
    loaded = tuple(load(path, builtin=semconv.CONVENTIONS).conventions() for path in files)
    try:
        combine((semconv.CONVENTIONS, *loaded))
    except ConventionsConflictError as conflict:
        raise ConfigurationError(f"conventions: {conflict}") from None
    return loaded


def _exporters(value: object, where: str) -> bool:
    if isinstance(value, bool) or not _from_variable(where):
        return _flag(value, where)
    names = [name.strip().lower() for name in _text(value, where).split(",")]
    return "prometheus" in names


# --- the declaration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting: its ``configure()`` keyword, variables, default, group, check and meaning."""

    name: str | None  # the configure() keyword; None: a variable only
    group: str
    default: str  # as documented in the README
    doc: str
    env: tuple[str, ...] = ()
    check: Callable[[Any, str], Any] = _text
    secret: bool = False  # a variable set to "" is an error (not "unset"); values never echoed

    @property
    def key(self) -> str:
        """The name :func:`resolve` files the value under."""
        return self.name or self.env[0]


def _o(name: str | None, group: str, default: str, doc: str, *env: str, **kw: Any) -> Option:
    return Option(name, group, default, doc, env, **kw)


_PFX = "MESHMETRICS_PROMETHEUS_"

OPTIONS: tuple[Option, ...] = (
    # identity
    _o(None, "identity", "`false`", "`true`: everything becomes a no-op", "OTEL_SDK_DISABLED", check=_flag),
    _o(
        "service_name", "identity", "`unknown_service:python`", "resource `service.name`", "OTEL_SERVICE_NAME"
    ),
    _o(
        "resource_attributes",
        "identity",
        "—",
        "extra resource attributes (`k=v,k=v`)",
        "OTEL_RESOURCE_ATTRIBUTES",
        check=_key_values,
    ),
    # the pull endpoint
    _o(
        "prometheus",
        "endpoint",
        "on",
        "serve Prometheus (variable: on when it lists `prometheus` or is unset)",
        "OTEL_METRICS_EXPORTER",
        check=_exporters,
    ),
    _o(
        "prometheus_host",
        "endpoint",
        "`localhost`",
        "bind address (`0.0.0.0` to expose)",
        "OTEL_EXPORTER_PROMETHEUS_HOST",
    ),
    _o(
        "prometheus_port",
        "endpoint",
        "`9464`",
        "port (`0`: any free port; see `handle.prometheus_port`)",
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        check=_port,
    ),
    _o(
        "prometheus_server",
        "endpoint",
        "`True`",
        "serve `/metrics` on its own port; `False` to mount `handle.wsgi_app()`/`asgi_app()`",
        check=_flag,
    ),
    _o(
        "prometheus_port_in_use",
        "endpoint",
        "`warn`",
        "port taken: `warn` (log `meshmetrics_prometheus_port_in_use`, go on without the endpoint) "
        "or `raise` (see Operations)",
        _PFX + "PORT_IN_USE",
        check=_choice("warn", "raise"),
    ),
    _o(
        "prometheus_native_histograms",
        "endpoint",
        "off",
        "serve histograms as native histograms to a Prometheus that asks for protobuf (see Exemplars and "
        "native histograms); text scrapers keep the classic buckets",
        _PFX + "NATIVE_HISTOGRAMS",
        check=_flag,
    ),
    _o(
        "prometheus_on_fork",
        "endpoint",
        "`disable`",
        "pull endpoint in forked children: `disable` or `offset` (see Operations)",
        _PFX + "ON_FORK",
        check=_choice("disable", "offset"),
    ),
    # security of the pull endpoint
    _o(
        "prometheus_bearer_token",
        "security",
        "—",
        "require `Authorization: Bearer` (see Security)",
        _PFX + "BEARER_TOKEN",
        check=_secret,
        secret=True,
    ),
    _o(
        "prometheus_bearer_token_file",
        "security",
        "—",
        "the same, read from a file",
        _PFX + "BEARER_TOKEN_FILE",
        check=_text,
        secret=True,
    ),
    _o(
        "prometheus_basic_auth",
        "security",
        "—",
        "require HTTP basic auth: `(username, password)`; variables: username with password or password file",
        _PFX + "BASIC_AUTH_USERNAME",
        _PFX + "BASIC_AUTH_PASSWORD",
        _PFX + "BASIC_AUTH_PASSWORD_FILE",
        check=_basic_auth,
        secret=True,
    ),
    _o(
        "prometheus_certfile",
        "security",
        "—",
        "TLS certificate (with the key)",
        _PFX + "CERTFILE",
        check=_text,
        secret=True,
    ),
    _o("prometheus_keyfile", "security", "—", "TLS private key", _PFX + "KEYFILE", check=_text, secret=True),
    _o(
        "prometheus_client_cafile",
        "security",
        "—",
        "mutual TLS: the CA client certificates must chain to",
        _PFX + "CLIENT_CAFILE",
        check=_text,
        secret=True,
    ),
    # OTLP push
    _o(
        "otlp_endpoint",
        "otlp",
        "off",
        "push OTLP here (`http://` or `https://`; for `http/protobuf` the generic one gets `/v1/metrics`)",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        check=_url,
    ),
    _o(
        "otlp_protocol",
        "otlp",
        "`grpc`",
        "`grpc` or `http/protobuf`",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        check=_choice("grpc", "http/protobuf"),
    ),
    _o(
        "otlp_headers",
        "otlp",
        "—",
        "request headers (values never logged)",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
        check=_headers,
    ),
    _o(
        "otlp_insecure",
        "otlp",
        "from the URL scheme",
        "gRPC without TLS",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
        check=_flag,
    ),
    _o(
        "otlp_timeout",
        "otlp",
        "10 s",
        "per-export request timeout (1 ms .. 1 h)",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        check=_TIMEOUT,
    ),
    _o(
        "otlp_temporality",
        "otlp",
        "`cumulative`",
        "`cumulative`, `delta` or `lowmemory`",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        check=_choice("cumulative", "delta", "lowmemory"),
    ),
    _o(
        "otlp_histogram_aggregation",
        "otlp",
        "explicit",
        "`base2_exponential_bucket_histogram` for OTLP only",
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        check=_choice("explicit_bucket_histogram", "base2_exponential_bucket_histogram"),
    ),
    # export timing
    _o(
        "export_interval",
        "timing",
        "60 s",
        "OTLP push interval (100 ms .. 24 h)",
        "OTEL_METRIC_EXPORT_INTERVAL",
        check=_bounded_seconds(*EXPORT_INTERVAL_RANGE_S),
    ),
    _o(
        "export_timeout",
        "timing",
        "30 s",
        "bound on one collection + export (1 ms .. 1 h)",
        "OTEL_METRIC_EXPORT_TIMEOUT",
        check=_TIMEOUT,
    ),
    _o("shutdown_timeout", "timing", "5 s", "bound on `shutdown()` (1 ms .. 1 h)", check=_TIMEOUT),
    # recording and cardinality
    _o(
        "strict",
        "recording",
        "off",
        "raise `ValueError` on invalid measurements",
        "MESHMETRICS_STRICT",
        check=_flag,
    ),
    _o(
        "detail",
        "recording",
        "`standard`",
        "`full`, `standard` or `minimal` (see the reference)",
        "MESHMETRICS_DETAIL",
        check=_choice(*DETAIL_ALIASES, *DETAILS),
    ),
    _o(
        "max_label_length",
        "recording",
        "128",
        "label values are cut to this many characters (1 .. 65536)",
        check=_count(*MAX_LABEL_LENGTH_RANGE),
    ),
    _o(
        "fast_path",
        "recording",
        "on",
        "meshmetrics' own aggregation (see Performance)",
        "MESHMETRICS_FAST_PATH",
        check=_flag,
    ),
    _o(
        "exemplar_filter",
        "recording",
        "`trace_based`",
        "which measurements keep an exemplar: `trace_based`, `always_on` or `always_off` (see Exemplars "
        "and native histograms)",
        "OTEL_METRICS_EXEMPLAR_FILTER",
        check=_choice(*EXEMPLAR_FILTERS),
    ),
    _o(
        "series_ttl",
        "recording",
        "0 (never)",
        "seconds after which idle series stop being exported (0, or 1 s .. 30 days)",
        "MESHMETRICS_SERIES_TTL",
        check=_bounded_seconds(*SERIES_TTL_RANGE_S, zero="never"),
    ),
    _o(
        "attribute_policies",
        "recording",
        "from the registry",
        "per-attribute `bounded(n)`, `hashed(n)`, `drop()`, `unbounded()` (see Cardinality)",
        check=_mapping,
    ),
    _o(
        "normalizers",
        "recording",
        "—",
        "per-attribute `str -> str` functions, e.g. `template_path`",
        check=_mapping,
    ),
    _o(
        "conventions",
        "recording",
        "—",
        "your own metrics: plugin registries (YAML paths; the variable separates them with `:`), "
        "see Your own metrics",
        "MESHMETRICS_CONVENTIONS",
        check=_conventions,
    ),
    # several worker processes behind one endpoint
    _o(
        "multiprocess_dir",
        "workers",
        "off",
        "directory where every worker process publishes its state; one `/metrics` serves them merged "
        "(see Deployment)",
        "MESHMETRICS_MULTIPROCESS_DIR",
        check=_text,
    ),
    _o(
        "multiprocess_push",
        "workers",
        "`worker`",
        "OTLP in multiprocess mode: `worker` (each worker pushes its own, with its own "
        "`service.instance.id`) or `merged` (one process at a time pushes every worker merged)",
        "MESHMETRICS_MULTIPROCESS_PUSH",
        check=_choice("worker", "merged"),
    ),
    _o(
        "multiprocess_interval",
        "workers",
        "1 s",
        "how often each worker publishes (0.1 s .. 60 s); also at every graceful exit",
        "MESHMETRICS_MULTIPROCESS_INTERVAL",
        check=_bounded_seconds(*PUBLISH_INTERVAL_RANGE_S),
    ),
)

OPTIONS_BY_KEY: Mapping[str, Option] = {option.key: option for option in OPTIONS}
ARGUMENTS: tuple[str, ...] = tuple(option.name for option in OPTIONS if option.name)


# --- resolution --------------------------------------------------------------------------------


@dataclass
class _Values:
    """What each option resolved to (None: not given) and where it came from."""

    values: dict[str, Any]
    where: dict[str, str]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value


def _where(option: Option, variable: str | None = None) -> str:
    source = f"variable {variable}" if variable else f"argument {option.name}="
    return source if option.name is None else f"{option.name}: {source}"


def _from_environment(option: Option, environ: Mapping[str, str]) -> tuple[Any, str] | None:
    if option.name == "prometheus_basic_auth":
        return _basic_auth_from_environment(option, environ)
    for variable in option.env:
        text = environ.get(variable)
        if text is None or (not text.strip() and not option.secret):
            continue  # the specification: an empty variable is an unset one
        where = _where(option, variable)
        return option.check(text, where), where
    return None


def _basic_auth_from_environment(option: Option, environ: Mapping[str, str]) -> tuple[Any, str] | None:
    user_var, password_var, file_var = option.env
    present = [name for name in option.env if name in environ]
    if not present:
        return None
    if user_var not in present:
        raise _fail(_where(option, present[0]), None, f"needs {user_var} too")
    user_where = _where(option, user_var)
    user = _secret(environ[user_var], user_where)
    if ":" in user:
        raise _fail(user_where, None, "the username must not contain ':' (HTTP basic auth)")
    if (password_var in environ) == (file_var in environ):
        raise _fail(user_where, None, f"needs exactly one of {password_var} and {file_var}")
    if password_var in environ:
        password = _secret(environ[password_var], _where(option, password_var))
    else:
        where = _where(option, file_var)
        password = read_secret_file(_text(environ[file_var], where), where)
    return (user, password), user_where


def _gather(environ: Mapping[str, str], arguments: Mapping[str, Any]) -> _Values:
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for option in OPTIONS:
        argument = arguments.get(option.key) if option.name else None
        if argument is not None:
            source = _where(option)
            values[option.key], where[option.key] = option.check(argument, source), source
            continue
        found = _from_environment(option, environ)
        if found is not None:
            values[option.key], where[option.key] = found
    return _Values(values, where)


def _otlp_endpoint(got: _Values) -> str | None:
    endpoint: str | None = got.get("otlp_endpoint")
    generic = got.where.get("otlp_endpoint", "").endswith("variable OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint and generic and got.get("otlp_protocol") == "http/protobuf":
        # The specification appends the signal path to the generic endpoint only.
        return endpoint.rstrip("/") + "/v1/metrics"
    return endpoint


def _existing_file(got: _Values, key: str) -> str | None:
    path: str | None = got.get(key)
    if path is not None and not Path(path).is_file():
        raise _fail(got.where[key], path, "must be the path of an existing, readable file")
    return path


def _security(got: _Values) -> dict[str, Any]:
    """Credentials and TLS files of the pull endpoint; never an endpoint left open by mistake."""
    token = got.get("prometheus_bearer_token")
    if got.get("prometheus_bearer_token_file") is not None:
        where = got.where["prometheus_bearer_token_file"]
        if token is not None:
            raise _fail(
                where,
                None,
                f"give a token or a token file, not both ({got.where['prometheus_bearer_token']} too)",
            )
        token = read_secret_file(got.get("prometheus_bearer_token_file"), where)
    certfile, keyfile = got.get("prometheus_certfile"), got.get("prometheus_keyfile")
    if (certfile is None) != (keyfile is None):
        given = got.where["prometheus_certfile" if certfile else "prometheus_keyfile"]
        raise _fail(given, None, "prometheus_certfile and prometheus_keyfile go together")
    if got.get("prometheus_client_cafile") is not None and certfile is None:
        raise _fail(
            got.where["prometheus_client_cafile"],
            None,
            "mutual TLS needs prometheus_certfile and prometheus_keyfile as well",
        )
    return {
        "prometheus_bearer_token": token,
        "prometheus_basic_auth": got.get("prometheus_basic_auth"),
        "prometheus_certfile": _existing_file(got, "prometheus_certfile"),
        "prometheus_keyfile": _existing_file(got, "prometheus_keyfile"),
        "prometheus_client_cafile": _existing_file(got, "prometheus_client_cafile"),
    }


def _check_attribute_keys(
    policies: Mapping[str, Any], normalizers: Mapping[str, Any], plugins: tuple[Conventions, ...]
) -> None:
    from meshmetrics import semconv  # noqa: PLC0415 - semconv imports this module's package

    attributes = combine((semconv.CONVENTIONS, *plugins)).attributes
    for key in (*policies, *normalizers):
        if key not in attributes:
            raise ConfigurationError(
                f"attribute_policies/normalizers: argument key {key!r} is not allowed; "
                "an attribute of the conventions registry"
            )
    for key, policy in policies.items():
        if policy.kind in ("bounded", "hashed") and attributes[key].type == "enum":
            raise ConfigurationError(
                f"attribute_policies: argument key {key!r} is an enum; only drop() applies to it"
            )


def resolve(*, environ: Mapping[str, str] | None = None, **arguments: Any) -> Settings:
    """Merge ``arguments`` (the keywords of ``configure()``; None = not given) over the environment.

    ``OTEL_SDK_DISABLED=true`` wins over everything (a kill switch must work
    even when the rest is misconfigured). Raises :class:`ConfigurationError`.
    """
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise TypeError(f"resolve() got unexpected keyword arguments {unknown}")
    env = os.environ if environ is None else environ
    disabled = _from_environment(OPTIONS_BY_KEY["OTEL_SDK_DISABLED"], env)
    if disabled is not None and disabled[0]:
        return Settings(disabled=True)
    got = _gather(env, arguments)
    policies = got.get("attribute_policies", {})
    normalizers = got.get("normalizers", {})
    plugins = got.get("conventions", ())
    _check_attribute_keys(policies, normalizers, plugins)
    return Settings(
        service_name=got.get("service_name"),
        resource_attributes=got.get("resource_attributes", {}),
        prometheus_enabled=got.get("prometheus", True),
        prometheus_host=got.get("prometheus_host", DEFAULT_PROMETHEUS_HOST),
        prometheus_port=got.get("prometheus_port", DEFAULT_PROMETHEUS_PORT),
        prometheus_server=got.get("prometheus_server", True),
        prometheus_port_in_use=got.get("prometheus_port_in_use", "warn"),
        prometheus_native_histograms=got.get("prometheus_native_histograms", False),
        prometheus_on_fork=got.get("prometheus_on_fork", "disable"),
        **_security(got),
        otlp_endpoint=_otlp_endpoint(got),
        otlp_protocol=got.get("otlp_protocol", "grpc"),
        otlp_headers=got.get("otlp_headers"),
        otlp_insecure=got.get("otlp_insecure"),
        otlp_timeout_s=got.get("otlp_timeout", DEFAULT_OTLP_TIMEOUT_S),
        otlp_temporality=got.get("otlp_temporality", "cumulative"),
        otlp_histogram_aggregation=got.get("otlp_histogram_aggregation", "explicit_bucket_histogram"),
        export_interval_s=got.get("export_interval", DEFAULT_EXPORT_INTERVAL_S),
        export_timeout_s=got.get("export_timeout", DEFAULT_EXPORT_TIMEOUT_S),
        shutdown_timeout_s=got.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT_S),
        strict=got.get("strict", False),
        detail=got.get("detail", "standard"),
        max_label_length=got.get("max_label_length", DEFAULT_MAX_LABEL_LENGTH),
        fast_path=got.get("fast_path", True),
        series_ttl_s=got.get("series_ttl", 0.0),
        exemplar_filter=got.get("exemplar_filter", "trace_based"),
        multiprocess_dir=got.get("multiprocess_dir"),
        multiprocess_push=got.get("multiprocess_push", "worker"),
        multiprocess_interval_s=got.get("multiprocess_interval", DEFAULT_PUBLISH_INTERVAL_S),
        attribute_policies=policies,
        normalizers=normalizers,
        conventions=plugins,
    )
