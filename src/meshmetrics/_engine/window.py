"""Sliding-window request counts per instance, for the load-imbalance gauge."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

DEFAULT_WINDOW_S = 60.0
_SLOTS = 6


class ImbalanceWindow:
    """Counts requests per (group, instance) in time slots covering ``window_s`` seconds.

    ``imbalance(group)`` is the busiest instance's share of requests divided by
    the mean share, i.e. ``max_count * instances / total``: 1.0 when every
    instance seen in the window got the same number of requests.
    """

    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create an empty window of ``window_s`` seconds split into a few slots."""
        self._slot_s = window_s / _SLOTS
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, ...], deque[tuple[int, dict[str, int]]]] = {}

    def add(self, group: tuple[str, ...], instance: str) -> None:
        """Count one request to ``instance`` within ``group``."""
        slot = int(self._clock() // self._slot_s)
        with self._lock:
            slots = self._slots.get(group)
            if slots is None:
                slots = self._slots[group] = deque()
            if not slots or slots[-1][0] != slot:
                slots.append((slot, {}))
                while slots and slots[0][0] <= slot - _SLOTS:
                    slots.popleft()
            counts = slots[-1][1]
            counts[instance] = counts.get(instance, 0) + 1

    def imbalance(self) -> dict[tuple[str, ...], float]:
        """Return the current imbalance of every group with requests in the window."""
        oldest = int(self._clock() // self._slot_s) - _SLOTS + 1
        result: dict[tuple[str, ...], float] = {}
        with self._lock:
            for group, slots in list(self._slots.items()):
                while slots and slots[0][0] < oldest:
                    slots.popleft()
                if not slots:
                    del self._slots[group]
                    continue
                totals: dict[str, int] = {}
                for _, counts in slots:
                    for instance, count in counts.items():
                        totals[instance] = totals.get(instance, 0) + count
                total = sum(totals.values())
                result[group] = max(totals.values()) * len(totals) / total
        return result


class SnapshotWindow:
    """Load imbalance from cumulative request counts sampled at each collection (the fast path).

    Nothing happens per request: the counts are those of ``mesh.lb.requests``,
    and the window is the difference between now and a sample ``window_s`` old
    (or the process start, early on).
    """

    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Keep samples covering ``window_s`` seconds."""
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, dict[tuple[str, str, str], float]]] = deque()

    def imbalance(self, counts: dict[tuple[str, str, str], float]) -> dict[tuple[str, ...], float]:
        """Imbalance per (service, strategy) from cumulative counts per (service, strategy, instance)."""
        now = self._clock()
        with self._lock:
            while len(self._samples) >= 2 and self._samples[1][0] <= now - self._window_s:  # noqa: PLR2004
                self._samples.popleft()
            old = self._samples[0] if self._samples else None
            baseline = old[1] if old is not None and old[0] <= now - self._window_s else {}
            self._samples.append((now, counts))
        per_group: dict[tuple[str, ...], list[float]] = {}
        for (service, strategy, instance), count in counts.items():
            delta = count - baseline.get((service, strategy, instance), 0.0)
            if delta > 0:
                per_group.setdefault((service, strategy), []).append(delta)
        return {group: max(deltas) * len(deltas) / sum(deltas) for group, deltas in per_group.items()}
