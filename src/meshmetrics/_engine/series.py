"""Facade-owned aggregation: meshmetrics' own counters, gauges and histograms (the hot path).

The facades know their attribute sets are small closed tuples, so the work the
SDK does per measurement (copying, filtering and hashing an attribute dict, once
per reader) is done once per distinct tuple (by the policy cache), and a
measurement is one dict update in the calling thread's own shard, under a lock
only the collector ever contends for. (A single shared lock convoys under the
GIL: measured 15x slower per call with 8 threads.) At collection the shards are
merged and become the SDK's public data types, merged into every reader's
export (see ``_merge``) with each reader's temporality.

Series can end: :meth:`Cells.remove` drops series at once (a deregistered
instance), and series idle longer than ``series_ttl`` stop being exported and
resume at their cumulative value if used again (up to ``DORMANT_LIMIT`` of them).
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
_CUMULATIVE = AggregationTemporality.CUMULATIVE
# A histogram cell: count, sum, lifetime min, max, min and max since the last
# delta export, then one count per bucket.
_COUNT, _SUM, _MIN, _MAX, _IMIN, _IMAX, _BUCKETS = range(7)


def _new_histogram(buckets: int) -> list[Any]:
    return [0, 0.0, math.inf, -math.inf, math.inf, -math.inf] + [0] * buckets


def _merge_value(kind: str, into: Any, value: Any) -> Any:
    if into is None:
        return list(value) if isinstance(value, list) else value
    if kind != "histogram":
        return into + value
    into[_COUNT] += value[_COUNT]
    into[_SUM] += value[_SUM]
    into[_MIN] = min(into[_MIN], value[_MIN])
    into[_MAX] = max(into[_MAX], value[_MAX])
    into[_IMIN] = min(into[_IMIN], value[_IMIN])
    into[_IMAX] = max(into[_IMAX], value[_IMAX])
    for index in range(_BUCKETS, len(into)):
        into[index] += value[index]
    return into


@dataclass
class _Meta:
    attributes: Mapping[str, Any]
    start_ns: int
    last_change_s: float
    last_seen: Any = None  # the merged value at the last idleness check


class _Shard:
    """One thread's values; its lock is contended only by the collector."""

    __slots__ = ("lock", "thread", "values")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[Key, Any] = {}
        self.thread = threading.current_thread()


@dataclass
class ReaderState:
    """What one reader was sent last, for delta temporality."""

    last_collect_ns: int = field(default_factory=time.time_ns)
    sent: dict[tuple[str, Key], Any] = field(default_factory=dict)


class Cells:
    """The series of one metric.

    Counters, up-down counters and histograms accumulate in per-thread shards;
    gauges (last value wins across threads) live in ``base`` under ``lock``.
    """

    def __init__(
        self,
        definition: MetricDefinition,
        *,
        on_series_removed: Callable[[str, Mapping[str, Any]], None] = lambda _m, _a: None,
        series_ttl_s: float = 0.0,
    ) -> None:
        """Hold the series of ``definition`` (its kind decides add/set/record).

        With ``series_ttl_s`` > 0, series idle that long stop being exported.
        """
        self.definition = definition
        self.name = definition.name
        self.kind = definition.instrument
        self.limit = definition.cardinality_limit
        self.bounds = tuple(definition.buckets)
        self.lock = threading.Lock()  # meta, base, dormant and the shard list
        self.meta: dict[Key, _Meta] = {}
        self.base: dict[Key, Any] = {}  # gauges, and what dead threads' shards held
        self.dormant: OrderedDict[Key, tuple[Any, _Meta]] = OrderedDict()
        self._shards: list[_Shard] = []
        self._local = threading.local()
        self._on_series_removed = on_series_removed
        self.series_ttl_s = series_ttl_s

    def _shard(self) -> _Shard:
        shard = _Shard()
        with self.lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def _resolve(self, key: Key, attributes: Mapping[str, Any]) -> tuple[Key, Any]:
        """Must hold ``self.lock``: the series key to use, and a dormant value to resume from."""
        if key in self.meta:
            return key, None
        if key in self.dormant:  # a series used again resumes where it stopped
            value, meta = self.dormant.pop(key)
            self.meta[key] = meta
            return key, value
        if len(self.meta) >= self.limit:
            key, attributes = OVERFLOW_KEY, OVERFLOW_ATTRIBUTES
            if key in self.meta:
                return key, None
        self.meta[key] = _Meta(attributes, time.time_ns(), time.monotonic())
        return key, None

    # The hot path: the calling thread's shard, one dict lookup.
    def add(self, amount: float, key: Key, attributes: Mapping[str, Any]) -> None:
        """Counter / up-down counter: add ``amount``."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        lock = shard.lock
        lock.acquire()  # explicit acquire/release: measured ~100 ns cheaper than `with` here
        try:
            values = shard.values
            value = values.get(key)
            if value is not None:
                values[key] = value + amount
                return
        finally:
            lock.release()
        with self.lock:
            key, resumed = self._resolve(key, attributes)
        with shard.lock:
            shard.values[key] = shard.values.get(key, 0) + (resumed or 0) + amount

    def set(self, value: float, key: Key, attributes: Mapping[str, Any]) -> None:
        """Gauge: set the current value."""
        with self.lock:
            if key not in self.meta:
                key, _ = self._resolve(key, attributes)
            self.base[key] = value

    def record(self, value: float, key: Key, attributes: Mapping[str, Any]) -> None:
        """Histogram: count ``value`` in its bucket; track count, sum, min, max."""
        index = _BUCKETS + bisect_left(self.bounds, value)
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        lock = shard.lock
        lock.acquire()  # explicit acquire/release: cheaper than `with` on the hot path
        try:
            cell = shard.values.get(key)
            if cell is not None:
                cell[_COUNT] += 1
                cell[_SUM] += value
                if value < cell[_MIN]:  # noqa: PLR1730 - a comparison is cheaper than min() here
                    cell[_MIN] = value
                if value > cell[_MAX]:  # noqa: PLR1730
                    cell[_MAX] = value
                if value < cell[_IMIN]:  # noqa: PLR1730
                    cell[_IMIN] = value
                if value > cell[_IMAX]:  # noqa: PLR1730
                    cell[_IMAX] = value
                cell[index] += 1
                return
        finally:
            lock.release()
        with self.lock:
            key, resumed = self._resolve(key, attributes)
        with shard.lock:
            cell = shard.values.get(key)
            if cell is None:
                cell = shard.values[key] = resumed or _new_histogram(len(self.bounds) + 1)
            _merge_value(
                "histogram", cell, [1, value, value, value, value, value] + [0] * (len(cell) - _BUCKETS)
            )
            cell[index] += 1

    # Reading.
    def snapshot(self) -> dict[Key, Any]:
        """Every live series' merged value (dead threads' shards are folded into ``base``)."""
        with self.lock:
            merged = {key: _merge_value(self.kind, None, value) for key, value in self.base.items()}
            alive = []
            for shard in self._shards:
                with shard.lock:
                    copied = {k: (list(v) if isinstance(v, list) else v) for k, v in shard.values.items()}
                    if not shard.thread.is_alive():
                        shard.values.clear()
                if shard.thread.is_alive():
                    alive.append(shard)
                else:
                    for key, value in copied.items():
                        self.base[key] = _merge_value(self.kind, self.base.get(key), value)
                for key, value in copied.items():
                    merged[key] = _merge_value(self.kind, merged.get(key), value)
            self._shards = alive
            return {key: value for key, value in merged.items() if key in self.meta}

    def attributes_of(self, key: Key) -> Mapping[str, Any] | None:
        """The attributes of a live series."""
        meta = self.meta.get(key)
        return None if meta is None else meta.attributes

    # Series that end.
    def _drop(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """Must hold ``self.lock``: remove ``keys`` everywhere, returning their merged values."""
        dropped: dict[Key, Any] = {}
        keys = set(keys)
        for key in keys:
            if key in self.base:
                dropped[key] = _merge_value(self.kind, None, self.base.pop(key))
        for shard in self._shards:
            with shard.lock:
                for key in keys:
                    value = shard.values.pop(key, None)
                    if value is not None:
                        dropped[key] = _merge_value(self.kind, dropped.get(key), value)
        return dropped

    def remove(self, matches: Callable[[Mapping[str, Any]], bool]) -> int:
        """Drop every series whose attributes match, at once; returns how many."""
        with self.lock:
            keys = [
                key for key, meta in self.meta.items() if key != OVERFLOW_KEY and matches(meta.attributes)
            ]
            removed = [self.meta.pop(key).attributes for key in keys]
            self._drop(keys)
            for key, (_, meta) in list(self.dormant.items()):
                if matches(meta.attributes):
                    del self.dormant[key]
        for attributes in removed:
            self._on_series_removed(self.name, attributes)
        return len(removed)

    def _expire_idle(self, values: dict[Key, Any], now_s: float) -> dict[Key, Any]:
        """Put series unchanged for ``series_ttl_s`` to sleep (resumed if used again).

        Returns ``values`` without them.
        """
        ttl_s = self.series_ttl_s
        expired = []
        with self.lock:
            idle = []
            for key, value in values.items():
                meta = self.meta.get(key)
                if meta is None:  # removed since the snapshot
                    continue
                if value != meta.last_seen:
                    meta.last_seen, meta.last_change_s = value, now_s
                elif now_s - meta.last_change_s >= ttl_s:
                    idle.append(key)
            dropped = self._drop(idle)
            for key in idle:
                meta = self.meta.pop(key)
                expired.append(meta.attributes)
                if self.kind != "gauge":  # cumulative state survives the pause
                    self.dormant[key] = (dropped.get(key), meta)
                    while len(self.dormant) > DORMANT_LIMIT:
                        self.dormant.popitem(last=False)
        for attributes in expired:
            self._on_series_removed(self.name, attributes)
        return {key: value for key, value in values.items() if key in self.meta}

    # Collection.
    def export(self, reader: ReaderState, temporality: AggregationTemporality, now_ns: int) -> Metric | None:
        """The metric as the reader should see it now, or None if it has no points."""
        values = self.snapshot()
        if self.series_ttl_s > 0:
            values = self._expire_idle(values, time.monotonic())
        with self.lock:
            items = [(key, value, self.meta[key]) for key, value in values.items() if key in self.meta]
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
                start = max(reader.last_collect_ns, meta.start_ns)
                yield NumberDataPoint(meta.attributes, start, now_ns, value - previous)

    def _reset_interval_extremes(self) -> None:
        with self.lock:
            for shard in self._shards:
                with shard.lock:
                    for cell in shard.values.values():
                        cell[_IMIN], cell[_IMAX] = math.inf, -math.inf
            for cell in self.base.values():
                cell[_IMIN], cell[_IMAX] = math.inf, -math.inf

    def _histogram_points(
        self,
        items: Iterable[tuple[Key, Any, _Meta]],
        reader: ReaderState,
        temporality: AggregationTemporality,
        now_ns: int,
    ) -> Iterable[HistogramDataPoint]:
        if temporality is _DELTA:
            # extremes since the previous delta export (shared if several delta readers)
            self._reset_interval_extremes()
        for key, cell, meta in items:
            count, total, low, high = cell[_COUNT], cell[_SUM], cell[_MIN], cell[_MAX]
            buckets = cell[_BUCKETS:]
            start = meta.start_ns
            if temporality is _DELTA:
                previous = reader.sent.get((self.name, key))
                reader.sent[(self.name, key)] = cell
                if previous is not None:
                    if previous[_COUNT] == count:
                        continue
                    count, total = count - previous[_COUNT], total - previous[_SUM]
                    buckets = [now - before for now, before in zip(buckets, previous[_BUCKETS:], strict=True)]
                low, high = cell[_IMIN], cell[_IMAX]
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
