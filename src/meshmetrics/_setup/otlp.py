"""The OTLP push side: exporter construction and an exporter wrapper that tells the truth.

The OpenTelemetry exporters report a flush as successful even when the export
failed (opentelemetry-python#5574), so :class:`TrackingExporter` remembers the
result of the last export and the handle reports that instead.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import Aggregation, ExponentialBucketHistogramAggregation

from meshmetrics._log import LOG_INTERVAL_S, RateLimitedLog
from meshmetrics._log import logger as _logger
from meshmetrics._setup.settings import Settings, redact_url

# The OpenTelemetry exporters and readers log every failed attempt through the
# standard library; during a collector outage that is a line per retry.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.sdk.metrics._internal.export",
)
_USER_INFO = re.compile(r"\S+@")  # "user:password@" in a message, with whatever precedes it
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_DELTA = AggregationTemporality.DELTA


def preferred_temporality(preference: str) -> dict[type, AggregationTemporality]:
    """Map ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` to per-instrument temporality."""
    delta_counters = _DELTA if preference in ("delta", "lowmemory") else _CUMULATIVE
    return {
        Counter: delta_counters,
        Histogram: delta_counters,
        ObservableCounter: _DELTA if preference == "delta" else _CUMULATIVE,
        UpDownCounter: _CUMULATIVE,
        ObservableUpDownCounter: _CUMULATIVE,
        ObservableGauge: _CUMULATIVE,
    }


def preferred_aggregation(histogram: str) -> dict[type, Aggregation]:
    """Map ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`` to an aggregation."""
    if histogram == "base2_exponential_bucket_histogram":
        return {Histogram: ExponentialBucketHistogramAggregation()}
    return {}  # the default aggregation honours each histogram's bucket advice


def build_exporter(settings: Settings) -> MetricExporter:
    """Create the OTLP metric exporter for ``settings`` (gRPC or HTTP/protobuf)."""
    options: dict[str, Any] = {
        "endpoint": settings.otlp_endpoint,
        "timeout": settings.otlp_timeout_s,  # seconds: the Python exporters' unit
        "preferred_temporality": preferred_temporality(settings.otlp_temporality),
        "preferred_aggregation": preferred_aggregation(settings.otlp_histogram_aggregation),
    }
    if settings.otlp_headers is not None:
        options["headers"] = dict(settings.otlp_headers)
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as HttpExporter,
        )

        return HttpExporter(**options)

    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
        OTLPMetricExporter as GrpcExporter,
    )

    endpoint = settings.otlp_endpoint or ""
    insecure = settings.otlp_insecure
    if insecure is None and endpoint.startswith("http://"):
        insecure = True
    if insecure is not None:
        options["insecure"] = insecure
    return GrpcExporter(**options)


class TrackingExporter(MetricExporter):
    """Delegates to an exporter and remembers whether the last export succeeded."""

    def __init__(self, inner: MetricExporter) -> None:
        """Wrap ``inner``, keeping its preferred temporality and aggregation."""
        super().__init__(
            preferred_temporality=inner._preferred_temporality,  # noqa: SLF001 - read by the SDK reader
            preferred_aggregation=inner._preferred_aggregation,  # noqa: SLF001
        )
        self.inner = inner
        self._lock = threading.Lock()
        self.exports = 0
        self.failures = 0
        self.last_result: MetricExportResult | None = None
        self.disabled = False
        self._failure_log = RateLimitedLog(LOG_INTERVAL_S)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export through the inner exporter and record the outcome."""
        if self.disabled:  # a forked child dropping what it inherited from its parent
            return MetricExportResult.SUCCESS
        error = ""
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exception:
            result, error = MetricExportResult.FAILURE, type(exception).__name__
        with self._lock:
            self.exports += 1
            self.last_result = result
            if result is MetricExportResult.SUCCESS:
                return result
            self.failures += 1
            total = self.failures
        suppressed = self._failure_log.allow("export_failed")
        if suppressed is not None:
            endpoint = getattr(self.inner, "_endpoint", None)
            _logger.warning(
                "meshmetrics_otlp_export_failed",
                endpoint=redact_url(endpoint) if isinstance(endpoint, str) else None,
                error=error or "export failed",
                failed_exports=suppressed + 1,
                total_failures=total,
            )
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the inner exporter."""
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down."""
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class RateLimitFilter(logging.Filter):
    """Let through at most one record per message template and logger per interval, user info redacted."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        """Allow one record per ``interval_s`` seconds per (logger, template)."""
        super().__init__("meshmetrics")
        self._interval = interval_s
        self._limit = RateLimitedLog(interval_s)

    def reset(self) -> None:
        """Forget what was let through (and the lock guarding it)."""
        self._limit = RateLimitedLog(self._interval)

    def filter(self, record: logging.LogRecord) -> bool:
        """True if this record may be emitted now; an endpoint's ``user:password@`` never is."""
        if self._limit.allow((record.name, str(record.msg))) is None:
            return False
        if "@" in str(record.msg):
            record.msg = _USER_INFO.sub("***@", str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(
                _USER_INFO.sub("***@", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


_filter = RateLimitFilter()


def reset_after_fork() -> None:
    """In a forked child: a fresh rate limit (its lock may have been held by a parent thread)."""
    _filter.reset()


def quiet_exporter_logs() -> None:
    """Rate-limit the OpenTelemetry exporters' per-attempt warnings (idempotent)."""
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
