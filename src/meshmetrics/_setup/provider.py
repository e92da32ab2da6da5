"""``configure()``: one MeterProvider, Views from the conventions, Prometheus and OTLP readers."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import MeterProvider as ApiMeterProvider
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from meshmetrics import semconv
from meshmetrics._definitions import Conventions, combine
from meshmetrics._engine import runtime as _runtime
from meshmetrics._engine.exemplars import sdk_exemplar_filter
from meshmetrics._engine.merge import HistogramKind
from meshmetrics._errors import ConfigurationError
from meshmetrics._log import logger as _logger
from meshmetrics._policy.core import AttributePolicy
from meshmetrics._policy.profiles import kept_keys
from meshmetrics._serve import apps as _apps
from meshmetrics._serve import http as _http
from meshmetrics._serve import reader as _prometheus
from meshmetrics._serve.exposition import EndpointAuth
from meshmetrics._serve.translate import TranslatingCollector
from meshmetrics._setup import otlp as _otlp
from meshmetrics._setup import settings as _config
from meshmetrics._setup import workers as _workers

_configure_lock = threading.Lock()
_current: MetricsHandle | None = None


def conventions_views(
    detail: str, dropped: frozenset[str] = frozenset(), plugins: Sequence[Conventions] = ()
) -> list[View]:
    """Views for every registry metric, plugins' too: attribute allow-list (per profile), series limit."""
    conventions = combine((semconv.CONVENTIONS, *plugins))
    return [
        View(
            instrument_name=definition.name,
            meter_name=_runtime.METER_NAME,
            attribute_keys=set(kept_keys(definition, conventions.attributes, detail)) - dropped,
            aggregation_cardinality_limit=definition.cardinality_limit,
        )
        for definition in conventions.metrics.values()
    ]


def _run_bounded(action: Callable[[], object], timeout_s: float) -> bool:
    """Run ``action`` in a daemon thread; True if it finished within ``timeout_s``."""
    done = threading.Event()

    def target() -> None:
        try:
            action()
        except Exception as error:
            _logger.warning("meshmetrics_shutdown_step_failed", error=type(error).__name__)
        finally:
            done.set()

    threading.Thread(target=target, name="meshmetrics-shutdown", daemon=True).start()
    return done.wait(timeout_s)


class MetricsHandle:
    """What ``configure()`` returns: the provider, its endpoints, flush and shutdown.

    Usable as a context manager; leaving the block shuts down.
    """

    def __init__(
        self,
        settings: _config.Settings,
        meter_provider: ApiMeterProvider,
        *,
        registry: CollectorRegistry | None = None,
        server: _http.MetricsServer | None = None,
        push_reader: PeriodicExportingMetricReader | None = None,
        tracker: _otlp.TrackingExporter | None = None,
        views: Sequence[View] = (),
        publisher: _workers.Publisher | None = None,
    ) -> None:
        """Wrap a built provider; use :func:`meshmetrics.configure` rather than this."""
        self.settings = settings
        self.meter_provider = meter_provider
        self._registry = registry
        self._prometheus = server
        self._views = tuple(views)
        self.runtime: _runtime.Runtime | None = None
        self._push_reader = push_reader
        self._tracker = tracker
        self._publisher = publisher
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._shutdown_result: bool | None = None

    @property
    def enabled(self) -> bool:
        """False when ``OTEL_SDK_DISABLED=true`` made everything a no-op."""
        return not self.settings.disabled

    @property
    def prometheus_url(self) -> str | None:
        """The ``/metrics`` URL being served, or None.

        None when the pull endpoint is off (``prometheus=False``,
        ``prometheus_server=False``, a forked child with ``prometheus_on_fork="disable"``)
        or when its port was already in use (logged as ``meshmetrics_prometheus_port_in_use``).
        """
        return self._prometheus.url if self._prometheus else None

    @property
    def prometheus_port(self) -> int | None:
        """The bound port of the pull endpoint (resolved when 0 was asked), or None as for the URL."""
        return self._prometheus.port if self._prometheus else None

    def wsgi_app(self) -> _apps.WSGIApp:
        """``/metrics`` as a WSGI app with this configuration's authentication.

        Made before a fork (gunicorn ``--preload``), it serves the forked
        worker's own provider (or, in multiprocess mode, every worker merged).
        """
        native = self.settings.prometheus_native_histograms
        return _apps.make_wsgi_app(
            self._registry_source(), endpoint_auth(self.settings), native_histograms=native
        )

    def asgi_app(self) -> _apps.ASGIApp:
        """``/metrics`` as an ASGI app with this configuration's authentication (fork-aware, as WSGI)."""
        native = self.settings.prometheus_native_histograms
        return _apps.make_asgi_app(
            self._registry_source(), endpoint_auth(self.settings), native_histograms=native
        )

    def _registry_source(self) -> CollectorRegistry:
        if self._registry is None:
            raise ValueError("the Prometheus reader is off: configure(prometheus=True)")
        return cast("CollectorRegistry", _FollowingRegistry(self))  # collect() is all an app uses

    def _current_registry(self) -> CollectorRegistry | None:
        """The handle's registry, or, in a process forked after it was made, the child's own."""
        if os.getpid() != self._pid:
            successor = current_handle()
            return successor._registry if successor is not None else None  # noqa: SLF001
        return self._registry

    def _take_over_endpoint(self) -> None:
        """Multiprocess mode, on each publish: serve the merged view if nobody does any more."""
        if self._prometheus is not None or self._registry is None or self._shutdown_result is not None:
            return
        if not self.settings.prometheus_server:
            return
        try:
            server = _bind(self.settings, self._registry, self.settings.prometheus_port)
        except OSError:
            return  # still served by another process
        self._prometheus = server
        _logger.info("meshmetrics_prometheus_endpoint_taken_over", port=server.port, pid=os.getpid())

    @property
    def otlp_endpoint(self) -> str | None:
        """Where OTLP is pushed, or None when push is off."""
        return self.settings.otlp_endpoint if self._push_reader else None

    @property
    def last_export_succeeded(self) -> bool | None:
        """Whether the last OTLP export reached the collector (None: no export yet, or no OTLP)."""
        if self._tracker is None or self._tracker.last_result is None:
            return None
        return self._tracker.last_result is MetricExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        """Export now to the OTLP collector; True only if that export reached it.

        Only the push reader is flushed: flushing the whole provider would queue
        a collection in the Prometheus reader and duplicate series on the next
        scrape. Returns True when there is nothing to push.
        """
        timeout_s = (
            self.settings.export_timeout_s
            if timeout is None
            else _config.timeout_seconds(timeout, "force_flush: argument timeout=")
        )
        if self._push_reader is None or self._tracker is None:
            return True
        exports_before = self._tracker.exports
        reader = self._push_reader
        finished = _run_bounded(lambda: reader.force_flush(timeout_millis=timeout_s * 1000), timeout_s)
        return (
            finished
            and self._tracker.exports > exports_before
            and self._tracker.last_result is MetricExportResult.SUCCESS
        )

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush the last measurements, stop exporters and the HTTP server, free the port.

        Idempotent and bounded by ``timeout`` seconds (default
        ``shutdown_timeout`` of ``configure``). Returns True if everything
        stopped in time and the final OTLP export (if any) reached the collector.
        """
        global _current  # noqa: PLW0603 - the one active handle of the process
        timeout_s = (
            self.settings.shutdown_timeout_s
            if timeout is None
            else _config.timeout_seconds(timeout, "shutdown: argument timeout=")
        )
        with self._lock:
            if self._shutdown_result is not None:
                return self._shutdown_result
            deadline = time.monotonic() + timeout_s
            exports_before = self._tracker.exports if self._tracker else 0
            ok = True
            if self._publisher is not None:  # the last state, for the merged view (before the provider stops)
                publisher = self._publisher
                ok = _run_bounded(publisher.close, max(0.5, timeout_s / 2))
            if isinstance(self.meter_provider, MeterProvider):
                provider = self.meter_provider
                ok = (
                    _run_bounded(lambda: provider.shutdown(timeout_millis=timeout_s * 1000), timeout_s) and ok
                )
            if self._prometheus is not None:
                ok = _run_bounded(self._prometheus.stop, max(0.5, deadline - time.monotonic())) and ok
            if self._tracker is not None:
                ok = (
                    ok
                    and self._tracker.exports > exports_before
                    and self._tracker.last_result is MetricExportResult.SUCCESS
                )
            if _runtime.state.current is not None and _runtime.state.current.provider is self.meter_provider:
                _runtime.state.current = None
            if _current is self:
                _current = None
            self._shutdown_result = ok
            _logger.info("meshmetrics_shutdown", clean=ok)
            return ok

    def __enter__(self) -> MetricsHandle:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Shut down."""
        self.shutdown()


def _bind(settings: _config.Settings, registry: CollectorRegistry, port: int) -> _http.MetricsServer:
    """Serve ``registry`` on ``port`` with the settings' host, authentication, TLS and formats."""
    return _http.serve(
        registry,
        settings.prometheus_host,
        port,
        endpoint_auth(settings),
        _tls(settings),
        native_histograms=settings.prometheus_native_histograms,
    )


def _check_views(views: Sequence[View], prometheus: bool) -> None:
    for view in views:
        if prometheus and isinstance(view._aggregation, ExponentialBucketHistogramAggregation):  # noqa: SLF001
            raise ConfigurationError(
                "views: argument views=: a View forcing exponential histograms would break the "
                "Prometheus endpoint (every scrape fails); ask for them on OTLP only with "
                "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION="
                "base2_exponential_bucket_histogram or otlp_histogram_aggregation="
            )


def configure(
    *,
    service_name: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    prometheus: bool | None = None,
    prometheus_host: str | None = None,
    prometheus_port: int | None = None,
    prometheus_server: bool | None = None,
    prometheus_port_in_use: Literal["warn", "raise"] | None = None,
    prometheus_native_histograms: bool | None = None,
    prometheus_on_fork: Literal["disable", "offset"] | None = None,
    prometheus_bearer_token: str | None = None,
    prometheus_bearer_token_file: str | None = None,
    prometheus_basic_auth: tuple[str, str] | None = None,
    prometheus_certfile: str | None = None,
    prometheus_keyfile: str | None = None,
    prometheus_client_cafile: str | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: Literal["grpc", "http/protobuf"] | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    otlp_insecure: bool | None = None,
    otlp_timeout: float | None = None,
    otlp_temporality: Literal["cumulative", "delta", "lowmemory"] | None = None,
    otlp_histogram_aggregation: Literal["explicit_bucket_histogram", "base2_exponential_bucket_histogram"]
    | None = None,
    export_interval: float | None = None,
    export_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    strict: bool | None = None,
    detail: Literal["full", "standard", "minimal"] | None = None,
    max_label_length: int | None = None,
    fast_path: bool | None = None,
    series_ttl: float | None = None,
    exemplar_filter: Literal["trace_based", "always_on", "always_off"] | None = None,
    attribute_policies: Mapping[str, AttributePolicy] | None = None,
    normalizers: Mapping[str, Callable[[str], str]] | None = None,
    conventions: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    multiprocess_dir: str | None = None,
    multiprocess_push: Literal["worker", "merged"] | None = None,
    multiprocess_interval: float | None = None,
    readers: Sequence[MetricReader] = (),
    views: Sequence[View] = (),
    set_global: bool = True,
    shutdown_on_exit: bool = True,
    environ: Mapping[str, str] | None = None,
) -> MetricsHandle:
    """Build the process's MeterProvider and make the facades record to it.

    Every setting is declared once in ``meshmetrics._setup.settings.OPTIONS``
    (the README's configuration table lists them): ``None`` means "not given",
    and then the standard ``OTEL_*`` / ``MESHMETRICS_*`` variable or the
    default applies. Durations are in seconds. Configuration mistakes raise
    :class:`~meshmetrics.ConfigurationError` (a ``ValueError``) naming the
    setting, its source and what is allowed; nothing else does. A pull
    endpoint whose port is taken is logged (``meshmetrics_prometheus_port_in_use``)
    and left out, ``handle.prometheus_url`` being None, unless
    ``prometheus_port_in_use="raise"``. Calling it again shuts the previous
    provider down first (its HTTP server and exporter thread).
    """
    given = locals()  # first statement: exactly the keywords above
    settings = _config.resolve(environ=environ, **{name: given[name] for name in _config.ARGUMENTS})
    global _current  # noqa: PLW0603 - the one active handle of the process
    with _configure_lock:
        _fork.pending = None  # an explicit configure() in a forked child replaces the rebuild
        if _current is not None:
            _logger.info("meshmetrics_reconfigure", previous=_current.prometheus_url)
            _current.shutdown()
        if settings.disabled:
            _runtime.state.current = None
            handle = MetricsHandle(settings, NoOpMeterProvider())
            _logger.info("meshmetrics_disabled", reason="OTEL_SDK_DISABLED")
            _current = handle
            return handle
        events = _Events()
        handle = _build(settings, readers, views, events=events)
        _runtime.state.current = handle.runtime
        if set_global:
            _set_global(handle.meter_provider)
        if shutdown_on_exit:
            atexit.register(handle.shutdown)
        _current = handle
    events.emit()
    return handle


def endpoint_auth(settings: _config.Settings) -> EndpointAuth:
    """The credentials a scrape must present, from the settings."""
    basic = settings.prometheus_basic_auth
    return EndpointAuth(
        bearer_token=settings.prometheus_bearer_token,
        basic_username=basic[0] if basic else None,
        basic_password=basic[1] if basic else None,
    )


def _tls(settings: _config.Settings) -> _http.TLSConfig | None:
    if not (settings.prometheus_certfile and settings.prometheus_keyfile):
        return None
    return _http.TLSConfig(
        settings.prometheus_certfile, settings.prometheus_keyfile, settings.prometheus_client_cafile
    )


def _resource(settings: _config.Settings) -> Resource:
    attributes: dict[str, str] = {"service.instance.id": str(uuid.uuid4())}
    attributes.update(settings.resource_attributes)
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    return Resource.create(attributes)


class _Events:
    """Log lines of one build, emitted after it (in a forked child: from a thread of their own)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event, fields))

    def emit(self) -> None:
        """Log every line now, in order."""
        for level, event, fields in self.lines:
            getattr(_logger, level)(event, **fields)
        self.lines.clear()


def _serve_endpoint(
    settings: _config.Settings,
    registry: CollectorRegistry,
    ports: Sequence[int],
    events: _Events,
    *,
    may_raise: bool,
    shared: bool = False,
) -> _http.MetricsServer | None:
    """The first of ``ports`` that binds; a port in use is a warning unless told to raise.

    ``shared`` (multiprocess mode): the port in use is expected, another process
    of the service serves the merged view; this one takes it over later.
    """
    host = settings.prometheus_host
    for port in ports:
        try:
            return _bind(settings, registry, port)
        except OSError as error:  # noqa: PERF203 - one try per port, rarely more than one
            if error.errno == errno.EADDRINUSE:
                continue
            raise _config.PrometheusEndpointError(host, port, error) from None
    if shared:
        events.info(
            "meshmetrics_prometheus_endpoint_elsewhere",
            port=ports[0],
            pid=os.getpid(),
            reason="another process of this service serves the merged view; this one publishes to it "
            "and takes the port over if that process exits",
        )
        return None
    if may_raise and settings.prometheus_port_in_use == "raise":
        raise _config.PrometheusPortInUseError(host, ports[0])
    events.warning(
        "meshmetrics_prometheus_port_in_use",
        port=ports[0],
        ports_tried=len(ports),
        host=host,
        pid=os.getpid(),
        fix="this process records without its own /metrics endpoint: give each process its own "
        "port (prometheus_port=0 for any free one, or prometheus_on_fork='offset' in pre-fork "
        "servers), push with OTLP, or set prometheus_port_in_use='raise' to fail instead",
    )
    return None


def _pull_readers(
    settings: _config.Settings, readers: list[MetricReader]
) -> tuple[_prometheus.CumulativeReader | None, CollectorRegistry | None, MetricReader | None]:
    """Add the pull side's readers: this process's own endpoint, or (multiprocess) its published state."""
    if settings.multiprocess_dir:
        publishing = _prometheus.CumulativeReader()
        readers.append(publishing)
        # the endpoint serves every worker merged: its collector is registered once the provider exists
        return (
            publishing,
            CollectorRegistry(auto_describe=True) if settings.prometheus_enabled else None,
            None,
        )
    if not settings.prometheus_enabled:
        return None, None, None
    endpoint_reader, registry = _prometheus.make_translating_reader()
    readers.append(endpoint_reader)
    return None, registry, endpoint_reader


def _build(
    settings: _config.Settings,
    extra_readers: Sequence[MetricReader],
    user_views: Sequence[View],
    resource: Resource | None = None,
    *,
    events: _Events,
    ports: Sequence[int] | None = None,
    in_child: bool = False,
) -> MetricsHandle:
    text_only = settings.prometheus_enabled and not settings.prometheus_native_histograms
    _check_views(user_views, prometheus=text_only)
    resource = resource or _resource(settings)

    readers: list[MetricReader] = list(extra_readers)
    publishing, registry, endpoint_reader = _pull_readers(settings, readers)
    push_reader: PeriodicExportingMetricReader | None = None
    tracker = None
    if settings.otlp_endpoint:
        _otlp.quiet_exporter_logs()
        tracker = _otlp.TrackingExporter(_otlp.build_exporter(settings))
        if settings.multiprocess_dir and settings.multiprocess_push == "merged":
            push_reader = _workers.MergedPushReader(
                tracker, interval_s=settings.export_interval_s, timeout_s=settings.export_timeout_s
            )
        else:
            push_reader = PeriodicExportingMetricReader(
                tracker,
                export_interval_millis=settings.export_interval_s * 1000,
                export_timeout_millis=settings.export_timeout_s * 1000,
            )
        readers.append(push_reader)

    provider = MeterProvider(
        metric_readers=readers,
        resource=resource,
        views=[*conventions_views(settings.detail, settings.dropped(), settings.conventions), *user_views],
        exemplar_filter=sdk_exemplar_filter(settings.exemplar_filter),  # the SDK path, as the fast path
        shutdown_on_exit=False,  # the handle registers its own, time-bounded
    )
    native = settings.prometheus_native_histograms and endpoint_reader is not None
    kinds: dict[MetricReader, HistogramKind] | None = (
        {endpoint_reader: "both"} if native and endpoint_reader is not None else None
    )
    runtime = _runtime.runtime_for(provider, settings, readers, user_views, kinds)
    publisher = None
    if publishing is not None and settings.multiprocess_dir:
        publisher = _workers.Publisher(
            Path(settings.multiprocess_dir),
            publishing,
            rules=runtime.merge_rules,
            resource=resource,
            removals=runtime.removals,
            interval_s=settings.multiprocess_interval_s,
            series_ttl_s=settings.series_ttl_s,
            on_skipped=runtime.count_unreadable_file,
        )
        if registry is not None:
            registry.register(TranslatingCollector(publisher.merged))
        if isinstance(push_reader, _workers.MergedPushReader):
            push_reader.publisher = publisher
    endpoint = None
    if registry is not None and settings.prometheus_server:
        try:
            endpoint = _serve_endpoint(
                settings,
                registry,
                ports or (settings.prometheus_port,),
                events,
                may_raise=not in_child,
                shared=publisher is not None,
            )
        except ValueError:
            _run_bounded(lambda: provider.shutdown(timeout_millis=1000), 1.0)
            raise
    events.info(
        "meshmetrics_configured",
        prometheus_url=endpoint.url if endpoint else None,
        otlp_endpoint=settings.otlp_endpoint_redacted,
        otlp_protocol=settings.otlp_protocol if settings.otlp_endpoint else None,
        prometheus_auth="bearer"
        if settings.prometheus_bearer_token
        else "basic"
        if settings.prometheus_basic_auth
        else None,
        prometheus_tls=settings.prometheus_certfile is not None,
        detail=settings.detail,
        strict=settings.strict,
    )
    handle = MetricsHandle(
        settings,
        provider,
        registry=registry,
        server=endpoint,
        push_reader=push_reader,
        tracker=tracker,
        views=user_views,
        publisher=publisher,
    )
    handle.runtime = runtime
    if publisher is not None:
        publisher.on_tick = handle._take_over_endpoint  # noqa: SLF001 - the handle's own module
        publisher.start_thread()
    return handle


def _set_global(provider: ApiMeterProvider) -> None:
    # The OpenTelemetry API lets the global provider be set once per process; a
    # later configure() re-points meshmetrics' facades but not that global.
    current = otel_metrics.get_meter_provider()
    if isinstance(current, MeterProvider):
        _logger.info("meshmetrics_global_provider_kept", reason="already set once in this process")
        return
    otel_metrics.set_meter_provider(provider)


# --- fork ----------------------------------------------------------------------------------------
#
# Inside os.fork() the child has only the forking thread; every lock another
# parent thread held at that moment (structlog's and stdout's write locks, the
# SDK's, ours) stays locked forever. So the at-fork handler takes no lock and
# logs nothing: it detaches the parent's handle and marks a rebuild as pending.
# The rebuild runs on the child's first use (ensure_child_runtime(), called by
# current_handle() and the facades), or on a thread the handler starts,
# whichever comes first; its log lines go out from a thread of their own, so
# an inherited logging lock can stall only that thread.


class _ForkState:
    """A rebuild pending in this forked child: the parent's handle to rebuild from."""

    def __init__(self) -> None:
        self.pending: MetricsHandle | None = None
        self.stalled = False  # a rebuild took longer than CHILD_BUILD_WAIT_S: stop waiting for it


_fork = _ForkState()
CHILD_BUILD_WAIT_S = 2.0


def _child_ports(settings: _config.Settings) -> list[int]:
    """The ports a forked child tries, in order (several for the offset strategy; any with 0)."""
    port = settings.prometheus_port
    if port == 0:
        return [0]
    last = min(port + settings.prometheus_fork_port_range, 65_535)
    return list(range(port + 1, last + 1)) or [0]


def _child_settings(settings: _config.Settings, events: _Events) -> tuple[_config.Settings, list[int]]:
    """The settings and ports of a forked child's own provider."""
    if not (settings.prometheus_enabled and settings.prometheus_server) or settings.multiprocess_dir:
        return settings, [settings.prometheus_port]  # multiprocess: the same port, taken over if freed
    if settings.prometheus_on_fork == "offset":
        return settings, _child_ports(settings)
    events.warning(
        "meshmetrics_prometheus_endpoint_off_in_child",
        pid=os.getpid(),
        reason="a forked child cannot share its parent's port",
        fix="push with OTLP, or configure(prometheus_on_fork='offset') for one port per worker",
    )
    return dataclasses.replace(settings, prometheus_server=False), []


def _build_in_child(parent: MetricsHandle, events: _Events) -> MetricsHandle:
    # The parent's resource with a new instance id (no resource detectors: they use a thread pool).
    sdk_config = getattr(parent.meter_provider, "_sdk_config", None)
    resource = (sdk_config.resource if sdk_config else Resource({})).merge(
        Resource({"service.instance.id": str(uuid.uuid4())})
    )
    settings, ports = _child_settings(parent.settings, events)
    return _build(settings, (), parent._views, resource, events=events, ports=ports, in_child=True)  # noqa: SLF001


def _in_background(name: str, action: Callable[[], object]) -> None:
    threading.Thread(target=action, name=name, daemon=True).start()


def ensure_child_runtime() -> _runtime.Runtime | None:
    """In a forked child, build its own provider now if that is still pending; return the runtime.

    Cheap when nothing is pending (one attribute read). Facades call it when
    ``_runtime.state.current`` is None, so a child's first measurement is
    recorded on the child's own provider. Waits at most ``CHILD_BUILD_WAIT_S``
    for a rebuild another thread is running, never raises, logs nothing
    on the calling thread.
    """
    if _fork.pending is None:
        return _runtime.state.current
    global _current  # noqa: PLW0603 - the one active handle of the process
    if not _configure_lock.acquire(timeout=0 if _fork.stalled else CHILD_BUILD_WAIT_S):
        _fork.stalled = True
        return None
    events = _Events()
    parent = _fork.pending  # still pending until built: concurrent callers wait on the lock
    try:
        if parent is not None:
            try:
                new = _build_in_child(parent, events)
            except Exception as error:
                events.warning(
                    "meshmetrics_fork_reconfigure_failed", pid=os.getpid(), error=type(error).__name__
                )
            else:
                _runtime.state.current = new.runtime
                atexit.register(new.shutdown)
                _current = new
                events.info(
                    "meshmetrics_reconfigured_after_fork", pid=os.getpid(), prometheus_url=new.prometheus_url
                )
    finally:
        _fork.pending = None
        _configure_lock.release()
    if parent is not None:
        _in_background("meshmetrics-after-fork-log", events.emit)
        _in_background("meshmetrics-after-fork-cleanup", lambda: _release_inherited(parent))
    return _runtime.state.current


def _release_inherited(parent: MetricsHandle) -> None:
    """Stop the parent's provider in the child (its exporter thread restarted at fork) without exporting."""
    if isinstance(parent.meter_provider, MeterProvider):
        with contextlib.suppress(Exception):
            parent.meter_provider.shutdown(timeout_millis=1000)


def _after_fork_in_child() -> None:
    """At-fork handler: detach the parent's handle and mark a rebuild; no lock, no logging."""
    global _current, _configure_lock  # noqa: PLW0603 - process-wide state, reset in the child
    _configure_lock = threading.Lock()  # another parent thread may have held it at fork time
    _fork.stalled = False
    _runtime.reset_after_fork()
    _otlp.reset_after_fork()
    _runtime.state.current = None
    parent = _current or _fork.pending  # a child forked before its own rebuild passes it on
    _current = None
    _fork.pending = None
    if parent is None or not parent.enabled:
        return
    parent._lock = threading.Lock()  # noqa: SLF001 - its atexit shutdown must not wait on the parent
    parent._shutdown_result = True  # noqa: SLF001 - nothing of the parent's to flush from here
    if parent._tracker is not None:  # noqa: SLF001
        parent._tracker.disabled = True  # noqa: SLF001 - never export the parent's counts again
    if parent._prometheus is not None:  # noqa: SLF001
        parent._prometheus.close_inherited()  # noqa: SLF001 - free the parent's port in this process
        parent._prometheus = None  # noqa: SLF001
    if parent._publisher is not None:  # noqa: SLF001
        parent._publisher.forget_inherited()  # noqa: SLF001 - the parent's file and lead stay the parent's
    parent._publisher = None  # noqa: SLF001
    _fork.pending = parent
    with contextlib.suppress(RuntimeError):  # no thread (interpreter exiting): first use rebuilds
        _in_background("meshmetrics-after-fork", ensure_child_runtime)


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_handle() -> MetricsHandle | None:
    """The handle of the active ``configure()``, if any (in a forked child: the child's own)."""
    ensure_child_runtime()
    return _current


def shutdown(timeout: float | None = None) -> bool:
    """Shut down the active configuration (see :meth:`MetricsHandle.shutdown`)."""
    ensure_child_runtime()  # in a forked child: the rebuild (perhaps under way) is what to shut down
    handle = _current
    return True if handle is None else handle.shutdown(timeout)


class _FollowingRegistry:
    """What a mounted app collects from: the handle's registry, or its forked successor's."""

    def __init__(self, handle: MetricsHandle) -> None:
        self._handle = handle

    def collect(self) -> Iterator[Any]:
        """The families of the registry that serves this process now."""
        registry = self._handle._current_registry()  # noqa: SLF001 - this module's own class
        if registry is not None:
            yield from registry.collect()
