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
_STATE_TIME = _M[semconv.METRIC_MESH_CIRCUIT_BREAKER_STATE_TIME]
STATES = semconv.ATTRIBUTES[semconv.ATTR_MESH_CIRCUIT_BREAKER_STATE].allowed_values
_CLOSED = semconv.MeshCircuitBreakerStateValues.CLOSED
_TRIPPED = frozenset(
    {semconv.MeshCircuitBreakerStateValues.OPEN, semconv.MeshCircuitBreakerStateValues.FORCED_OPEN}
)


def _known_state(state: object) -> str | None:
    """The breaker state ``state`` names (enum members and any case accepted), or None."""
    name = _facade.state_name(state)
    return name if type(name) is str and name in STATES else None


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
        previous = _facade.state_name(previous_state)
        current = _facade.state_name(state)
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

    def record_state_time(self, service: str, state: str, seconds: float) -> None:
        """Add ``seconds`` spent in ``state`` (``mesh.circuit_breaker.state.time``)."""
        self._add_seconds(_STATE_TIME, seconds, (service, _facade.state_name(state)))

    def tracker(
        self,
        service: str,
        initial_state: str = _CLOSED,
        clock: Callable[[], float] = time.monotonic,
    ) -> CircuitBreakerTracker:
        """A tracker for one breaker: feed it states, it derives everything else."""
        return CircuitBreakerTracker(self, service, initial_state, clock)


class CircuitBreakerTracker:
    """Follows one breaker's state and records transitions, state, time in state and recovery.

    Recovery is timed from the first trip (closed -> open) to the next close,
    however many open <-> half_open round trips happen in between.

    Time in state (``mesh.circuit_breaker.state.time``) is added at every
    transition (to the state left), on :meth:`flush`, and at most once per
    ``FLUSH_INTERVAL_S`` on :meth:`record_call`, so a breaker that keeps seeing
    calls reports its current state's time within a second. A breaker open for
    200 ms between two scrapes is invisible to the one-hot gauge, not to this
    counter.
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
        known = _known_state(initial_state)
        self._state = known or _CLOSED
        self._accounted = clock()  # time in the current state is recorded up to here
        self._opened_at: float | None = clock() if self._state in _TRIPPED else None
        metrics.set_state(service, known or initial_state)  # an unknown state is rejected there

    @property
    def state(self) -> str:
        """The current state."""
        return self._state

    def transition(self, state: str) -> None:
        """The breaker moved to ``state``; a move to the same state is ignored."""
        new = _known_state(state)
        if new is None:  # not a breaker state: rejected (counted, or raised in strict mode)
            self._metrics.record_state_change(self._service, self._state, state)
            return
        with self._lock:
            previous = self._state
            if new == previous:
                return
            now = self._clock()
            spent, self._accounted = now - self._accounted, now
            self._state = new
            recovered = None
            if new in _TRIPPED and self._opened_at is None:
                self._opened_at = now
            elif new == _CLOSED and self._opened_at is not None:
                recovered, self._opened_at = now - self._opened_at, None
        self._metrics.record_state_time(self._service, previous, spent)
        self._metrics.record_state_change(self._service, previous, new)
        if recovered is not None:
            self._metrics.record_recovery(self._service, recovered)

    def record_call(self, outcome: str) -> None:
        """Count a call by outcome (success, failure, rejected, ignored)."""
        self._metrics.record_call(self._service, outcome)
        if self._clock() - self._accounted >= _facade.FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Add the time spent in the current state since it was last added.

        Call it before a collection (or periodically) when the breaker sees no
        calls, for the counter to include the current state's time up to now.
        """
        with self._lock:
            now = self._clock()
            spent, self._accounted = now - self._accounted, now
            state = self._state
        self._metrics.record_state_time(self._service, state, spent)

    def set_failure_rate(self, rate: float) -> None:
        """Set the breaker's current failure ratio."""
        self._metrics.set_failure_rate(self._service, rate)
