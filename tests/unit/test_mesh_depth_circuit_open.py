"""Retries stopped by an open breaker: exhaust_reason="circuit_open", with the real libraries together."""

from __future__ import annotations

import asyncio

import backoff
import pybreaker
import pytest
import tenacity
from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from meshmetrics.integrations import backoff as mm_backoff
from meshmetrics.integrations import stamina as mm_stamina
from meshmetrics.integrations import tenacity as mm_tenacity
from meshmetrics.integrations._shared import is_circuit_open
from meshmetrics.integrations.purgatory import instrument_factory
from meshmetrics.integrations.pybreaker import instrument_breaker
from meshmetrics.testing import capture

STAMINA_WAITS = {"wait_initial": 0.0, "wait_max": 0.0, "wait_jitter": 0.0}


def down() -> None:
    raise ConnectionError("down")


def exhausted(c, service: str) -> dict[str, float]:
    reasons = ("max_attempts", "budget", "deadline", "circuit_open")
    return {
        reason: value
        for reason in reasons
        if (value := c.value("mesh.retry.exhausted", service=service, exhaust_reason=reason))
    }


def outcomes(c, service: str) -> dict[str, float]:
    return {
        s["mesh.retry.outcome"]: c.value("mesh.retry.calls", service=service, outcome=s["mesh.retry.outcome"])
        for s in c.series("mesh.retry.calls", service=service)
    }


def test_tenacity_retrying_only_connection_errors_stops_on_the_open_pybreaker():
    with capture() as c:
        breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, name="payments"))
        charge = mm_tenacity.retry(
            service="payments",
            operation="charge",
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_none(),
            retry=tenacity.retry_if_exception_type(ConnectionError),
            reraise=True,
        )(lambda: breaker.call(down))
        for _ in range(3):
            with pytest.raises(pybreaker.CircuitBreakerError):
                charge()
    # call 1: a ConnectionError, then the failure that trips the breaker; calls 2-3: refused at once
    assert outcomes(c, "payments") == {"failed_with_retry": 1, "failed_without_retry": 2}
    assert exhausted(c, "payments") == {"circuit_open": 3}
    assert c.value("mesh.retry.attempts", service="payments") == 4
    assert c.value("mesh.retry.errors", service="payments", error_type="ConnectionError") == 1
    assert c.value("mesh.retry.errors", service="payments", error_type="pybreaker.CircuitBreakerError") == 3
    assert c.value("mesh.circuit_breaker.calls", service="payments", call_outcome="failure") == 2
    assert c.value("mesh.circuit_breaker.calls", service="payments", call_outcome="rejected") == 2


@pytest.mark.parametrize("reraise", [True, False])
def test_tenacity_retrying_every_error_against_an_open_pybreaker(reraise):
    with capture() as c:
        breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, name="payments"))
        charge = mm_tenacity.retry(
            service="payments",
            operation="charge",
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_none(),
            reraise=reraise,
        )(lambda: breaker.call(down))
        for _ in range(3):
            with pytest.raises(pybreaker.CircuitBreakerError if reraise else tenacity.RetryError):
                charge()
    # every call made 3 attempts and its last one was refused by the open breaker
    assert outcomes(c, "payments") == {"failed_with_retry": 3}
    assert exhausted(c, "payments") == {"circuit_open": 3}
    assert c.value("mesh.retry.attempts", service="payments") == 9


def test_tenacity_limit_without_a_breaker_is_still_max_attempts():
    with capture() as c:
        fetch = mm_tenacity.retry(
            service="users", stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none()
        )(down)
        with pytest.raises(tenacity.RetryError):
            fetch()
    assert exhausted(c, "users") == {"max_attempts": 1}


def test_stamina_with_purgatory_sync():
    with capture() as c:
        breakers = instrument_factory(SyncCircuitBreakerFactory(default_threshold=2, default_ttl=60))

        @mm_stamina.retry(
            on=ConnectionError, service="orders", operation="create", attempts=5, **STAMINA_WAITS
        )
        def create() -> None:
            with breakers.get_breaker("orders"):
                down()

        for _ in range(3):
            with pytest.raises(OpenedState):
                create()
    # call 1: two ConnectionErrors open the circuit, the third attempt is refused; calls 2-3 refused at once
    assert outcomes(c, "orders") == {"failed_with_retry": 1, "failed_without_retry": 2}
    assert exhausted(c, "orders") == {"circuit_open": 3}
    assert c.value("mesh.retry.attempts", service="orders") == 5
    assert c.value("mesh.circuit_breaker.calls", service="orders", call_outcome="rejected") == 3
    assert c.value("mesh.circuit_breaker.calls", service="orders", call_outcome="failure") == 2


def test_stamina_with_purgatory_async_retrying_the_open_state_too():
    async def main() -> None:
        breakers = instrument_factory(AsyncCircuitBreakerFactory(default_threshold=2, default_ttl=60))

        @mm_stamina.retry(
            on=(ConnectionError, OpenedState),
            service="orders",
            operation="create",
            attempts=3,
            **STAMINA_WAITS,
        )
        async def create() -> None:
            async with await breakers.get_breaker("orders"):
                down()

        for _ in range(2):
            with pytest.raises(OpenedState):
                await create()

    with capture() as c:
        asyncio.run(main())
    # the attempt limit was reached, but on an open circuit: that is what stopped the call
    assert outcomes(c, "orders") == {"failed_with_retry": 2}
    assert exhausted(c, "orders") == {"circuit_open": 2}


def test_backoff_with_pybreaker():
    # backoff sees only the exceptions it retries: the breaker's error has to be one of them
    retried = (ConnectionError, pybreaker.CircuitBreakerError)
    with capture() as c:
        breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60, name="users"))
        handlers = mm_backoff.handlers(service="users", operation="get")

        @backoff.on_exception(backoff.constant, retried, max_tries=3, interval=0, jitter=None, **handlers)
        def get() -> None:
            breaker.call(down)

        for _ in range(2):
            with pytest.raises(pybreaker.CircuitBreakerError):
                get()
    assert exhausted(c, "users") == {"circuit_open": 2}
    assert outcomes(c, "users") == {"failed_with_retry": 2}


def test_is_circuit_open_looks_through_retry_error_and_causes():
    wrapped = RuntimeError("client gave up")
    wrapped.__cause__ = pybreaker.CircuitBreakerError("open")
    assert is_circuit_open(wrapped)
    attempt = tenacity.Future(1)
    attempt.set_exception(OpenedState("open"))
    assert is_circuit_open(tenacity.RetryError(attempt))
    assert not is_circuit_open(ConnectionError())
    assert not is_circuit_open(None)
    assert not is_circuit_open("circuit_open")
