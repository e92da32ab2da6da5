"""What the integrations share: never raising into a library, and a breaker bridge."""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from meshmetrics._breaker import CircuitBreakerMetrics, CircuitBreakerTracker

_logger = structlog.get_logger("meshmetrics")
_F = TypeVar("_F", bound=Callable[..., Any])
_LOG_INTERVAL_S = 60.0
_last_logged: dict[str, float] = {}

DEFAULT_SERVICE = "unknown"
FAILURE_RATE_WINDOW = 100


def never_raises(hook: _F) -> _F:
    """Wrap a library callback so that nothing it raises reaches the library or the user."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except Exception as error:
            now = time.monotonic()
            name = getattr(hook, "__qualname__", "hook")
            if now - _last_logged.get(name, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
                _last_logged[name] = now
                _logger.warning("meshmetrics_integration_hook_failed", hook=name, error=repr(error))
            return None

    return guarded  # type: ignore[return-value]


def operation_name(function: object) -> str:
    """``mesh.operation`` for a wrapped callable: its qualified name."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    return str(name) if name else DEFAULT_SERVICE


class BreakerBridge:
    """Maps a library's breaker events onto meshmetrics' circuit-breaker metrics.

    The failure rate is computed here, over the last ``window`` permitted calls,
    because libraries count consecutive failures rather than a ratio.
    """

    def __init__(
        self,
        service: str,
        initial_state: str,
        metrics: CircuitBreakerMetrics | None = None,
        window: int = FAILURE_RATE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start following one breaker in ``initial_state``."""
        self.service = service
        self.tracker: CircuitBreakerTracker = (metrics or CircuitBreakerMetrics()).tracker(
            service, initial_state, clock
        )
        self._results: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def transition(self, state: str) -> None:
        """The breaker moved to ``state`` (already in meshmetrics' names)."""
        self.tracker.transition(state)

    def outcome(self, outcome: str) -> None:
        """Count a call by outcome; successes and failures feed the failure rate."""
        self.tracker.record_call(outcome)
        if outcome in ("success", "failure"):
            with self._lock:
                self._results.append(outcome == "failure")
                rate = sum(self._results) / len(self._results)
            self.tracker.set_failure_rate(rate)
