"""pybreaker and purgatory, used for real, driven closed -> open -> half_open -> closed."""

from __future__ import annotations

import asyncio
import time

import pybreaker
import pytest
from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from meshmetrics.integrations.purgatory import instrument_factory
from meshmetrics.integrations.pybreaker import instrument_breaker
from meshmetrics.testing import capture

STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def one_hot(c, service: str) -> dict[str, float]:
    return {state: c.value("mesh.circuit_breaker.state", service=service, state=state) for state in STATES}


def assert_full_cycle(c, service: str) -> None:
    for previous, state in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        assert (
            c.value("mesh.circuit_breaker.transitions", service=service, previous_state=previous, state=state)
            == 1
        )
    assert c.value("mesh.circuit_breaker.transitions", service=service) == 3
    assert one_hot(c, service) == {"closed": 1, "open": 0, "half_open": 0, "forced_open": 0, "disabled": 0}
    assert c.value("mesh.circuit_breaker.calls", service=service, call_outcome="failure") == 2
    assert c.value("mesh.circuit_breaker.calls", service=service, call_outcome="rejected") == 1
    assert c.value("mesh.circuit_breaker.calls", service=service, call_outcome="success") == 1
    recovery = c.histogram("mesh.circuit_breaker.recovery.duration", service=service)
    assert (recovery.count, recovery.sum) == (1, 65.0)
    # 2 failures, 1 success over the window
    assert c.value("mesh.circuit_breaker.failure_rate", service=service) == pytest.approx(2 / 3)


def fail() -> None:
    raise ConnectionError("down")


def ok() -> str:
    return "ok"


def test_pybreaker_full_cycle():
    clock = FakeClock()
    with capture() as c:
        breaker = instrument_breaker(
            pybreaker.CircuitBreaker(fail_max=2, reset_timeout=0.2, name="payments"), clock=clock
        )
        assert one_hot(c, "payments")["closed"] == 1
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        clock.now = 10.0
        with pytest.raises(pybreaker.CircuitBreakerError):  # the trip: the second failure opens it
            breaker.call(fail)
        assert one_hot(c, "payments")["open"] == 1
        with pytest.raises(pybreaker.CircuitBreakerError):  # rejected: no listener is told by pybreaker
            breaker.call(ok)
        time.sleep(0.25)
        clock.now = 75.0
        assert breaker.call(ok) == "ok"  # half-open trial succeeds and closes
    assert_full_cycle(c, "payments")


def test_pybreaker_excluded_errors_are_ignored_not_successes():
    with capture() as c:
        breaker = instrument_breaker(
            pybreaker.CircuitBreaker(fail_max=5, exclude=[KeyError]), service="cache"
        )

        @breaker
        def lookup() -> None:
            raise KeyError("missing")

        with pytest.raises(KeyError):
            lookup()
        with breaker.calling():
            pass
    assert c.value("mesh.circuit_breaker.calls", service="cache", call_outcome="ignored") == 1
    assert c.value("mesh.circuit_breaker.calls", service="cache", call_outcome="success") == 1
    assert c.value("mesh.circuit_breaker.calls", service="cache", call_outcome="failure") == 0


def test_purgatory_async_full_cycle():
    clock = FakeClock()

    async def scenario() -> None:
        factory = instrument_factory(
            AsyncCircuitBreakerFactory(default_threshold=2, default_ttl=0.2), clock=clock
        )

        async def call(function) -> object:
            async with await factory.get_breaker("inventory"):
                return function()

        with pytest.raises(ConnectionError):
            await call(fail)
        clock.now = 10.0
        with pytest.raises(ConnectionError):  # the second failure opens the circuit
            await call(fail)
        with pytest.raises(OpenedState):
            await call(ok)
        await asyncio.sleep(0.25)
        clock.now = 75.0
        assert await call(ok) == "ok"

    with capture() as c:
        asyncio.run(scenario())
    assert_full_cycle(c, "inventory")


def test_purgatory_sync_decorator_and_exclusions():
    with capture() as c:
        factory = instrument_factory(SyncCircuitBreakerFactory(default_threshold=5, exclude=[KeyError]))

        @factory("search")
        def search(fail_with: type[Exception] | None) -> str:
            if fail_with:
                raise fail_with("x")
            return "found"

        assert search(None) == "found"
        with pytest.raises(KeyError):
            search(KeyError)
        with pytest.raises(TimeoutError):
            search(TimeoutError)
    assert c.value("mesh.circuit_breaker.calls", service="search", call_outcome="success") == 1
    assert c.value("mesh.circuit_breaker.calls", service="search", call_outcome="ignored") == 1
    assert c.value("mesh.circuit_breaker.calls", service="search", call_outcome="failure") == 1
