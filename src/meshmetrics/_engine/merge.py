"""Merging meshmetrics' own cells into each reader's export.

The SDK calls ``reader._collect(reader, timeout_millis=...)`` to gather a
collection; meshmetrics wraps that callback on the readers of providers it
builds, appends its cells as SDK ``Metric`` objects under the ``meshmetrics``
scope, and lets the reader export as usual. ``tests/unit/test_fast_path.py``
pins this SDK behaviour, so an upgrade that changes it fails loudly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.sdk.metrics._internal.instrument import (
    _Counter,
    _Gauge,
    _Histogram,
    _UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from meshmetrics._engine.series import Cells, ReaderState

_TEMPORALITY_CLASS = {
    "counter": _Counter,
    "updowncounter": _UpDownCounter,
    "histogram": _Histogram,
    "gauge": _Gauge,
}


def reader_temporality(reader: MetricReader, kind: str) -> AggregationTemporality:
    """The temporality ``reader`` asks for the SDK instrument class of ``kind``."""
    table = reader._instrument_class_temporality  # noqa: SLF001 - read-only, pinned by a test
    return table.get(_TEMPORALITY_CLASS[kind], AggregationTemporality.CUMULATIVE)


def _merged(
    data: MetricsData | None, resource: Resource, scope: InstrumentationScope, metrics: list[Any]
) -> MetricsData | None:
    if not metrics:
        return data
    if data is None:
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])
    resource_metrics = list(data.resource_metrics)
    first = resource_metrics[0]
    scopes = list(first.scope_metrics)
    for index, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == scope.name:
            scopes[index] = ScopeMetrics(
                scope_metrics.scope, [*scope_metrics.metrics, *metrics], scope_metrics.schema_url
            )
            break
    else:
        scopes.append(ScopeMetrics(scope, metrics, ""))
    resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData(resource_metrics)


def attach(
    reader: MetricReader,
    cells: Callable[[], Iterable[Cells]],
    resource: Resource,
    scope: InstrumentationScope,
) -> None:
    """Make ``reader`` export the cells alongside what the SDK collected."""
    # The SDK annotates _collect loosely (and wrongly); it is called as
    # _collect(reader, timeout_millis=...) and returns MetricsData or None.
    original: Any = reader._collect  # noqa: SLF001 - set by MeterProvider; pinned by a test
    if original is None:
        raise RuntimeError("the reader is not registered with a MeterProvider")
    state = ReaderState()

    def collect(target: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
        data = original(target, timeout_millis=timeout_millis)
        now_ns = time.time_ns()
        metrics = []
        for store in cells():
            metric = store.export(state, reader_temporality(target, store.kind), now_ns)
            if metric is not None:
                metrics.append(metric)
        state.last_collect_ns = now_ns
        return _merged(data, resource, scope, metrics)

    reader._collect = collect  # type: ignore[assignment]  # noqa: SLF001
