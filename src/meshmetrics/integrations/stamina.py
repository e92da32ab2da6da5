"""Metrics for `stamina <https://stamina.hynek.me>`_ retries.

Two ways in:

- :func:`instrument` registers a retry hook through stamina's own
  instrumentation API (``stamina.instrumentation.set_on_retry_hooks``), next to
  the hooks already set. Every ``@stamina.retry`` in the process then records
  ``mesh.retry.attempts`` (2, 3, ...: stamina calls hooks only when it schedules
  a retry), ``mesh.retry.errors`` and ``mesh.retry.delay``.
- :func:`retry` is ``stamina.retry`` that also records the call's outcome
  (``mesh.retry.calls``, attempts per call, duration, first attempts and
  ``mesh.retry.exhausted``), which no stamina hook reports.

A call that ends on an error raised by an open circuit breaker (pybreaker's
``CircuitBreakerError``, purgatory's ``OpenedState``) counts in
``mesh.retry.exhausted`` with ``exhaust_reason="circuit_open"``, whether
stamina retried that error or not.

stamina's built-in Prometheus counter ``stamina_retries_total`` labels every
retry number, callable name and error type; meshmetrics folds attempts above 10
into ``_OTHER`` and bounds ``mesh.operation`` and ``error.type``. Keep both, or
drop stamina's with ``set_on_retry_hooks([])`` before :func:`instrument`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import stamina
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from meshmetrics._retry import RetryCallTracker, RetryMetrics
from meshmetrics.integrations._shared import (
    DEFAULT_SERVICE,
    is_circuit_open,
    never_raises,
    operation_name,
)

__all__ = ["MeshMetricsRetryHook", "instrument", "retry"]

_F = TypeVar("_F", bound=Callable[..., Any])
_current: contextvars.ContextVar[RetryCallTracker | None] = contextvars.ContextVar(
    "meshmetrics_stamina_call", default=None
)


class MeshMetricsRetryHook:
    """A stamina ``RetryHook`` recording each scheduled retry."""

    def __init__(self, service: str = DEFAULT_SERVICE, metrics: RetryMetrics | None = None) -> None:
        """Record retries of any stamina-retried callable as calls to ``service``."""
        self.service = service
        self.metrics = metrics or RetryMetrics()

    def _on_retry(self, details: RetryDetails) -> None:
        """Called by stamina when a retry is scheduled."""
        tracker = _current.get()
        if tracker is not None:  # inside meshmetrics' retry(): it counts attempts and errors
            tracker.backoff(details.wait_for)
            return
        operation = details.name
        self.metrics.record_attempt(self.service, operation, details.retry_num + 1)
        self.metrics.record_error(self.service, operation, details.caused_by)
        self.metrics.record_delay(self.service, operation, details.wait_for)

    __call__ = never_raises(_on_retry)


def instrument(service: str = DEFAULT_SERVICE, metrics: RetryMetrics | None = None) -> MeshMetricsRetryHook:
    """Add a meshmetrics hook to stamina's retry hooks (idempotent per service)."""
    hooks = [h for h in get_on_retry_hooks() if not isinstance(h, MeshMetricsRetryHook)]
    hook = MeshMetricsRetryHook(service, metrics)
    set_on_retry_hooks([*hooks, hook])
    return hook


def _seconds(value: float | dt.timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, dt.timedelta) else value


def _counted(function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the retried function: each invocation is an attempt, each exception a failed one."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def counted_async(*args: Any, **kwargs: Any) -> Any:
            tracker = _current.get()
            if tracker is not None:
                never_raises(tracker.attempt)()
            try:
                return await function(*args, **kwargs)
            except Exception as error:
                if tracker is not None:
                    never_raises(tracker.failed)(error)
                raise

        return counted_async

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        tracker = _current.get()
        if tracker is not None:
            never_raises(tracker.attempt)()
        try:
            return function(*args, **kwargs)
        except Exception as error:
            if tracker is not None:
                never_raises(tracker.failed)(error)
            raise

    return counted


class _Outcome:
    """Starts a call tracker around the retried call and finishes it with the outcome."""

    def __init__(
        self,
        metrics: RetryMetrics,
        service: str,
        operation: str,
        attempts: int | None,
        deadline: float | None,
    ) -> None:
        self._metrics, self._service, self._operation = metrics, service, operation
        self._attempts, self._deadline = attempts, deadline

    def begin(self) -> tuple[RetryCallTracker, contextvars.Token[Any], float]:
        tracker = self._metrics.track_call(self._service, self._operation, clock=time.perf_counter)
        return tracker, _current.set(tracker), time.perf_counter()

    def failed(self, tracker: RetryCallTracker, started: float, error: BaseException) -> None:
        reason: str | None = None  # an error stamina does not retry is not an exhaustion
        if is_circuit_open(error):
            reason = "circuit_open"
        elif self._attempts is not None and tracker.attempts >= self._attempts:
            reason = "max_attempts"
        elif self._deadline is not None and time.perf_counter() - started >= self._deadline:
            reason = "deadline"
        never_raises(tracker.give_up)(reason)


def retry(
    *,
    on: Any,
    service: str = DEFAULT_SERVICE,
    operation: str | None = None,
    metrics: RetryMetrics | None = None,
    attempts: int | None = 10,
    timeout: float | dt.timedelta | None = 45.0,
    **stamina_kwargs: Any,
) -> Callable[[_F], _F]:
    """``stamina.retry`` with the call's outcome recorded; installs the hook if needed."""
    retry_metrics = metrics or RetryMetrics()
    if not any(isinstance(h, MeshMetricsRetryHook) for h in get_on_retry_hooks()):
        instrument(service, retry_metrics)

    def decorate(function: _F) -> _F:
        outcome = _Outcome(
            retry_metrics, service, operation or operation_name(function), attempts, _seconds(timeout)
        )
        retried = stamina.retry(on=on, attempts=attempts, timeout=timeout, **stamina_kwargs)(
            _counted(function)
        )

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def outer_async(*args: Any, **kwargs: Any) -> Any:
                tracker, token, started = outcome.begin()
                try:
                    result = await retried(*args, **kwargs)
                except BaseException as error:
                    outcome.failed(tracker, started, error)
                    raise
                finally:
                    _current.reset(token)
                never_raises(tracker.succeed)()
                return result

            return cast("_F", outer_async)

        @functools.wraps(function)
        def outer(*args: Any, **kwargs: Any) -> Any:
            tracker, token, started = outcome.begin()
            try:
                result = retried(*args, **kwargs)
            except BaseException as error:
                outcome.failed(tracker, started, error)
                raise
            finally:
                _current.reset(token)
            never_raises(tracker.succeed)()
            return result

        return cast("_F", outer)

    return decorate
