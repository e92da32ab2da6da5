"""Metrics for `tenacity <https://tenacity.readthedocs.io>`_ retries.

One line::

    from meshmetrics.integrations.tenacity import retry

    @retry(service="users", stop=stop_after_attempt(3), wait=wait_exponential())
    def get_user(user_id): ...

``retry`` takes tenacity's own keyword arguments and works on sync and async
functions. To instrument an existing ``Retrying``/``AsyncRetrying``, use
:func:`instrument_retrying` and call the result as you would the original.

tenacity has no hook for a call that succeeds, so the call outcome
(``mesh.retry.outcome``, attempts per call, duration) is recorded by the
wrapper; tenacity's hooks record attempts, errors and backoff. The iterator
form (``for attempt in retrying:``) gets the per-attempt metrics only.

A call whose last attempt was refused by an open circuit breaker (pybreaker's
``CircuitBreakerError``, purgatory's ``OpenedState``, also inside a
``RetryError``) counts in ``mesh.retry.exhausted`` with
``exhaust_reason="circuit_open"``, whether tenacity retried that error or not.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import tenacity

from meshmetrics._retry import RetryCallTracker, RetryMetrics
from meshmetrics.integrations._shared import (
    DEFAULT_SERVICE,
    is_circuit_open,
    never_raises,
    operation_name,
)

__all__ = ["InstrumentedRetrying", "instrument_retrying", "retry"]

_F = TypeVar("_F", bound=Callable[..., Any])
_current: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar(
    "meshmetrics_tenacity_call", default=None
)


class _CallState:
    def __init__(self, tracker: RetryCallTracker) -> None:
        self.tracker = tracker
        self.retry_decided = False
        self.exhausted = False
        self.standalone = False
        self.last_error: BaseException | None = None


def _exhaust_reason(stop: object, attempt_number: int) -> str:
    """Which stop condition ended the call: the attempt limit or a deadline."""
    parts = [stop, *getattr(stop, "stops", ())]
    for part in parts:
        limit = getattr(part, "max_attempt_number", None)
        if limit is not None and attempt_number >= limit:
            return "max_attempts"
    if any(hasattr(part, "max_delay") for part in parts):
        return "deadline"
    return "max_attempts"


def _chain(ours: Callable[[Any], Any], theirs: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if theirs is None:
        return ours

    def both(retry_state: Any) -> Any:
        ours(retry_state)
        return theirs(retry_state)

    return both


class InstrumentedRetrying:
    """A ``Retrying``/``AsyncRetrying`` whose calls record meshmetrics retry metrics."""

    def __init__(
        self,
        retrying: tenacity.BaseRetrying,
        *,
        service: str,
        operation: str | None,
        metrics: RetryMetrics,
    ) -> None:
        """Copy ``retrying`` with meshmetrics hooks chained before the existing ones."""
        self._service = service
        self._operation = operation
        self._metrics = metrics
        self._retrying = retrying.copy(
            before=_chain(never_raises(self._before), retrying.before),
            after=_chain(never_raises(self._after), retrying.after),
            before_sleep=_chain(never_raises(self._before_sleep), retrying.before_sleep),
            retry_error_callback=_wrap_error_callback(retrying.retry_error_callback),
        )

    def __getattr__(self, name: str) -> Any:
        """Everything else is the copied tenacity object (iteration, statistics, ...)."""
        return getattr(self._retrying, name)

    def _state(self, retry_state: Any) -> _CallState:
        state = _current.get()
        if state is None or (state.standalone and retry_state.attempt_number == 1):
            # The iterator form, or a call not made through this wrapper: per-attempt
            # metrics only, since nothing tells us how the call ends.
            operation = self._operation or operation_name(retry_state.fn)
            state = _CallState(self._metrics.track_call(self._service, operation))
            state.standalone = True
            state.tracker.finished = True
            _current.set(state)
        return state

    def _before(self, retry_state: Any) -> None:
        state = self._state(retry_state)
        state.retry_decided = False
        state.tracker.attempt()

    def _after(self, retry_state: Any) -> None:
        state = self._state(retry_state)
        state.retry_decided = True
        outcome = retry_state.outcome
        state.last_error = outcome.exception() if outcome.failed else None
        state.tracker.failed(state.last_error or "retry_on_result")

    def _before_sleep(self, retry_state: Any) -> None:
        self._state(retry_state).tracker.backoff(retry_state.next_action.sleep)

    def _begin(self, function: Callable[..., Any]) -> tuple[_CallState, contextvars.Token[Any]]:
        operation = self._operation or operation_name(function)
        state = _CallState(self._metrics.track_call(self._service, operation, clock=time.perf_counter))
        return state, _current.set(state)

    def _end(self, state: _CallState, error: BaseException | None) -> None:
        tracker = state.tracker
        if error is None and not state.exhausted:
            tracker.succeed()
            return
        if is_circuit_open(error if error is not None else state.last_error):
            if not state.retry_decided:
                tracker.failed(error)  # not retried: tenacity's `after` never saw it
            tracker.give_up("circuit_open")
            return
        if error is not None and not state.retry_decided:
            tracker.failed(error)  # not retried: tenacity's `after` never saw it
            tracker.give_up(None)
            return
        tracker.give_up(_exhaust_reason(self._retrying.stop, max(tracker.attempts, 1)))

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``function`` under the retry policy, recording the call's outcome."""
        if isinstance(self._retrying, tenacity.AsyncRetrying):
            return self._call_async(function, *args, **kwargs)
        state, token = self._begin(function)
        try:
            result = self._retrying(function, *args, **kwargs)
        except BaseException as error:
            never_raises(self._end)(state, error)
            raise
        finally:
            _current.reset(token)
        never_raises(self._end)(state, None)
        return result

    async def _call_async(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        state, token = self._begin(function)
        try:
            result = await self._retrying(function, *args, **kwargs)
        except BaseException as error:
            never_raises(self._end)(state, error)
            raise
        finally:
            _current.reset(token)
        never_raises(self._end)(state, None)
        return result

    def wraps(self, function: _F) -> _F:
        """Decorate ``function`` (sync or async) with this retry policy."""
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self(function, *args, **kwargs)

            return cast("_F", async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self(function, *args, **kwargs)

        return cast("_F", wrapper)


def _wrap_error_callback(callback: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if callback is None:
        return None

    def marked(retry_state: Any) -> Any:
        state = _current.get()
        if state is not None:
            state.exhausted = True
        return callback(retry_state)

    return marked


def instrument_retrying(
    retrying: tenacity.BaseRetrying,
    *,
    service: str = DEFAULT_SERVICE,
    operation: str | None = None,
    metrics: RetryMetrics | None = None,
) -> InstrumentedRetrying:
    """Return ``retrying`` with meshmetrics retry metrics; call it like the original.

    ``operation`` defaults to the called function's qualified name.
    """
    return InstrumentedRetrying(
        retrying, service=service, operation=operation, metrics=metrics or RetryMetrics()
    )


def retry(
    *,
    service: str = DEFAULT_SERVICE,
    operation: str | None = None,
    metrics: RetryMetrics | None = None,
    **tenacity_kwargs: Any,
) -> Callable[[_F], _F]:
    """Like ``tenacity.retry(...)``, recording meshmetrics retry metrics for every call."""

    def decorate(function: _F) -> _F:
        base: tenacity.BaseRetrying = (
            tenacity.AsyncRetrying(**tenacity_kwargs)
            if inspect.iscoroutinefunction(function)
            else tenacity.Retrying(**tenacity_kwargs)
        )
        return instrument_retrying(base, service=service, operation=operation, metrics=metrics).wraps(
            function
        )

    return decorate
