"""Series: everything about one exported series in one object, and the table of a metric's series.

A :class:`Series` owns its attributes, its place in the metric's budgets, its
values (one cell per recording thread, written only by that thread, so the
hot path takes no lock) and what each reader was sent last. Ending a series
ends all of it at once: it leaves the :class:`Table`'s lookups and budgets in
one critical section, and its values and delta state go with the object.
A series that comes back later is a new series, with a new start time, whose
first delta is its whole value.

A :class:`Table` finds the series of a raw attribute tuple: one dict lookup
on the hot path (raw tuples of short plain strings that no policy folded);
otherwise the policy sanitises them into labels and the table applies the
metric's budgets (a live-series count per bounded value, so freeing a place
rescans nothing) and its series limit, creating and publishing a new series
under the table's lock.

With an exemplar filter other than ``always_off`` a counter's or histogram's
series also keeps the last sampled measurement per thread (per bucket for
histograms; see ``exemplars.py``), at the cost of one identity test when no
span can be current; with
``exponential=True`` a histogram's series are :class:`ExponentialSeries`,
which keep base-2 exponential buckets beside the explicit ones (see
``exponential.py``) so each reader can be sent either kind.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from math import floor, log
from typing import Any, NamedTuple

from meshmetrics._definitions import OTHER, MetricDefinition
from meshmetrics._engine import exemplars as _exemplars
from meshmetrics._engine import exponential as _exponential
from meshmetrics._engine.exemplars import ExemplarFilter
from meshmetrics._policy.core import Labels, Policy

OVERFLOW_ATTRIBUTES: Mapping[str, Any] = {"otel.metric.overflow": True}
OVERFLOW_LABELS: tuple[str, ...] = ("otel.metric.overflow",)
DORMANT_LIMIT = 10_000
"""Series put to sleep by ``series_ttl`` that are remembered (oldest forgotten first)."""
CACHE_LIMIT = 8192
"""Raw attribute tuples remembered per metric for the one-lookup hot path."""

# A histogram cell: sum, lifetime min and max, min and max since the last delta
# export, then one count per bucket. The count is the sum of the buckets, so a
# collection that reads a cell while its thread records never sees them disagree.
SUM, MIN, MAX, IMIN, IMAX, BUCKETS = range(6)
monotonic = time.monotonic  # the clock of idleness (tests replace it)
_RETIRED = 0  # the slot that keeps what finished threads recorded (written by collections only)
_context = _exemplars.current_context
_SPAN_KEY = _exemplars.SPAN_KEY
_NO_CONTEXT = _exemplars.NO_CONTEXT
_sample = _exemplars.sample
_OFF, _ALWAYS = 0, _exemplars.ALWAYS_ON
_SAMPLING = {"always_off": _OFF, "trace_based": 1, "always_on": _ALWAYS}
_time_ns = time.time_ns


_local = threading.local()  # .slot: the calling thread's slot
_next_slot = itertools.count(1)
_slot_threads: dict[int, threading.Thread] = {}


def _new_slot() -> int:
    """The calling thread's slot: a number never reused, so a finished thread's cell can be folded."""
    slot = next(_next_slot)
    _slot_threads[slot] = threading.current_thread()
    _local.slot = slot
    return slot


def live_slots() -> frozenset[int]:
    """The slots of threads still running (finished threads are forgotten here)."""
    for slot, thread in list(_slot_threads.items()):
        if not thread.is_alive():
            _slot_threads.pop(slot, None)
    return frozenset(_slot_threads)


def reset_after_fork() -> None:
    """In a forked child only the forking thread survives; its slot stays valid."""
    current = threading.current_thread()
    for slot, thread in list(_slot_threads.items()):
        if thread is not current:
            del _slot_threads[slot]


class Series:
    """One exported series: attributes, budget place, values and per-reader state."""

    __slots__ = (
        "aliases",
        "attributes",
        "bounds",
        "cells",
        "ended",
        "exemplars",
        "labels",
        "last_change_s",
        "last_total",
        "sampling",
        "seen",
        "sent",
        "start_ns",
        "table",
    )

    def __init__(self, table: Table, labels: tuple[str, ...], attributes: Mapping[str, Any]) -> None:
        """A new series of ``table`` with ``attributes`` (exported as they are)."""
        self.table = table
        self.labels = labels
        self.attributes = attributes
        self.bounds = table.bounds
        self.start_ns = time.time_ns()
        self.cells: dict[int, Any] = {}
        self.sent: dict[int, Any] = {}  # reader id -> what that reader was last sent (delta)
        self.exemplars: dict[int, Any] = {}  # slot -> that thread's sample(s), when sampling
        self.sampling = _SAMPLING[table.exemplar_filter] if table.kind != "gauge" else _OFF
        self.seen: dict[int, frozenset[Any]] = {}  # reader id -> the samples it has been given or passed
        self.aliases: set[tuple[object, ...]] = set()  # raw tuples of the hot-path cache
        self.ended = False
        self.last_total: Any = None
        self.last_change_s = monotonic()

    def add(self, amount: float) -> None:
        """Counter, up-down counter: add ``amount`` in the calling thread's cell (and keep an exemplar)."""
        try:
            slot = _local.slot
        except AttributeError:
            slot = _new_slot()
        cells = self.cells
        try:
            cells[slot] += amount
        except KeyError:  # this thread's first measurement of the series
            cells[slot] = amount
        sampling = self.sampling
        if sampling:  # no span in this thread or task: one identity test, under trace_based
            context = _context()
            if context is not _NO_CONTEXT or sampling is _ALWAYS:
                sample = _sample(context, amount, sampling)
                if sample is not None:
                    self.exemplars[slot] = sample

    def set(self, value: float) -> None:
        """Gauge: the last value set wins, whichever thread set it."""
        self.cells[_RETIRED] = value

    def record(self, value: float) -> int:
        """Histogram: count ``value`` in its bucket, track sum and extremes (keep an exemplar); its slot."""
        try:
            slot: int = _local.slot
        except AttributeError:
            slot = _new_slot()
        cell = self.cells.get(slot)
        if cell is None:
            cell = self.cells[slot] = self.table.new_cell()
        cell[SUM] += value
        if value < cell[IMIN]:  # noqa: PLR1730 - a comparison is cheaper than min() here
            cell[IMIN] = value  # the lifetime extremes are folded in by collections
        if value > cell[IMAX]:  # noqa: PLR1730
            cell[IMAX] = value
        bucket = bisect_left(self.bounds, value)
        cell[BUCKETS + bucket] += 1
        sampling = self.sampling
        if sampling:
            context = _context()
            if context is not _NO_CONTEXT or sampling is _ALWAYS:
                sample = _sample(context, value, sampling)
                if sample is not None:
                    self._keep(slot, bucket, sample)
        return slot

    def _keep(self, slot: int, bucket: int, sample: _exemplars.Sample) -> None:
        samples = self.exemplars.get(slot)
        if samples is None:
            samples = self.exemplars[slot] = [None] * (len(self.bounds) + 1)
        samples[bucket] = sample

    def total(self, live: frozenset[int] | None = None) -> Any:
        """The merged value of every cell; with ``live``, finished threads' cells are folded first."""
        if live is not None:
            self._fold_finished(live)
        values = list(self.cells.values())  # one atomic copy; cells are only ever added to
        kind = self.table.kind
        if kind == "gauge":
            return values[0] if values else None
        if kind != "histogram":
            return sum(values)
        merged = self.table.new_cell()
        for cell in values:
            merged[SUM] += cell[SUM]
            merged[MIN] = min(merged[MIN], cell[MIN], cell[IMIN])  # lifetime: folded + this interval
            merged[MAX] = max(merged[MAX], cell[MAX], cell[IMAX])
            merged[IMIN] = min(merged[IMIN], cell[IMIN])
            merged[IMAX] = max(merged[IMAX], cell[IMAX])
            for index in range(BUCKETS, len(merged)):
                merged[index] += cell[index]
        return merged

    def _fold_finished(self, live: frozenset[int]) -> None:
        """Fold finished threads' cells into the retired slot (collections only, under the table lock)."""
        cells = self.cells
        if self.table.kind == "gauge" or all(slot in live or slot == _RETIRED for slot in list(cells)):
            return
        for slot in [s for s in list(cells) if s != _RETIRED and s not in live]:
            self._fold_samples(slot)
            cell = cells.pop(slot)
            retired = cells.get(_RETIRED)
            if self.table.kind != "histogram":
                cells[_RETIRED] = (retired or 0) + cell
            elif retired is None:
                cells[_RETIRED] = cell
            else:
                retired[SUM] += cell[SUM]
                retired[MIN], retired[MAX] = min(retired[MIN], cell[MIN]), max(retired[MAX], cell[MAX])
                retired[IMIN], retired[IMAX] = min(retired[IMIN], cell[IMIN]), max(retired[IMAX], cell[IMAX])
                for index in range(BUCKETS, len(retired)):
                    retired[index] += cell[index]

    def _fold_samples(self, slot: int) -> None:
        """Keep a finished thread's newest samples in the retired slot."""
        samples = self.exemplars.pop(slot, None)
        if samples is None:
            return
        retired = self.exemplars.get(_RETIRED)
        if not isinstance(samples, list):  # a counter's one sample
            self.exemplars[_RETIRED] = _exemplars.newest(retired, samples)
        elif retired is None:
            self.exemplars[_RETIRED] = samples
        else:
            self.exemplars[_RETIRED] = [
                _exemplars.newest(r, s) for r, s in zip(retired, samples, strict=True)
            ]

    def reset_interval_extremes(self) -> None:
        """Start a new delta interval for min and max (shared by every delta reader).

        The interval's extremes are first folded into the lifetime ones, which
        only collections write (the recording thread tracks the interval's).
        """
        for cell in list(self.cells.values()):
            cell[MIN], cell[MAX] = min(cell[MIN], cell[IMIN]), max(cell[MAX], cell[IMAX])
            cell[IMIN], cell[IMAX] = math.inf, -math.inf


class HistogramTotal(NamedTuple):
    """The merged value of an :class:`ExponentialSeries`: both kinds of buckets."""

    explicit: list[Any]
    exponential: _exponential.Snapshot


class ExponentialSeries(Series):
    """A histogram series keeping base-2 exponential buckets beside the explicit ones.

    ``expo[slot]`` is the calling thread's exponential cell (see
    ``exponential.py``); exemplars are kept per explicit bucket unless the
    table's filter is ``always_off``.
    """

    __slots__ = ("expo",)

    def __init__(self, table: Table, labels: tuple[str, ...], attributes: Mapping[str, Any]) -> None:
        """A new exponential series of ``table``."""
        super().__init__(table, labels, attributes)
        self.expo: dict[int, _exponential.Cell] = {}

    def record(self, value: float) -> int:
        """Count ``value`` in its explicit bucket (:meth:`Series.record`) and in its exponential one."""
        slot = Series.record(self, value)
        expo = self.expo.get(slot)
        if expo is None:
            expo = self.expo[slot] = _exponential.new_cell()
        # exponential.record inlined for normal floats; expo is [scale, factor, low, high, zero, counts,
        # state, mask]: the index from the logarithm, checked with frexp only at an octave's first
        # index (where an exact power of two belongs one lower), and the range checked only when a
        # bucket is used for the first time
        if value >= 2.2250738585072014e-308:  # noqa: PLR2004 - the smallest normal float, a literal here
            scale = expo[0]
            if scale > 0:
                index = floor(log(value) * expo[1])
                if not index & expo[7]:
                    index = _exponential.index_of(value, scale)
            else:
                index = _exponential.index_of(value, scale)
            try:
                expo[5][index] += 1
            except KeyError:
                _exponential.add_bucket(expo, value, index)
        else:
            _exponential.record(expo, value)  # zero, or a subnormal value
        return slot

    def total(self, live: frozenset[int] | None = None) -> HistogramTotal:
        """Both kinds of buckets merged over every thread (finished threads folded first with ``live``)."""
        explicit = super().total(live)
        return HistogramTotal(explicit, _exponential.merge(list(self.expo.values())))

    def _fold_finished(self, live: frozenset[int]) -> None:
        for slot in [s for s in list(self.expo) if s != _RETIRED and s not in live]:
            cell = self.expo.pop(slot)
            retired = self.expo.get(_RETIRED)
            if retired is None:
                self.expo[_RETIRED] = cell
            else:
                _exponential.fold(retired, cell)
        super()._fold_finished(live)


class SdkSeries(Series):
    """A series recorded on a plain SDK instrument (a user View, ``meter_provider=``, ``fast_path=False``).

    The SDK aggregates and exports it; counters also keep their own count, so
    the load-imbalance gauge reads the same totals on both paths.
    """

    __slots__ = ("instrument",)

    def __init__(
        self, table: Table, labels: tuple[str, ...], attributes: Mapping[str, Any], instrument: Any
    ) -> None:
        """A series whose measurements go to ``instrument`` with ``attributes``."""
        super().__init__(table, labels, attributes)
        self.instrument = instrument
        self.sampling = _OFF  # the SDK keeps this path's exemplars

    def add(self, amount: float) -> None:
        """Add on the SDK instrument (and to the own count)."""
        self.instrument.add(amount, self.attributes)
        super().add(amount)

    def set(self, value: float) -> None:
        """Set the SDK gauge."""
        self.instrument.set(value, self.attributes)

    def record(self, value: float) -> int:
        """Record on the SDK histogram (no slot of its own: 0)."""
        self.instrument.record(value, self.attributes)
        return _RETIRED


class Table:
    """The series of one metric in one runtime, and the budgets of its bounded attributes."""

    def __init__(
        self,
        definition: MetricDefinition,
        policy: Policy,
        *,
        sdk_instrument: Any = None,
        series_ttl_s: float = 0.0,
        count_folds: bool = True,
        exemplar_filter: ExemplarFilter = "always_off",
        exponential: bool = False,
    ) -> None:
        """Hold the series of ``definition``; with ``sdk_instrument`` they record on the SDK instead.

        On the SDK path the SDK's View applies the series limit, and series
        cannot end (the SDK keeps every series it has seen). On the fast path
        counters, up-down counters and histograms keep exemplars as
        ``exemplar_filter`` says, and with ``exponential`` a histogram also
        keeps base-2 exponential buckets.
        """
        self.definition = definition
        self.name = definition.name
        self.kind = definition.instrument
        self.bounds = tuple(definition.buckets)
        self.policy = policy
        self.sdk_instrument = sdk_instrument
        self.limit = definition.cardinality_limit if sdk_instrument is None else math.inf
        self.series_ttl_s = series_ttl_s
        self.count_folds = count_folds
        self.exemplar_filter: ExemplarFilter = exemplar_filter
        self.exponential = exponential and self.kind == "histogram"
        self._series_class: type[Series] = Series
        if self.exponential:
            self._series_class = ExponentialSeries
        self.lock = threading.Lock()  # publishing, ending, budgets, and one collection at a time
        self.cache: dict[tuple[object, ...], Series] = {}  # raw tuple -> series: the hot path
        self.by_labels: dict[tuple[str, ...], Series] = {}  # the live series
        self.budgets: dict[str, dict[str, int]] = {}  # bounded attribute -> value -> live series holding it
        self.dormant: OrderedDict[tuple[str, ...], Series] = OrderedDict()
        self.on_first_end: Callable[[str], None] = lambda _metric: None

    def new_cell(self) -> list[Any]:
        """An empty histogram cell."""
        return [0.0, math.inf, -math.inf, math.inf, -math.inf] + [0] * (len(self.bounds) + 1)

    # Finding a series (the slow path: the first use of a raw tuple, or a folded one).
    def series_of(self, values: tuple[object, ...]) -> Series | None:
        """The live series of raw ``values`` (one lookup when cached); None if the policy rejects them."""
        try:
            series = self.cache.get(values)
        except Exception:  # unhashable or hostile: the policy says why
            series = None
        return series if series is not None else self.find(values)

    def find(self, values: tuple[object, ...]) -> Series | None:
        """The live series for raw ``values``, published if new; None if the policy rejected them."""
        labels = self.policy.labels(self.definition, values)
        if labels is None:
            return None
        folded = list(labels.folded)
        key = self._within_budgets(labels, folded)
        series = self.by_labels.get(key)
        if series is None:
            if len(self.by_labels) >= self.limit and key not in self.dormant:
                series = self.by_labels.get(OVERFLOW_LABELS)  # over the limit: no lock per call
            if series is None:
                series = self._publish(values, labels, key, folded)
        elif not folded and labels.raw_cacheable:
            self._alias(values, series)
        if folded and self.count_folds:
            for attribute in folded:
                self.policy.folded(self.name, attribute, self._limit_of(labels, attribute))
        return series

    def _limit_of(self, labels: Labels, attribute: str) -> int:
        for position, limit in labels.bounded:
            if labels.keys[position] == attribute:
                return limit
        return 0

    def _within_budgets(self, labels: Labels, folded: list[str]) -> tuple[str, ...]:
        """The labels with every value over its budget folded into ``_OTHER`` (read without the lock)."""
        if not labels.bounded:
            return labels.values
        values = list(labels.values)
        for position, limit in labels.bounded:
            held = self.budgets.get(labels.keys[position])
            value = values[position]
            if held is not None and value not in held and len(held) >= limit:
                values[position] = OTHER
                folded.append(labels.keys[position])
        return tuple(values)

    def _publish(
        self, raw: tuple[object, ...], labels: Labels, key: tuple[str, ...], folded: list[str]
    ) -> Series:
        """Under the lock: the live series of ``key``, created (or woken) and published if needed."""
        with self.lock:
            series = self.by_labels.get(key)
            if series is None and folded != list(labels.folded):  # folded by a budget: re-check
                folded[:] = labels.folded
                key = self._within_budgets(labels, folded)
                series = self.by_labels.get(key)
            if series is None:
                series = self.dormant.pop(key, None)
                if series is not None:
                    series.ended = False
                elif len(self.by_labels) >= self.limit:
                    return self._overflow()
                else:
                    series = self._new_series(key, dict(zip(labels.keys, key, strict=True)))
                self.by_labels[key] = series
                for position, _ in labels.bounded:
                    if key[position] != OTHER:  # _OTHER takes no place in a budget
                        held = self.budgets.setdefault(labels.keys[position], {})
                        held[key[position]] = held.get(key[position], 0) + 1
            if not folded and labels.raw_cacheable:
                self._alias_locked(raw, series)
            return series

    def _new_series(self, labels: tuple[str, ...], attributes: Mapping[str, Any]) -> Series:
        if self.sdk_instrument is not None:
            return SdkSeries(self, labels, attributes, self.sdk_instrument)
        return self._series_class(self, labels, attributes)

    def _overflow(self) -> Series:
        """Must hold the lock: the one series beyond the limit, as the SDK names it."""
        series = self.by_labels.get(OVERFLOW_LABELS)
        if series is None:
            series = self.by_labels[OVERFLOW_LABELS] = self._new_series(OVERFLOW_LABELS, OVERFLOW_ATTRIBUTES)
        return series

    def _alias(self, raw: tuple[object, ...], series: Series) -> None:
        with self.lock:
            self._alias_locked(raw, series)

    def _alias_locked(self, raw: tuple[object, ...], series: Series) -> None:
        if series.ended:
            return  # ended since it was looked up: the next call finds its successor
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
            for live in self.by_labels.values():
                live.aliases.clear()
        self.cache[raw] = series
        series.aliases.add(raw)

    # Ending series.
    def remove(self, matches: Callable[[Mapping[str, Any]], bool]) -> int:
        """End every live (or sleeping) series whose attributes match; returns how many ended."""
        if self.sdk_instrument is not None:
            self.on_first_end(self.name)
            return 0
        with self.lock:
            ending = [
                s for s in self.by_labels.values() if s.labels != OVERFLOW_LABELS and matches(s.attributes)
            ]
            for series in ending:
                self._unpublish(series)
            for key in [k for k, s in self.dormant.items() if matches(s.attributes)]:
                del self.dormant[key]
        return len(ending)

    def _unpublish(self, series: Series) -> None:
        """Must hold the lock: take ``series`` out of every lookup and give its budget places back."""
        series.ended = True
        del self.by_labels[series.labels]
        for raw in series.aliases:
            if self.cache.get(raw) is series:
                del self.cache[raw]
        series.aliases.clear()
        for attribute, held in self.budgets.items():
            value = series.attributes.get(attribute)
            count = held.get(value) if isinstance(value, str) else None
            if count is None or not isinstance(value, str):
                continue
            if count <= 1:
                del held[value]  # its last live series ended: the place is free
            else:
                held[value] = count - 1

    # Reading.
    def collect(self, now_s: float, live: frozenset[int] | None = None) -> list[tuple[Series, Any]]:
        """Every live series with its merged value; idle series past the TTL go to sleep first.

        ``live``: the slots of running threads (:func:`live_slots`, taken once per collection).
        """
        if live is None:
            live = live_slots()
        with self.lock:
            items = [(series, series.total(live)) for series in list(self.by_labels.values())]
            if self.series_ttl_s > 0:
                items = self._expire_idle(items, now_s)
        return items

    def totals(self) -> list[tuple[Mapping[str, Any], Any]]:
        """Attributes and merged value of every live series (for derived gauges)."""
        with self.lock:
            return [(series.attributes, series.total()) for series in list(self.by_labels.values())]

    def _expire_idle(self, items: list[tuple[Series, Any]], now_s: float) -> list[tuple[Series, Any]]:
        """Must hold the lock: put series unchanged for ``series_ttl_s`` to sleep (woken if used again)."""
        kept = []
        for series, value in items:
            if value != series.last_total:
                series.last_total, series.last_change_s = value, now_s
            elif now_s - series.last_change_s >= self.series_ttl_s and series.labels != OVERFLOW_LABELS:
                self._unpublish(series)
                if self.kind != "gauge":  # cumulative state survives the pause
                    self.dormant[series.labels] = series
                    while len(self.dormant) > DORMANT_LIMIT:
                        self.dormant.popitem(last=False)
                continue
            kept.append((series, value))
        return kept

    def series(self) -> Iterable[Series]:
        """The live series (a copy)."""
        return list(self.by_labels.values())
