"""The load-imbalance gauge: request counts per instance over a sliding window, from cumulative totals."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

DEFAULT_WINDOW_S = 60.0


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
