"""Facade-owned aggregation: meshmetrics' own counters, gauges and histograms (the hot path).

The facades know their attribute sets are small closed tuples, so the work the
SDK does per measurement (copying, filtering and hashing an attribute dict, once
per reader) is done here once per distinct tuple (by the policy cache), and a
measurement is one locked dict update. At collection the cells become the SDK's
own public data types (``opentelemetry.sdk.metrics.export``) and are merged into
every reader's export (see ``_merge``), honouring each reader's temporality.

Series can end: :meth:`Cells.remove` drops series at once (a deregistered
instance), and series idle longer than ``series_ttl`` stop being exported and
resume at their cumulative value if used again (bounded by ``DORMANT_LIMIT``).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
)

from meshmetrics._definitions import MetricDefinition

Key = tuple[Any, ...]
OVERFLOW_KEY: Key = ("otel.metric.overflow",)
OVERFLOW_ATTRIBUTES: Mapping[str, Any] = {"otel.metric.overflow": True}
DORMANT_LIMIT = 10_000
_DELTA = AggregationTemporality.DELTA
_BUCKETS = 6  # index of the first bucket count in a histogram cell
_CUMULATIVE = AggregationTemporality.CUMULATIVE


@dataclass
class _Meta:
    attributes: Mapping[str, Any]
    start_ns: int
    last_change_s: float
    last_seen: Any = None  # the value at the last idleness check


@dataclass
class ReaderState:
    """What one reader was sent last, for delta temporality."""

    last_collect_ns: int = field(default_factory=time.time_ns)
    sent: dict[tuple[str, Key], Any] = field(default_factory=dict)


class Cells:
    """The series of one metric: value per attribute tuple, behind one lock."""

    def __init__(
        self,
        definition: MetricDefinition,
        *,
        on_series_removed: Callable[[str, Mapping[str, Any]], None] = lambda _m, _a: None,
    ) -> None:
        """Hold the series of ``definition`` (its kind decides add/set/record)."""
        self.definition = definition
        self.name = definition.name
        self.kind = definition.instrument
        self.limit = definition.cardinality_limit
        self.bounds = tuple(definition.buckets)
        self.lock = threading.Lock()
        self.values: dict[Key, Any] = {}
        self.meta: dict[Key, _Meta] = {}
        self.dormant: OrderedDict[Key, tuple[Any, _Meta]] = OrderedDict()
        self._on_series_removed = on_series_removed

    def _create(self, key: Key, attributes: Mapping[str, Any], initial: Any) -> Key:
        """Must hold the lock. Returns the key used (the overflow key past the limit)."""
        if key in self.dormant:  # a series used again resumes where it stopped
            value, meta = self.dormant.pop(key)
            self.values[key], self.meta[key] = value, meta
            return key
        if len(self.values) >= self.limit:
            key, attributes = OVERFLOW_KEY, OVERFLOW_ATTRIBUTES
            if key in self.values:
                return key
        self.values[key] = initial
        self.meta[key] = _Meta(attributes, time.time_ns(), time.monotonic())
        return key

    # The hot path: one lock, one dict lookup.
    def add(self, amount: float, key: Key, attributes: Mapping[str, Any]) -> None:
        """Counter / up-down counter: add ``amount``."""
        with self.lock:
            value = self.values.get(key)
            if value is None:
                key = self._create(key, attributes, 0)
                value = self.values[key]
            self.values[key] = value + amount

    def set(self, value: float, key: Key, attributes: Mapping[str, Any]) -> None:
        """Gauge: set the current value."""
        with self.lock:
            if key not in self.values:
                key = self._create(key, attributes, value)
            self.values[key] = value

    def record(self, value: float, key: Key, attributes: Mapping[str, Any]) -> None:
        """Histogram: count ``value`` in its bucket; track count, sum, min, max."""
        index = bisect_left(self.bounds, value)
        with self.lock:
            cell = self.values.get(key)
            if cell is None:
                key = self._create(key, attributes, None)
                cell = self.values[key]
                if cell is None:
                    cell = self.values[key] = [0, 0.0, math.inf, -math.inf, math.inf, -math.inf] + [0] * (
                        len(self.bounds) + 1
                    )
            # count, sum, lifetime min/max, min/max since the last delta export, buckets
            cell[0] += 1
            cell[1] += value
            if value < cell[2]:  # noqa: PLR1730 - a comparison is cheaper than min() here
                cell[2] = value
            if value > cell[3]:  # noqa: PLR1730
                cell[3] = value
            if value < cell[4]:  # noqa: PLR1730
                cell[4] = value
            if value > cell[5]:  # noqa: PLR1730
                cell[5] = value
            cell[_BUCKETS + index] += 1

    # Series that end.
    def remove(self, matches: Callable[[Mapping[str, Any]], bool]) -> int:
        """Drop every series whose attributes match, at once; returns how many."""
        removed = []
        with self.lock:
            for key, meta in list(self.meta.items()):
                if key != OVERFLOW_KEY and matches(meta.attributes):
                    del self.values[key], self.meta[key]
                    removed.append(meta.attributes)
            for key, (_, meta) in list(self.dormant.items()):
                if matches(meta.attributes):
                    del self.dormant[key]
        for attributes in removed:
            self._on_series_removed(self.name, attributes)
        return len(removed)

    def expire(self, ttl_s: float, now_s: float) -> None:
        """Put series unchanged for ``ttl_s`` to sleep: not exported, resumed if used again."""
        expired = []
        with self.lock:
            for key, meta in list(self.meta.items()):
                value = self.values[key]
                snapshot = list(value) if isinstance(value, list) else value
                if snapshot != meta.last_seen:
                    meta.last_seen, meta.last_change_s = snapshot, now_s
                elif now_s - meta.last_change_s >= ttl_s:
                    del self.values[key], self.meta[key]
                    if self.kind in ("counter", "histogram", "updowncounter"):
                        self.dormant[key] = (value, meta)  # cumulative state survives the pause
                        while len(self.dormant) > DORMANT_LIMIT:
                            self.dormant.popitem(last=False)
                    expired.append(meta.attributes)
        for attributes in expired:
            self._on_series_removed(self.name, attributes)

    # Collection.
    def export(self, reader: ReaderState, temporality: AggregationTemporality, now_ns: int) -> Metric | None:
        """The metric as the reader should see it now, or None if it has no points."""
        with self.lock:
            items: list[tuple[Key, Any, _Meta]] = [
                (key, list(value) if isinstance(value, list) else value, self.meta[key])
                for key, value in self.values.items()
                if value is not None
            ]
        if self.kind == "gauge":
            points: list[Any] = [
                NumberDataPoint(meta.attributes, meta.start_ns, now_ns, v) for _, v, meta in items
            ]
            data: Any = Gauge(points)
        elif self.kind == "histogram":
            points = list(self._histogram_points(items, reader, temporality, now_ns))
            data = Histogram(points, temporality)
        else:
            points = list(self._sum_points(items, reader, temporality, now_ns))
            data = Sum(points, temporality, is_monotonic=self.kind == "counter")
        if not points:
            return None
        return Metric(self.name, self.definition.brief, self.definition.unit, data)

    def _sum_points(
        self,
        items: Iterable[tuple[Key, Any, _Meta]],
        reader: ReaderState,
        temporality: AggregationTemporality,
        now_ns: int,
    ) -> Iterable[NumberDataPoint]:
        for key, value, meta in items:
            if temporality is _CUMULATIVE:
                yield NumberDataPoint(meta.attributes, meta.start_ns, now_ns, value)
                continue
            previous = reader.sent.get((self.name, key), 0)
            reader.sent[(self.name, key)] = value
            if value != previous:  # idle series send nothing under delta, as on the SDK path
                yield NumberDataPoint(
                    meta.attributes, max(reader.last_collect_ns, meta.start_ns), now_ns, value - previous
                )

    def _reset_interval(self, key: Key) -> None:
        with self.lock:
            live = self.values.get(key)
            if live is not None:
                live[4], live[5] = math.inf, -math.inf

    def _histogram_points(
        self,
        items: Iterable[tuple[Key, Any, _Meta]],
        reader: ReaderState,
        temporality: AggregationTemporality,
        now_ns: int,
    ) -> Iterable[HistogramDataPoint]:
        for key, cell, meta in items:
            count, total, low, high = cell[0], cell[1], cell[2], cell[3]
            buckets = cell[_BUCKETS:]
            start = meta.start_ns
            if temporality is _DELTA:
                previous = reader.sent.get((self.name, key))
                reader.sent[(self.name, key)] = cell
                self._reset_interval(key)
                if previous is not None:
                    if previous[0] == count:
                        continue
                    count, total = count - previous[0], total - previous[1]
                    buckets = [now - before for now, before in zip(buckets, previous[_BUCKETS:], strict=True)]
                # extremes since the previous delta export (shared if several delta readers)
                low, high = cell[4], cell[5]
                start = max(reader.last_collect_ns, meta.start_ns)
            yield HistogramDataPoint(
                attributes=meta.attributes,
                start_time_unix_nano=start,
                time_unix_nano=now_ns,
                count=count,
                sum=total,
                bucket_counts=buckets,
                explicit_bounds=self.bounds,
                min=low,
                max=high,
            )
