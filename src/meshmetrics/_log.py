"""meshmetrics' one logger, and the rate limit every repeated warning goes through.

A library logs through ``structlog.get_logger`` and never configures logging
for the application. Warnings that can repeat per measurement or per export
are let through at most once per interval per key, with how many were
suppressed since the last one.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable

import structlog

LOG_INTERVAL_S = 60.0
logger = structlog.get_logger("meshmetrics")
_instances: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


class RateLimitedLog:
    """Log an event at most once per interval per key."""

    def __init__(
        self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Let one event per key through every ``interval_s`` seconds."""
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        _instances.add(self)

    def allow(self, key: Hashable) -> int | None:
        """None if ``key`` was logged within the interval; else how many were suppressed since."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def warning(self, key: Hashable, event: str, **fields: object) -> None:
        """Log ``event`` with ``fields`` unless ``key`` was logged within the interval."""
        suppressed = self.allow(key)
        if suppressed is not None:
            logger.warning(event, suppressed_since_last=suppressed, **fields)


def _reset_locks_in_child() -> None:
    """A forked child may inherit a lock held by a parent thread: give every limiter a fresh one."""
    for instance in list(_instances):
        instance._lock = threading.Lock()  # noqa: SLF001 - this module's own class


os.register_at_fork(after_in_child=_reset_locks_in_child)
