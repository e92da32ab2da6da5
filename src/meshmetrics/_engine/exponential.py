"""Base-2 exponential bucketing, as the OpenTelemetry specification and the Python SDK define it.

A value ``v > 0`` falls in bucket ``i`` at scale ``s`` when
``2**(i / 2**s) < v <= 2**((i + 1) / 2**s)``. Each recording thread keeps a
:data:`Cell`: its scale (starting at :data:`MAX_SCALE`), the scale factor, the
lowest and highest index seen, the count of zeros and a dict of counts by
index. When a value would make the index range :data:`MAX_SIZE` buckets or
wider, the cell is downscaled (indexes halved, buckets merged) exactly as the
SDK's ``ExponentialBucketHistogramAggregation`` does, and the value's index is
computed again at the new scale, so the scale and buckets equal the SDK's for
the same values. The hot path (in ``series.py``) computes the index inline
and calls :func:`add_bucket` only the first time a bucket is used.

Collections merge the threads' cells into a :class:`Snapshot` (at the lowest
scale, downscaled further if the merged range needs it); a delta is the
difference of two snapshots, at the later (lower or equal) scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_SIZE = 160
"""The most buckets a histogram holds (the specification's default)."""
MAX_SCALE = 20
"""The scale a histogram starts at (the specification's default)."""
_MIN_SCALE = -10
_MIN_NORMAL = 2.2250738585072014e-308  # sys.float_info.min: below it the SDK clamps the index
_MIN_NORMAL_EXPONENT = -1022
_MAX_NORMAL_EXPONENT = 1023
_POWER_OF_TWO = 0.5  # frexp's mantissa of an exact power of two

# A cell: a list so the hot path indexes it without attribute lookups. STATE holds
# (scale, counts) as one object, replaced whole on a downscale, so a collection
# never pairs a new scale with old counts. MASK is 2**scale - 1 (0 at scale <= 0).
SCALE, FACTOR, LOW, HIGH, ZERO, COUNTS, STATE, MASK = range(8)
_EMPTY_LOW, _EMPTY_HIGH = 1 << 62, -(1 << 62)  # an empty range: every index is outside it

Cell = list[Any]
"""``[scale, factor, low, high, zero_count, {index: count}, (scale, counts), mask]`` of one thread."""


def factor(scale: int) -> float:
    """The multiplier of ``log(value)`` that gives the index at ``scale`` (the SDK's expression)."""
    return math.ldexp(1 / math.log(2), scale)


def new_cell() -> Cell:
    """An empty cell at the maximum scale."""
    counts: dict[int, int] = {}
    return [
        MAX_SCALE,
        factor(MAX_SCALE),
        _EMPTY_LOW,
        _EMPTY_HIGH,
        0,
        counts,
        (MAX_SCALE, counts),
        _mask(MAX_SCALE),
    ]


def _mask(scale: int) -> int:
    return (1 << scale) - 1 if scale > 0 else 0


def index_of(value: float, scale: int) -> int:
    """The index of ``value > 0`` at ``scale``, bit for bit the SDK's ``map_to_index``."""
    mantissa, exponent = math.frexp(value)
    if scale > 0:
        if value <= _MIN_NORMAL:
            return (_MIN_NORMAL_EXPONENT << scale) - 1
        if mantissa == _POWER_OF_TWO:  # the upper boundary of its bucket
            return ((exponent - 1) << scale) - 1
        top = ((_MAX_NORMAL_EXPONENT + 1) << scale) - 1
        return min(math.floor(math.log(value) * factor(scale)), top)
    if value < _MIN_NORMAL:
        index = _MIN_NORMAL_EXPONENT >> -scale
        return index - 1 if -scale < 2 else index  # noqa: PLR2004 - the SDK's boundary rule
    return (exponent - 1 - (mantissa == _POWER_OF_TWO)) >> -scale


def scale_change(low: int, high: int) -> int:
    """How many times indexes must be halved for ``low..high`` to fit in :data:`MAX_SIZE` buckets."""
    change = 0
    while high - low >= MAX_SIZE:
        high >>= 1
        low >>= 1
        change += 1
    return change


def _shifted(counts: dict[int, int], change: int) -> dict[int, int]:
    if change == 0:
        return counts
    merged: dict[int, int] = {}
    for index, count in counts.items():
        key = index >> change
        merged[key] = merged.get(key, 0) + count
    return merged


def widen(cell: Cell, value: float, index: int) -> int:
    """Make room in ``cell`` for ``value`` (whose index at the cell's scale is ``index``).

    Downscales when the range would span :data:`MAX_SIZE` buckets or more,
    then returns the value's index at the (possibly new) scale. Called only by
    the thread that owns the cell.
    """
    low, high = min(cell[LOW], index), max(cell[HIGH], index)
    change = scale_change(low, high)
    if change:
        scale = max(cell[SCALE] - change, _MIN_SCALE)
        change = cell[SCALE] - scale
        counts = _shifted(cell[COUNTS], change)
        cell[COUNTS], cell[SCALE], cell[FACTOR], cell[MASK] = counts, scale, factor(scale), _mask(scale)
        cell[STATE] = (scale, counts)
        index = index_of(value, scale)
        low, high = min(cell[LOW] >> change, index), max(cell[HIGH] >> change, index)
    cell[LOW], cell[HIGH] = low, high
    return index


def add_bucket(cell: Cell, value: float, index: int) -> None:
    """Count ``value`` (of ``index`` at the cell's scale) in a bucket not used yet, widening if needed."""
    if not cell[LOW] <= index <= cell[HIGH]:
        index = widen(cell, value, index)
    counts = cell[COUNTS]
    counts[index] = counts.get(index, 0) + 1


def record(cell: Cell, value: float) -> None:
    """Count ``value >= 0`` in ``cell`` (the hot path inlines this; tests and slow paths call it)."""
    if value == 0:
        cell[ZERO] += 1
        return
    add_bucket(cell, value, index_of(value, cell[SCALE]))


@dataclass(frozen=True)
class Snapshot:
    """Merged exponential buckets of a series: scale, zero count and counts by index (none zero)."""

    scale: int
    zero_count: int
    counts: dict[int, int]

    @property
    def count(self) -> int:
        """Every value counted: zeros and positive buckets."""
        return self.zero_count + sum(self.counts.values())

    def at_scale(self, scale: int) -> dict[int, int]:
        """The counts downscaled to ``scale`` (at most this snapshot's own scale)."""
        return _shifted(self.counts, self.scale - scale)

    def minus(self, before: Snapshot) -> Snapshot:
        """What was counted since ``before`` (an earlier snapshot of the same series)."""
        scale = min(self.scale, before.scale) if before.counts else self.scale
        now, then = self.at_scale(scale), before.at_scale(scale)
        counts = {i: c - then.get(i, 0) for i, c in now.items() if c != then.get(i, 0)}
        return Snapshot(scale, self.zero_count - before.zero_count, counts)

    def buckets(self) -> tuple[int, list[int]]:
        """The positive buckets as OTLP carries them: the first index and the counts from it."""
        if not self.counts:
            return 0, []
        low, high = min(self.counts), max(self.counts)
        return low, [self.counts.get(i, 0) for i in range(low, high + 1)]


EMPTY = Snapshot(0, 0, {})


def merge(cells: Iterable[Cell]) -> Snapshot:
    """The cells of every thread as one snapshot (downscaled until its range fits)."""
    copies = [(state[0], cell[ZERO], dict(state[1])) for cell in cells for state in (cell[STATE],)]
    zero = sum(z for _, z, _ in copies)
    filled = [(s, c) for s, _, c in copies if c]
    if not filled:
        return Snapshot(0, zero, {})  # zeros only: scale 0, as the SDK reports it
    scale = min(s for s, _ in filled)
    counts: dict[int, int] = {}
    for own_scale, own_counts in filled:
        for index, count in _shifted(own_counts, own_scale - scale).items():
            counts[index] = counts.get(index, 0) + count
    change = scale_change(min(counts), max(counts))
    return Snapshot(scale - change, zero, _shifted(counts, change))


def fold(into: Cell, cell: Cell) -> None:
    """Add a finished thread's ``cell`` to ``into`` (collections only, under the table lock)."""
    merged = merge([into, cell])
    if not merged.counts:
        into[ZERO] = merged.zero_count
        return
    into[COUNTS], into[SCALE], into[FACTOR] = merged.counts, merged.scale, factor(merged.scale)
    into[MASK] = _mask(merged.scale)
    into[STATE] = (merged.scale, merged.counts)
    into[LOW], into[HIGH] = min(merged.counts), max(merged.counts)
    into[ZERO] = merged.zero_count
