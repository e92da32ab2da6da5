"""Capture what meshmetrics records, for your own tests.

Example::

    from meshmetrics.testing import capture

    def test_routes_to_api():
        with capture() as captured:
            route_request()  # your code, using LoadBalancerMetrics
        assert captured.value("mesh.lb.requests", service="api") == 1

With the pytest plugin (installed with meshmetrics) the same is a fixture::

    def test_routes_to_api(meshmetrics_capture):
        route_request()
        assert meshmetrics_capture.value("mesh.lb.requests", service="api") == 1
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from meshmetrics import semconv
from meshmetrics._definitions import MetricDefinition
from meshmetrics._engine import runtime as _runtime
from meshmetrics._setup import settings as _config
from meshmetrics._setup.provider import conventions_views

__all__ = ["CapturedExemplar", "CapturedMetrics", "HistogramValue", "capture"]


@dataclass(frozen=True)
class HistogramValue:
    """A histogram read back: count, sum and cumulative-free bucket counts."""

    count: int
    sum: float
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]

    def buckets(self) -> dict[float, int]:
        """Count per bucket, keyed by upper bound (``inf`` for the last)."""
        bounds = (*self.explicit_bounds, float("inf"))
        return dict(zip(bounds, self.bucket_counts, strict=True))


@dataclass(frozen=True)
class CapturedExemplar:
    """An exemplar read back: the value, and the span it was measured in (hex ids; None outside spans)."""

    value: float
    trace_id: str | None
    span_id: str | None
    time_unix_nano: int


class CapturedMetrics:
    """Everything recorded inside a :func:`capture` block, read back by metric and attributes.

    Attribute filters are keyword arguments: the full key with dots as
    underscores (``mesh_service``) or its last part when that is unambiguous
    for the metric (``service``, ``strategy``, ``previous_state``, ``type``
    for ``error.type``; ``error_type`` works too).
    """

    def __init__(self, reader: InMemoryMetricReader, runtime: _runtime.Runtime | None = None) -> None:
        """Read from ``reader``; metrics are defined by ``runtime``'s registries (plugins' too)."""
        self._reader = reader
        self._runtime = runtime

    def _definition(self, metric: str) -> MetricDefinition:
        runtime = self._runtime or _runtime.state.current
        known = runtime.conventions.metrics if runtime is not None else semconv.METRICS
        try:
            return known[metric]
        except KeyError:
            raise LookupError(f"{metric!r} is not a metric of meshmetrics or of a plugin in use") from None

    def points(self, metric: str, /) -> list[tuple[dict[str, Any], Any]]:
        """Every data point of ``metric`` now: (attributes, point) pairs."""
        data = self._reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        found.extend((dict(p.attributes or {}), p) for p in item.data.data_points)
        return found

    def _matching(self, metric: str, filters: Mapping[str, object]) -> list[tuple[dict[str, Any], Any]]:
        keys = [use.key for use in self._definition(metric).attributes]
        wanted = {_resolve_key(metric, keys, key): str(value) for key, value in filters.items()}
        return [
            (attributes, point)
            for attributes, point in self.points(metric)
            if all(attributes.get(key) == value for key, value in wanted.items())
        ]

    def value(self, metric: str, /, **attributes: object) -> float:
        """Sum of a counter or up-down counter over matching series; a gauge's value.

        Returns 0 when nothing matches. A gauge filter must match one series.
        """
        points = self._matching(metric, attributes)
        numbers = [point for _, point in points if isinstance(point, NumberDataPoint)]
        if self._definition(metric).instrument == "gauge":
            if len(numbers) > 1:
                raise LookupError(f"{metric}: {len(numbers)} gauge series match {attributes}")
            return numbers[0].value if numbers else 0
        return sum(point.value for point in numbers)

    def histogram(self, metric: str, /, **attributes: object) -> HistogramValue:
        """Merged count, sum and buckets of a histogram over matching series."""
        points = [p for _, p in self._matching(metric, attributes) if isinstance(p, HistogramDataPoint)]
        bounds = tuple(points[0].explicit_bounds) if points else tuple(self._definition(metric).buckets)
        buckets = [0] * (len(bounds) + 1)
        for point in points:
            for index, bucket in enumerate(point.bucket_counts):
                buckets[index] += bucket
        return HistogramValue(
            count=sum(p.count for p in points),
            sum=sum(p.sum for p in points),
            bucket_counts=tuple(buckets),
            explicit_bounds=bounds,
        )

    def exemplars(self, metric: str, /, **attributes: object) -> list[CapturedExemplar]:
        """The exemplars of matching series recorded since the previous read (newest last).

        With the default ``trace_based`` filter only measurements made inside a
        sampled span have one.
        """
        found = [
            CapturedExemplar(
                value=exemplar.value,
                trace_id=f"{exemplar.trace_id:032x}" if exemplar.trace_id else None,
                span_id=f"{exemplar.span_id:016x}" if exemplar.span_id else None,
                time_unix_nano=exemplar.time_unix_nano,
            )
            for _, point in self._matching(metric, attributes)
            for exemplar in point.exemplars
        ]
        return sorted(found, key=lambda exemplar: exemplar.time_unix_nano)

    def series(self, metric: str, /, **attributes: object) -> list[dict[str, Any]]:
        """The attribute sets of every matching series of ``metric``."""
        return [attrs for attrs, _ in self._matching(metric, attributes)]


def _resolve_key(metric: str, keys: list[str], short: str) -> str:
    for key in keys:
        if short in (key, key.replace(".", "_")):
            return key
    if short == "error_type":
        short = "type"
    by_last_part = [key for key in keys if key.rsplit(".", 1)[-1] == short]  # "previous_state"
    by_tail = [key for key in keys if key.replace(".", "_").endswith("_" + short)]  # "registry_operation"
    for matches in (by_last_part, by_tail):
        if len(matches) == 1:
            return matches[0]
    raise LookupError(f"{metric} has no single attribute named {short!r}; it has {keys}")


@contextmanager
def capture(
    *, strict: bool = True, detail: str = "standard", fast_path: bool = True, series_ttl: float = 0.0
) -> Iterator[CapturedMetrics]:
    """Send every facade measurement inside the block to an in-memory reader.

    Facades created without an explicit ``meter_provider`` record here for the
    duration of the block, then go back to what ``configure()`` installed.
    Strict mode is on by default so that invalid measurements fail your test.
    """
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=conventions_views(detail), shutdown_on_exit=False)
    settings = _config.Settings(
        prometheus_enabled=False,
        strict=strict,
        detail=detail,  # type: ignore[arg-type]
        fast_path=fast_path,
        series_ttl_s=series_ttl,
    )
    previous = _runtime.state.current
    runtime = _runtime.Runtime(provider, settings, readers=[reader])
    _runtime.state.current = runtime
    try:
        yield CapturedMetrics(reader, runtime)
    finally:
        _runtime.state.current = previous
        provider.shutdown()
