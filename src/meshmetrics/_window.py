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
