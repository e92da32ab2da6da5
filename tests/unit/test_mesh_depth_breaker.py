"""Time in state of a circuit breaker: what the one-hot gauge misses between two scrapes."""

from __future__ import annotations

import pybreaker
import pytest

from meshmetrics import CircuitBreakerMetrics
from meshmetrics.integrations.pybreaker import instrument_breaker
from meshmetrics.testing import CapturedMetrics, capture


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reading(c: CapturedMetrics, service: str) -> dict[str, float]:
    """One collection, as a scrape would see it."""
    return {
        "gauge_closed": c.value("mesh.circuit_breaker.state", service=service, state="closed"),
        "gauge_open": c.value("mesh.circuit_breaker.state", service=service, state="open"),
        "open_s": c.value("mesh.circuit_breaker.state.time", service=service, state="open"),
        "closed_s": c.value("mesh.circuit_breaker.state.time", service=service, state="closed"),
        "transitions": c.value("mesh.circuit_breaker.transitions", service=service),
    }


def test_a_200ms_opening_between_two_collections_15s_apart():
    clock = FakeClock()
    with capture() as c:
        breaker = CircuitBreakerMetrics().tracker("payments", clock=clock)
        breaker.flush()
        first = reading(c, "payments")
        clock.now += 5.0
        breaker.transition("open")
        clock.now += 0.2
        breaker.transition("closed")
        clock.now += 9.8
        breaker.flush()
        second = reading(c, "payments")
    assert (first["gauge_closed"], first["gauge_open"]) == (1, 0)
    assert (second["gauge_closed"], second["gauge_open"]) == (1, 0)  # the gauge never saw it
    assert second["open_s"] - first["open_s"] == pytest.approx(0.2, abs=0.001)
    assert second["transitions"] - first["transitions"] == 2
    assert second["closed_s"] - first["closed_s"] == pytest.approx(14.8, abs=0.001)


def test_calls_bring_the_current_state_up_to_date_once_a_second():
    clock = FakeClock()
    with capture() as c:
        breaker = CircuitBreakerMetrics().tracker("orders", initial_state="open", clock=clock)
        clock.now += 0.5
        breaker.record_call("rejected")  # under a second since the last update: not yet
        assert c.value("mesh.circuit_breaker.state.time", service="orders") == 0
        clock.now += 0.7
        breaker.record_call("rejected")
        assert c.value("mesh.circuit_breaker.state.time", service="orders", state="open") == pytest.approx(
            1.2
        )
        clock.now += 3.0
        breaker.transition("half_open")
        assert c.value("mesh.circuit_breaker.state.time", service="orders", state="open") == pytest.approx(
            4.2
        )
        assert c.value("mesh.circuit_breaker.state.time", service="orders", state="half_open") == 0


def test_time_in_state_through_pybreaker():
    clock = FakeClock()
    with capture() as c:
        breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=1, name="users"), clock=clock)
        clock.now += 2.0
        with pytest.raises(pybreaker.CircuitBreakerError):
            breaker.call(_fail)  # trips: 2 s closed
        clock.now += 0.25
        breaker.close()  # 0.25 s open
        assert c.value("mesh.circuit_breaker.state.time", service="users", state="closed") == pytest.approx(
            2.0
        )
        assert c.value("mesh.circuit_breaker.state.time", service="users", state="open") == pytest.approx(
            0.25
        )


def _fail() -> None:
    raise ConnectionError


def test_record_state_time_validates_seconds():
    with capture(strict=False) as c:
        breakers = CircuitBreakerMetrics()
        breakers.record_state_time("api", "open", 1.5)
        breakers.record_state_time("api", "open", float("nan"))
        breakers.record_state_time("api", "HALF_OPEN", 0.5)  # state names normalised as everywhere
        assert c.value("mesh.circuit_breaker.state.time", service="api", state="open") == 1.5
        assert c.value("mesh.circuit_breaker.state.time", service="api", state="half_open") == 0.5
        assert c.value("meshmetrics.measurements.rejected", metric="mesh.circuit_breaker.state.time") == 1
