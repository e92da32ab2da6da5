"""``configure()``: one MeterProvider, Views from the conventions, Prometheus and OTLP readers."""

from __future__ import annotations

import atexit
import dataclasses
import errno
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import structlog
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
from meshmetrics._engine import runtime as _runtime
from meshmetrics._policy.core import AttributePolicy
from meshmetrics._policy.profiles import kept_keys
from meshmetrics._serve import apps as _apps
from meshmetrics._serve import http as _http
from meshmetrics._serve import reader as _prometheus
from meshmetrics._serve.exposition import EndpointAuth
from meshmetrics._setup import otlp as _otlp
from meshmetrics._setup import settings as _config

_logger = structlog.get_logger("meshmetrics")
_configure_lock = threading.Lock()
_current: MetricsHandle | None = None


def conventions_views(detail: str, dropped: frozenset[str] = frozenset()) -> list[View]:
    """Views for every registry metric: attribute allow-list (per profile) and cardinality limit."""
    return [
        View(
            instrument_name=definition.name,
            meter_name=_runtime.METER_NAME,
            attribute_keys=set(
                kept_keys(definition.instrument, (u.key for u in definition.attributes), detail)
            )
            - dropped,
            aggregation_cardinality_limit=definition.cardinality_limit,
        )
        for definition in semconv.METRICS.values()
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
        self._lock = threading.Lock()
        self._shutdown_result: bool | None = None

    @property
    def enabled(self) -> bool:
        """False when ``OTEL_SDK_DISABLED=true`` made everything a no-op."""
        return not self.settings.disabled

    @property
    def prometheus_url(self) -> str | None:
        """The ``/metrics`` URL being served, or None when the pull endpoint is off."""
        return self._prometheus.url if self._prometheus else None

    @property
    def prometheus_port(self) -> int | None:
        """The bound port of the pull endpoint (resolved when 0 was asked)."""
        return self._prometheus.port if self._prometheus else None

    def wsgi_app(self) -> _apps.WSGIApp:
        """``/metrics`` as a WSGI app with this configuration's authentication."""
        return _apps.make_wsgi_app(self._require_registry(), endpoint_auth(self.settings))

    def asgi_app(self) -> _apps.ASGIApp:
        """``/metrics`` as an ASGI app with this configuration's authentication."""
        return _apps.make_asgi_app(self._require_registry(), endpoint_auth(self.settings))

    def _require_registry(self) -> CollectorRegistry:
        if self._registry is None:
            raise ValueError("the Prometheus reader is off: configure(prometheus=True)")
        return self._registry

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
        if self._push_reader is None or self._tracker is None:
            return True
        timeout_s = timeout if timeout is not None else self.settings.export_timeout_s
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
        with self._lock:
            if self._shutdown_result is not None:
                return self._shutdown_result
            timeout_s = timeout if timeout is not None else self.settings.shutdown_timeout_s
            deadline = time.monotonic() + timeout_s
            exports_before = self._tracker.exports if self._tracker else 0
            ok = True
            if isinstance(self.meter_provider, MeterProvider):
                provider = self.meter_provider
                ok = _run_bounded(lambda: provider.shutdown(timeout_millis=timeout_s * 1000), timeout_s)
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


def _check_views(views: Sequence[View], prometheus: bool) -> None:
    for view in views:
        if prometheus and isinstance(view._aggregation, ExponentialBucketHistogramAggregation):  # noqa: SLF001
            raise ValueError(
                "a View forcing exponential histograms would break the Prometheus endpoint "
                "(every scrape fails); ask for them on OTLP only with "
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
    attribute_policies: Mapping[str, AttributePolicy] | None = None,
    normalizers: Mapping[str, Callable[[str], str]] | None = None,
    readers: Sequence[MetricReader] = (),
    views: Sequence[View] = (),
    set_global: bool = True,
    shutdown_on_exit: bool = True,
    environ: Mapping[str, str] | None = None,
) -> MetricsHandle:
    """Build the process's MeterProvider and make the facades record to it.

    Arguments override the standard ``OTEL_*`` environment variables (see the
    README's configuration table); durations are in seconds. Configuration
    mistakes raise ``ValueError``; nothing else does. Calling it again shuts
    the previous provider down first (its HTTP server and exporter thread).
    """
    global _current  # noqa: PLW0603 - the one active handle of the process
    settings = _config.resolve(
        environ=environ,
        service_name=service_name,
        resource_attributes=resource_attributes,
        prometheus=prometheus,
        prometheus_host=prometheus_host,
        prometheus_port=prometheus_port,
        prometheus_server=prometheus_server,
        prometheus_bearer_token=prometheus_bearer_token,
        prometheus_bearer_token_file=prometheus_bearer_token_file,
        prometheus_basic_auth=prometheus_basic_auth,
        prometheus_certfile=prometheus_certfile,
        prometheus_keyfile=prometheus_keyfile,
        prometheus_client_cafile=prometheus_client_cafile,
        prometheus_on_fork=prometheus_on_fork,
        otlp_endpoint=otlp_endpoint,
        otlp_protocol=otlp_protocol,
        otlp_headers=otlp_headers,
        otlp_insecure=otlp_insecure,
        otlp_temporality=otlp_temporality,
        otlp_histogram_aggregation=otlp_histogram_aggregation,
        export_interval=export_interval,
        export_timeout=export_timeout,
        shutdown_timeout=shutdown_timeout,
        strict=strict,
        detail=detail,
        max_label_length=max_label_length,
        fast_path=fast_path,
        series_ttl=series_ttl,
        attribute_policies=attribute_policies,
        normalizers=normalizers,
    )
    with _configure_lock:
        if _current is not None:
            _logger.info("meshmetrics_reconfigure", previous=_current.prometheus_url)
            _current.shutdown()
        if settings.disabled:
            _runtime.state.current = None
            handle = MetricsHandle(settings, NoOpMeterProvider())
            _logger.info("meshmetrics_disabled", reason="OTEL_SDK_DISABLED")
            _current = handle
            return handle
        handle = _build(settings, readers, views)
        _runtime.state.current = handle.runtime
        if set_global:
            _set_global(handle.meter_provider)
        if shutdown_on_exit:
            atexit.register(handle.shutdown)
        _current = handle
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


def _build(
    settings: _config.Settings,
    extra_readers: Sequence[MetricReader],
    user_views: Sequence[View],
    resource: Resource | None = None,
) -> MetricsHandle:
    _check_views(user_views, settings.prometheus_enabled)
    resource = resource or _resource(settings)

    readers: list[MetricReader] = list(extra_readers)
    endpoint_reader = registry = None
    if settings.prometheus_enabled:
        endpoint_reader, registry = _prometheus.make_reader()
        readers.append(endpoint_reader)
    push_reader = tracker = None
    if settings.otlp_endpoint:
        _otlp.quiet_exporter_logs()
        tracker = _otlp.TrackingExporter(_otlp.build_exporter(settings))
        push_reader = PeriodicExportingMetricReader(
            tracker,
            export_interval_millis=settings.export_interval_s * 1000,
            export_timeout_millis=settings.export_timeout_s * 1000,
        )
        readers.append(push_reader)

    provider = MeterProvider(
        metric_readers=readers,
        resource=resource,
        views=[*conventions_views(settings.detail, settings.dropped()), *user_views],
        shutdown_on_exit=False,  # the handle registers its own, time-bounded
    )
    endpoint = None
    if registry is not None and settings.prometheus_server:
        try:
            endpoint = _http.serve(
                registry,
                settings.prometheus_host,
                settings.prometheus_port,
                endpoint_auth(settings),
                _tls(settings),
            )
        except OSError:
            provider.shutdown(timeout_millis=1000)
            raise
    _logger.info(
        "meshmetrics_configured",
        prometheus_url=endpoint.url if endpoint else None,
        otlp_endpoint=settings.otlp_endpoint,
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
    )
    handle.runtime = _runtime.runtime_for(provider, settings, readers, user_views)
    return handle


def _set_global(provider: ApiMeterProvider) -> None:
    # The OpenTelemetry API lets the global provider be set once per process; a
    # later configure() re-points meshmetrics' facades but not that global.
    current = otel_metrics.get_meter_provider()
    if isinstance(current, MeterProvider):
        _logger.info("meshmetrics_global_provider_kept", reason="already set once in this process")
        return
    otel_metrics.set_meter_provider(provider)


def _abandon_in_child(handle: MetricsHandle) -> None:
    """In a forked child: drop the parent's provider without exporting its counts again."""
    if handle._tracker is not None:  # noqa: SLF001 - the handle's own module
        handle._tracker.disabled = True  # noqa: SLF001
    if handle._prometheus is not None:  # noqa: SLF001
        handle._prometheus.close_inherited()  # noqa: SLF001
        handle._prometheus = None  # noqa: SLF001
    handle._shutdown_result = True  # noqa: SLF001
    if isinstance(handle.meter_provider, MeterProvider):
        provider = handle.meter_provider
        _run_bounded(lambda: provider.shutdown(timeout_millis=1000), 1.0)


def _child_settings(settings: _config.Settings, port: int) -> list[_config.Settings]:
    """The settings a forked child tries, in order (several ports for the offset strategy)."""
    if not (settings.prometheus_enabled and settings.prometheus_server):
        return [settings]
    if settings.prometheus_on_fork == "offset":
        return [
            dataclasses.replace(settings, prometheus_port=port + offset)
            for offset in range(1, settings.prometheus_fork_port_range + 1)
        ]
    _logger.warning(
        "meshmetrics_prometheus_endpoint_off_in_child",
        pid=os.getpid(),
        reason="a forked child cannot share its parent's port",
        fix="push with OTLP, or configure(prometheus_on_fork='offset') for one port per worker",
    )
    return [dataclasses.replace(settings, prometheus_server=False)]


def _build_in_child(handle: MetricsHandle) -> MetricsHandle:
    # The parent's resource with a new instance id: Resource.create() would run
    # detectors on a thread pool, which is not safe inside an at-fork handler.
    parent = getattr(handle.meter_provider, "_sdk_config", None)
    resource = (parent.resource if parent else Resource({})).merge(
        Resource({"service.instance.id": str(uuid.uuid4())})
    )
    port = handle.settings.prometheus_port
    for candidate in _child_settings(handle.settings, port):
        try:
            return _build(candidate, (), handle._views, resource)  # noqa: SLF001
        except OSError as error:  # noqa: PERF203 - one try per port, rarely more than one
            if error.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free port after {port}")


def _after_fork_in_child() -> None:
    """Give a forked child its own provider: zero counts, its own service.instance.id."""
    global _current, _configure_lock  # noqa: PLW0603 - process-wide state, reset in the child
    _configure_lock = threading.Lock()  # another parent thread may have held it at fork time
    _runtime.reset_after_fork()
    handle = _current
    if handle is None or not handle.enabled:
        return
    _current = None
    _runtime.state.current = None
    try:
        _abandon_in_child(handle)
        new = _build_in_child(handle)
    except Exception as error:
        _logger.warning("meshmetrics_fork_reconfigure_failed", pid=os.getpid(), error=repr(error))
        return
    _runtime.state.current = new.runtime
    atexit.register(new.shutdown)
    _current = new
    _logger.info("meshmetrics_reconfigured_after_fork", pid=os.getpid(), prometheus_url=new.prometheus_url)


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_handle() -> MetricsHandle | None:
    """The handle of the active ``configure()``, if any."""
    return _current


def shutdown(timeout: float | None = None) -> bool:
    """Shut down the active configuration (see :meth:`MetricsHandle.shutdown`)."""
    handle = _current
    return True if handle is None else handle.shutdown(timeout)
