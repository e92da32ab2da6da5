"""Merging meshmetrics' own series into each reader's export.

The SDK calls ``reader._collect(reader, timeout_millis=...)`` to gather a
collection; meshmetrics wraps that callback on the readers of providers it
builds, appends its tables as SDK ``Metric`` objects under the ``meshmetrics``
scope (each reader with its own temporality, its delta state kept on each
series), and lets the reader export as usual. ``tests/unit/test_fast_path.py``
pins this SDK behaviour, so an upgrade that changes it fails loudly.

Histograms reach each reader as the kind it asks for (``histogram_kind`` of
:func:`attach`; by default what the reader's own preferred aggregation for
histograms says): explicit buckets, or base-2 exponential buckets from a table
created with ``exponential=True``. Each point carries the exemplars its series
kept since that reader's previous collection.

A point an exporter cannot carry (a value that is not finite, an integer
beyond an int64) is dropped and counted, so one bad series never stops the
export of the others.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.sdk.metrics._internal.instrument import (
    _Counter,
    _Gauge,
    _Histogram,
    _UpDownCounter,
)
from opentelemetry.sdk.metrics._internal.point import Buckets
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from meshmetrics._engine import exemplars as _exemplars
from meshmetrics._engine import series as _series
from meshmetrics._engine.series import BUCKETS, IMAX, IMIN, MAX, MIN, SUM, HistogramTotal, Series, Table

HistogramKind = Literal["explicit", "exponential", "both"]
"""How a reader gets histograms: explicit buckets, base-2 exponential buckets, or both.

``both`` (for a Prometheus reader serving native histograms beside the classic
ones) sends each histogram twice under its name, as a ``Histogram`` and as an
``ExponentialHistogram``, each with its own delta and exemplar state; it is
meant for cumulative readers.
"""

_TEMPORALITY_CLASS = {
    "counter": _Counter,
    "updowncounter": _UpDownCounter,
    "histogram": _Histogram,
    "gauge": _Gauge,
}
_DELTA = AggregationTemporality.DELTA
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_INT64 = 2**63 - 1
_reader_ids = itertools.count(1)


@dataclass
class ReaderState:
    """One reader's identity (the key of its delta state on each series) and last collection."""

    id: int = field(default_factory=lambda: next(_reader_ids))
    last_collect_ns: int = field(default_factory=time.time_ns)


def reader_temporality(reader: MetricReader, kind: str) -> AggregationTemporality:
    """The temporality ``reader`` asks for the SDK instrument class of ``kind``."""
    table = reader._instrument_class_temporality  # noqa: SLF001 - read-only, pinned by a test
    return table.get(_TEMPORALITY_CLASS[kind], AggregationTemporality.CUMULATIVE)


def reader_histogram_kind(reader: MetricReader) -> HistogramKind:
    """``exponential`` when ``reader`` prefers the SDK's exponential aggregation for histograms."""
    preferred = reader._instrument_class_aggregation.get(_Histogram)  # noqa: SLF001 - read-only, pinned by a test
    return "exponential" if isinstance(preferred, ExponentialBucketHistogramAggregation) else "explicit"


def _exportable(value: Any) -> bool:
    if type(value) is int:
        return -_INT64 <= value <= _INT64
    return math.isfinite(value)


def export(
    table: Table,
    items: list[tuple[Series, Any]],
    reader: ReaderState,
    temporality: AggregationTemporality,
    now_ns: int,
    *,
    on_unexportable: Callable[[str], None],
    histogram_kind: Literal["explicit", "exponential"] = "explicit",
) -> Metric | None:
    """``table``'s metric as the reader should see it now, or None if it has no points.

    A histogram goes out with exponential buckets when ``histogram_kind`` asks
    for them and the table keeps them; with explicit buckets otherwise.
    """
    kind = table.kind
    exponential = kind == "histogram" and histogram_kind == "exponential" and table.exponential
    points: list[Any]
    if kind == "gauge":
        points = [NumberDataPoint(s.attributes, s.start_ns, now_ns, v) for s, v in items if v is not None]
    elif exponential:
        points = list(_exponential_points(items, reader, temporality, now_ns))
    elif kind == "histogram":
        points = list(_histogram_points(table, items, reader, temporality, now_ns))
    else:
        points = list(_sum_points(items, reader, temporality, now_ns))
    good = [p for p in points if _exportable(p.sum if kind == "histogram" else p.value)]
    for _ in range(len(points) - len(good)):
        on_unexportable(table.name)
    if not good:
        return None
    data: Any
    if kind == "gauge":
        data = Gauge(good)
    elif kind == "histogram":
        data = (ExponentialHistogram if exponential else Histogram)(good, temporality)
    else:
        data = Sum(good, temporality, is_monotonic=kind == "counter")
    return Metric(table.name, table.definition.brief, table.definition.unit, data)


def _sum_points(
    items: Iterable[tuple[Series, Any]],
    reader: ReaderState,
    temporality: AggregationTemporality,
    now_ns: int,
) -> Iterable[NumberDataPoint]:
    for series, value in items:
        if temporality is _CUMULATIVE:
            yield NumberDataPoint(
                series.attributes, series.start_ns, now_ns, value, _exemplars_for(series, reader)
            )
            continue
        previous = series.sent.get(reader.id)  # None: this reader's first look at this series
        series.sent[reader.id] = value
        if value != (previous or 0):  # idle series send nothing under delta, as on the SDK path
            start = max(reader.last_collect_ns, series.start_ns)
            yield NumberDataPoint(
                series.attributes, start, now_ns, value - (previous or 0), _exemplars_for(series, reader)
            )


def _histogram_points(
    table: Table,
    items: Iterable[tuple[Series, Any]],
    reader: ReaderState,
    temporality: AggregationTemporality,
    now_ns: int,
) -> Iterable[HistogramDataPoint]:
    bounds = table.bounds
    for series, value in items:
        cell = value.explicit if isinstance(value, HistogramTotal) else value
        buckets = cell[BUCKETS:]
        count, total, low, high = sum(buckets), cell[SUM], cell[MIN], cell[MAX]
        start = series.start_ns
        if temporality is _DELTA:
            previous = series.sent.get(reader.id)
            series.sent[reader.id] = cell
            series.reset_interval_extremes()  # extremes since the previous delta export
            if previous is not None:
                before = previous[BUCKETS:]
                if before == buckets:
                    continue
                buckets = [now - then for now, then in zip(buckets, before, strict=True)]
                count, total = sum(buckets), total - previous[SUM]
            if cell[IMIN] <= cell[IMAX]:  # else a record raced the reset: keep the lifetime extremes
                low, high = cell[IMIN], cell[IMAX]
            start = max(reader.last_collect_ns, series.start_ns)
        if count == 0:
            continue
        yield HistogramDataPoint(
            attributes=series.attributes,
            start_time_unix_nano=start,
            time_unix_nano=now_ns,
            count=count,
            sum=total,
            bucket_counts=buckets,
            explicit_bounds=bounds,
            min=low,
            max=high,
            exemplars=_exemplars_for(series, reader, histogram=True),
        )


def _exponential_points(
    items: Iterable[tuple[Series, Any]],
    reader: ReaderState,
    temporality: AggregationTemporality,
    now_ns: int,
) -> Iterable[ExponentialHistogramDataPoint]:
    for series, value in items:
        cell, snapshot = value.explicit, value.exponential
        total, low, high = cell[SUM], cell[MIN], cell[MAX]
        start = series.start_ns
        if temporality is _DELTA:
            previous = series.sent.get(reader.id)
            series.sent[reader.id] = value
            series.reset_interval_extremes()
            if previous is not None:
                if previous.exponential == snapshot:
                    continue
                snapshot = snapshot.minus(previous.exponential)
                total -= previous.explicit[SUM]
            if cell[IMIN] <= cell[IMAX]:  # else a record raced the reset: keep the lifetime extremes
                low, high = cell[IMIN], cell[IMAX]
            start = max(reader.last_collect_ns, series.start_ns)
        count = snapshot.count
        if count == 0:
            continue
        offset, counts = snapshot.buckets()
        yield ExponentialHistogramDataPoint(
            attributes=series.attributes,
            start_time_unix_nano=start,
            time_unix_nano=now_ns,
            count=count,
            sum=total,
            scale=snapshot.scale,
            zero_count=snapshot.zero_count,
            positive=Buckets(offset, counts),
            negative=Buckets(0, []),
            flags=0,
            min=low,
            max=high,
            exemplars=_exemplars_for(series, reader, histogram=True),
        )


def _exemplars_for(series: Series, reader: ReaderState, *, histogram: bool = False) -> list[Any]:
    """The exemplars ``series`` kept since ``reader``'s previous collection (remembering what it saw)."""
    if not series.exemplars:
        return []
    kept = list(series.exemplars.values())  # one atomic copy; each thread replaces only its own
    if histogram:
        kept = [list(samples) for samples in kept]
        current = frozenset(s for samples in kept for s in samples if s is not None)
    else:
        current = frozenset(kept)
    seen = series.seen.get(reader.id, frozenset())
    series.seen[reader.id] = current
    if histogram:
        return _exemplars.collect_histogram(kept, seen)
    return _exemplars.collect_counter(kept, seen)


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
    tables: Callable[[], Iterable[Table]],
    resource: Resource,
    scope: InstrumentationScope,
    on_unexportable: Callable[[str], None],
    *,
    histogram_kind: HistogramKind | None = None,
) -> None:
    """Make ``reader`` export the tables alongside what the SDK collected.

    ``histogram_kind`` chooses explicit, exponential or both kinds of
    histograms for this reader (exponential needs tables created with
    ``exponential=True``; other tables stay explicit); None follows the
    reader's own preferred aggregation for histograms, so an OTLP exporter
    built with ``ExponentialBucketHistogramAggregation`` gets exponential ones.
    """
    # The SDK annotates _collect loosely (and wrongly); it is called as
    # _collect(reader, timeout_millis=...) and returns MetricsData or None.
    original: Any = reader._collect  # noqa: SLF001 - set by MeterProvider; pinned by a test
    if original is None:
        raise RuntimeError("the reader is not registered with a MeterProvider")
    state = ReaderState()
    kind = histogram_kind or reader_histogram_kind(reader)
    # (state, kind) per export of a histogram table; "both" keeps a second state for the exponential one
    exports: list[tuple[ReaderState, Literal["explicit", "exponential"]]] = (
        [(state, "explicit"), (ReaderState(), "exponential")] if kind == "both" else [(state, kind)]
    )

    def collect(target: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
        data = original(target, timeout_millis=timeout_millis)
        now_ns, now_s, live = time.time_ns(), _series.monotonic(), _series.live_slots()
        metrics = []
        for table in tables():
            temporality = reader_temporality(target, table.kind)
            items = table.collect(now_s, live)  # one snapshot, whatever kinds of histogram go out
            for reader_state, table_kind in exports if table.exponential else exports[:1]:
                metric = export(
                    table,
                    items,
                    reader_state,
                    temporality,
                    now_ns,
                    on_unexportable=on_unexportable,
                    histogram_kind=table_kind,
                )
                if metric is not None:
                    metrics.append(metric)
        for reader_state, _ in exports:
            reader_state.last_collect_ns = now_ns
        return _merged(data, resource, scope, metrics)

    reader._collect = collect  # type: ignore[assignment]  # noqa: SLF001
