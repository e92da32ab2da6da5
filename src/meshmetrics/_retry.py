"""``RetryMetrics`` and a tracker that derives a call's outcome from its attempts."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from meshmetrics import _facade, semconv
from meshmetrics._definitions import OTHER

_M = semconv.METRICS
_ATTEMPTS = _M[semconv.METRIC_MESH_RETRY_ATTEMPTS]
_CALLS = _M[semconv.METRIC_MESH_RETRY_CALLS]
_CALL_ATTEMPTS = _M[semconv.METRIC_MESH_RETRY_CALL_ATTEMPTS]
_DELAY = _M[semconv.METRIC_MESH_RETRY_DELAY]
_DURATION = _M[semconv.METRIC_MESH_RETRY_DURATION]
_ERRORS = _M[semconv.METRIC_MESH_RETRY_ERRORS]
_EXHAUSTED = _M[semconv.METRIC_MESH_RETRY_EXHAUSTED]
_BUDGET = _M[semconv.METRIC_MESH_RETRY_BUDGET_REMAINING]
_MAX_ATTEMPT_LABEL = 10
_ATTEMPT_LABELS = {n: str(n) for n in range(1, _MAX_ATTEMPT_LABEL + 1)}


def retry_outcome(succeeded: bool, attempts: int) -> str:
    """The ``mesh.retry.outcome`` of a call that made ``attempts`` attempts."""
    if succeeded:
        return "successful_without_retry" if attempts <= 1 else "successful_with_retry"
    return "failed_without_retry" if attempts <= 1 else "failed_with_retry"


class RetryMetrics(_facade.Facade):
    """Metrics of calls made under a retry policy.

    Example::

        retries = RetryMetrics()
        retries.record_attempt(service="api", operation="get_user", attempt=1)

    or let a tracker derive everything::

        with retries.track_call("api", "get_user") as call:
            ...  # call.attempt(), call.failed(err), call.backoff(0.2), ...
    """

    __slots__ = ()

    def record_attempt(self, service: str, operation: str, attempt: int) -> None:
        """Count attempt number ``attempt`` (1 = first try) of a call; above 10 becomes ``_OTHER``."""
        label = _ATTEMPT_LABELS.get(attempt) if type(attempt) is int else None  # the common case, no call
        if label is None:
            if self._check(_ATTEMPTS, _facade.attempts, "attempt", attempt) is None:
                return
            label = OTHER  # a valid attempt above the last labelled ordinal
        self._add(_ATTEMPTS, 1, (service, operation, label))

    def record_error(self, service: str, operation: str, error: object) -> None:
        """Count one failed attempt by ``error.type`` (``mesh.retry.errors``)."""
        # a non-empty string is already an error class: no call on the common path
        kind = error if type(error) is str and error else _facade.failure_type(error)
        self._add(_ERRORS, 1, (service, operation, kind))

    def record_delay(self, service: str, operation: str, delay: float) -> None:
        """Record the backoff, in seconds, slept before a retry."""
        self._measure(_DELAY, _facade.duration, "delay", delay, (service, operation))

    def record_call(
        self, service: str, operation: str, *, succeeded: bool, attempts: int, duration: float
    ) -> None:
        """Record a finished logical call: its outcome, attempts per call and total duration."""
        checked = self._check(_CALLS, _facade.attempts, "attempts", attempts)
        if checked is None:
            return
        verdict = _facade.outcome(succeeded)  # a value whose truth raises is rejected, not raised
        outcome = retry_outcome(verdict == "success", checked) if type(verdict) is str else verdict
        self._add(_CALLS, 1, (service, operation, outcome))
        self._measure(_CALL_ATTEMPTS, _facade.attempts, "attempts", checked, (service, operation))
        self._measure(_DURATION, _facade.duration, "duration", duration, (service, operation, outcome))

    def record_exhausted(self, service: str, operation: str, reason: str) -> None:
        """Count a call that stopped retrying while failing.

        ``reason``: max_attempts, budget, deadline or circuit_open.
        """
        self._add(_EXHAUSTED, 1, (service, operation, reason))

    def set_budget_remaining(self, service: str, retries: int) -> None:
        """Set how many retries the retry budget of ``service`` allows now (``mesh.retry.budget.remaining``).

        Report it from your budget (Envoy's ``remaining_retries``, a Linkerd-style
        ratio budget); when it refuses a retry, end the call with
        ``give_up("budget")`` or ``record_exhausted(..., "budget")``.
        """
        self._measure(_BUDGET, _facade.count, "retries", retries, (service,))

    def track_call(
        self, service: str, operation: str, clock: Callable[[], float] = time.perf_counter
    ) -> RetryCallTracker:
        """A tracker for one logical call; also a context manager that finishes it."""
        return RetryCallTracker(self, service, operation, clock)


class RetryCallTracker:
    """Follows the attempts of one logical call and records its outcome once.

    Call :meth:`attempt` before each try, :meth:`failed` after a failed try,
    :meth:`backoff` before sleeping, and :meth:`succeed` or :meth:`give_up` at
    the end. Used as a context manager it finishes the call itself: success
    when the block ends normally, failure when it raises.
    """

    def __init__(
        self, metrics: RetryMetrics, service: str, operation: str, clock: Callable[[], float]
    ) -> None:
        """Start timing a call."""
        self._metrics = metrics
        self._service = service
        self._operation = operation
        self._clock = clock
        self._started = clock()
        self.attempts = 0
        self.finished = False

    def attempt(self) -> int:
        """Start the next attempt; returns its ordinal (1 for the first try)."""
        self.attempts += 1
        self._metrics.record_attempt(self._service, self._operation, self.attempts)
        return self.attempts

    def failed(self, error: object) -> None:
        """The current attempt failed with ``error``."""
        self._metrics.record_error(self._service, self._operation, error)

    def backoff(self, delay: float) -> None:
        """About to sleep ``delay`` seconds before retrying."""
        self._metrics.record_delay(self._service, self._operation, delay)

    def succeed(self) -> None:
        """The call succeeded; records its outcome (once)."""
        self._finish(succeeded=True)

    def give_up(self, reason: str | None = "max_attempts") -> None:
        """The call failed for good; ``reason`` (if any) counts in ``mesh.retry.exhausted``."""
        if not self.finished and reason is not None:
            self._metrics.record_exhausted(self._service, self._operation, reason)
        self._finish(succeeded=False)

    def _finish(self, *, succeeded: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self._metrics.record_call(
            self._service,
            self._operation,
            succeeded=succeeded,
            attempts=max(self.attempts, 1),
            duration=self._clock() - self._started,
        )

    def __enter__(self) -> RetryCallTracker:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Finish the call: success unless the block raised."""
        if exc is None:
            self.succeed()
        else:
            self._finish(succeeded=False)
