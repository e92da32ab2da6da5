"""``CircuitBreakerMetrics`` and a tracker that derives transitions and recovery time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from meshmetrics import _facade, semconv

_M = semconv.METRICS
_STATE = _M[semconv.METRIC_MESH_CIRCUIT_BREAKER_STATE]
_TRANSITIONS = _M[semconv.METRIC_MESH_CIRCUIT_BREAKER_TRANSITIONS]
_CALLS = _M[semconv.METRIC_MESH_CIRCUIT_BREAKER_CALLS]
_FAILURE_RATE = _M[semconv.METRIC_MESH_CIRCUIT_BREAKER_FAILURE_RATE]
_RECOVERY = _M[semconv.METRIC_MESH_CIRCUIT_BREAKER_RECOVERY_DURATION]
STATES = semconv.ATTRIBUTES[semconv.ATTR_MESH_CIRCUIT_BREAKER_STATE].allowed_values
_CLOSED = semconv.MeshCircuitBreakerStateValues.CLOSED
_TRIPPED = frozenset(
    {semconv.MeshCircuitBreakerStateValues.OPEN, semconv.MeshCircuitBreakerStateValues.FORCED_OPEN}
)


class CircuitBreakerMetrics(_facade.Facade):
    """Metrics of circuit breakers, one breaker per ``service`` (the upstream it guards).

    Example::

        breakers = CircuitBreakerMetrics()
        breakers.record_state_change("api", previous_state="closed", state="open")
        breakers.record_rejected("api")
    """

    __slots__ = ()

    def set_state(self, service: str, state: str) -> None:
        """Set the one-hot state gauge without counting a transition (e.g. at start-up)."""
        self._one_hot(
            _STATE,
            semconv.ATTR_MESH_CIRCUIT_BREAKER_STATE,
            state,
            STATES,
            lambda name: (service, name),
        )

    def record_state_change(self, service: str, previous_state: str, state: str) -> None:
        """Count a transition and move the one-hot state gauge to ``state``."""
        previous = _facade._state_name(previous_state)  # noqa: SLF001 - shared normaliser
        current = _facade._state_name(state)  # noqa: SLF001
        self._add(_TRANSITIONS, 1, (service, previous, current))
        self.set_state(service, state)

    def record_call(self, service: str, outcome: str) -> None:
        """Count a call by what the breaker did: success, failure, rejected or ignored."""
        self._add(_CALLS, 1, (service, outcome))

    def record_rejected(self, service: str) -> None:
        """Count a call the open breaker refused."""
        self.record_call(service, "rejected")

    def set_failure_rate(self, service: str, rate: float) -> None:
        """Set the failure ratio over the breaker's sliding window, within [0, 1]."""
        self._measure(_FAILURE_RATE, _facade.ratio, "rate", rate, (service,))

    def record_recovery(self, service: str, duration: float) -> None:
        """Record the time, in seconds, from the breaker opening to closing again."""
        self._measure(_RECOVERY, _facade.duration, "duration", duration, (service,))

    def tracker(
        self,
        service: str,
        initial_state: str = _CLOSED,
        clock: Callable[[], float] = time.monotonic,
    ) -> CircuitBreakerTracker:
        """A tracker for one breaker: feed it states, it derives everything else."""
        return CircuitBreakerTracker(self, service, initial_state, clock)


class CircuitBreakerTracker:
    """Follows one breaker's state and records transitions, state and recovery duration.

    Recovery is timed from the first trip (closed -> open) to the next close,
    however many open <-> half_open round trips happen in between.
    """

    def __init__(
        self,
        metrics: CircuitBreakerMetrics,
        service: str,
        initial_state: str,
        clock: Callable[[], float],
    ) -> None:
        """Start in ``initial_state`` and export it."""
        self._metrics = metrics
        self._service = service
        self._clock = clock
        self._lock = threading.Lock()
        self._state = str(_facade._state_name(initial_state))  # noqa: SLF001
        self._entered = clock()
        self._opened_at: float | None = clock() if self._state in _TRIPPED else None
        metrics.set_state(service, self._state)

    @property
    def state(self) -> str:
        """The current state."""
        return self._state

    def time_in_state(self) -> float:
        """Seconds since the breaker entered its current state."""
        return self._clock() - self._entered

    def transition(self, state: str) -> None:
        """The breaker moved to ``state``; a move to the same state is ignored."""
        new = str(_facade._state_name(state))  # noqa: SLF001
        with self._lock:
            previous = self._state
            if new == previous:
                return
            now = self._clock()
            self._state, self._entered = new, now
            recovered = None
            if new in _TRIPPED and self._opened_at is None:
                self._opened_at = now
            elif new == _CLOSED and self._opened_at is not None:
                recovered, self._opened_at = now - self._opened_at, None
        self._metrics.record_state_change(self._service, previous, new)
        if recovered is not None:
            self._metrics.record_recovery(self._service, recovered)

    def record_call(self, outcome: str) -> None:
        """Count a call by outcome (success, failure, rejected, ignored)."""
        self._metrics.record_call(self._service, outcome)

    def set_failure_rate(self, rate: float) -> None:
        """Set the breaker's current failure ratio."""
        self._metrics.set_failure_rate(self._service, rate)
