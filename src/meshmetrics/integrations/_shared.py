"""What the integrations share: never raising into a library, open-breaker errors, a breaker bridge."""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from meshmetrics._breaker import CircuitBreakerMetrics, CircuitBreakerTracker
from meshmetrics._log import RateLimitedLog

_F = TypeVar("_F", bound=Callable[..., Any])
_log = RateLimitedLog()

DEFAULT_SERVICE = "unknown"
FAILURE_RATE_WINDOW = 100
# The exceptions breaker libraries raise when an open breaker refuses a call,
# by (module prefix, class name): matched on the class hierarchy so that
# meshmetrics imports none of them.
CIRCUIT_OPEN_ERRORS = frozenset(
    {
        ("pybreaker", "CircuitBreakerError"),  # pybreaker, also when the failing call trips it
        ("purgatory", "OpenedState"),  # purgatory, sync and async
        ("aiobreaker", "CircuitBreakerError"),
        ("circuitbreaker", "CircuitBreakerError"),
    }
)


def never_raises(hook: _F) -> _F:
    """Wrap a library callback so that nothing it raises reaches the library or the user."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except Exception as error:
            name = getattr(hook, "__qualname__", "hook")
            _log.warning(name, "meshmetrics_integration_hook_failed", hook=name, error=repr(error))
            return None

    return guarded  # type: ignore[return-value]


def is_circuit_open(error: object) -> bool:
    """Whether ``error`` means an open circuit breaker refused the call.

    Looks through tenacity's ``RetryError`` (its last attempt's exception) and
    the ``__cause__`` chain, so a breaker error wrapped by a client library counts.
    """
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        for kind in type(error).__mro__:
            root = kind.__module__.split(".", 1)[0]
            if (root, kind.__name__) in CIRCUIT_OPEN_ERRORS:
                return True
        last_attempt = getattr(error, "last_attempt", None)  # tenacity.RetryError
        if last_attempt is not None and getattr(last_attempt, "failed", False):
            error = last_attempt.exception()
        else:
            error = error.__cause__
    return False


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
