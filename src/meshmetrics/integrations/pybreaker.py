"""Metrics for `pybreaker <https://github.com/danielfm/pybreaker>`_ circuit breakers.

One line::

    from meshmetrics.integrations.pybreaker import instrument_breaker

    breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=5, name="payments"))

Records the one-hot ``mesh.circuit_breaker.state``, transitions, calls by
outcome, the failure rate over the last 100 permitted calls and the recovery
duration. The breaker's ``name`` is ``mesh.service`` unless ``service=`` says
otherwise.

pybreaker calls no listener when an open breaker rejects a call, and reports a
call that raised an excluded exception through ``success``. So besides a
listener, the breaker's ``call`` is wrapped (on this instance; the decorator
and ``calling()`` go through it): a ``CircuitBreakerError`` raised before the
guarded function ran counts as ``rejected``, an excluded exception as
``ignored``.
"""

from __future__ import annotations

import contextvars
import time
import types
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker

from meshmetrics._breaker import CircuitBreakerMetrics
from meshmetrics.integrations._shared import DEFAULT_SERVICE, BreakerBridge, never_raises

__all__ = ["MeshMetricsListener", "instrument_breaker", "state_name"]

_B = TypeVar("_B", bound=pybreaker.CircuitBreaker)
_STATES = {"closed": "closed", "open": "open", "half-open": "half_open", "half_open": "half_open"}


def state_name(state: object) -> str:
    """The meshmetrics name of a pybreaker state (``half-open`` -> ``half_open``)."""
    name = getattr(state, "name", state)
    return _STATES.get(str(name), str(name))


class _Call:
    def __init__(self) -> None:
        self.invoked = False
        self.outcome: str | None = None


class MeshMetricsListener(pybreaker.CircuitBreakerListener):
    """A pybreaker listener recording state changes and call outcomes."""

    def __init__(self, bridge: BreakerBridge) -> None:
        """Report to ``bridge``."""
        self.bridge = bridge
        # Per breaker, so that a call guarded by another breaker inside this one's is its own.
        self.current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
            f"meshmetrics_pybreaker_{id(self)}", default=None
        )

    @never_raises
    def before_call(
        self, cb: pybreaker.CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """The guarded function is about to run."""
        call = self.current.get()
        if call is not None:
            call.invoked = True

    @never_raises
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        """The breaker changed state."""
        self.bridge.transition(state_name(new_state))

    @never_raises
    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        """A call failed with an error the breaker counts."""
        self._outcome("failure")

    @never_raises
    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        """A call succeeded, or raised an excluded error (told apart by the wrapper)."""
        self._outcome("success")

    def _outcome(self, outcome: str) -> None:
        call = self.current.get()
        if call is None:
            self.bridge.outcome(outcome)  # a call that did not go through the wrapper
        else:
            call.outcome = outcome


def instrument_breaker(
    breaker: _B,
    *,
    service: str | None = None,
    metrics: CircuitBreakerMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> _B:
    """Add meshmetrics to ``breaker`` (in place) and return it."""
    bridge = BreakerBridge(
        service or breaker.name or DEFAULT_SERVICE, state_name(breaker.current_state), metrics, clock=clock
    )
    listener = MeshMetricsListener(bridge)
    breaker.add_listener(listener)
    original_call = breaker.call

    def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if listener.current.get() is not None:
            # pybreaker re-enters call() when an open breaker turns half-open: one call, one record
            return original_call(func, *args, **kwargs)
        record = _Call()
        token = listener.current.set(record)
        try:
            result = original_call(func, *args, **kwargs)
        except pybreaker.CircuitBreakerError:
            never_raises(bridge.outcome)("failure" if record.invoked else "rejected")
            raise
        except BaseException as error:
            excluded = record.invoked and not breaker.is_system_error(error)
            never_raises(bridge.outcome)("ignored" if excluded else record.outcome or "failure")
            raise
        finally:
            listener.current.reset(token)
        if isinstance(result, types.GeneratorType):
            return result  # `calling()`: pybreaker reports the outcome when the block ends
        never_raises(bridge.outcome)(record.outcome or "success")
        return result

    breaker.call = call  # type: ignore[method-assign]
    return breaker
