"""LoadBalancerMetrics' per-request tracker and outlier ejection, read back as exact values."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from meshmetrics import LoadBalancerMetrics
from meshmetrics.testing import CapturedMetrics, capture


def ticking(step: float = 0.25):
    """A fake clock advancing ``step`` seconds per read."""
    counter = itertools.count()
    return lambda: next(counter) * step


def lb_state(captured: CapturedMetrics) -> dict[str, object]:
    """Everything a request can touch, as a user reads it back."""
    return {
        "requests": captured.value(
            "mesh.lb.requests", service="api", instance="api-1", strategy="round_robin"
        ),
        "connections": captured.value("mesh.lb.connections.active", service="api", instance="api-1"),
        "errors": sorted(
            (s.get("error.type"), captured.value("mesh.lb.errors", service="api", type=s.get("error.type")))
            for s in captured.series("mesh.lb.errors", service="api")
        ),
        "durations": sorted(
            (
                s.get("error.type", "<absent>"),
                captured.histogram("mesh.lb.request.duration", service="api", **_type(s)).count,
            )
            for s in captured.series("mesh.lb.request.duration", service="api")
        ),
        "sum": captured.histogram("mesh.lb.request.duration", service="api", instance="api-1").sum,
    }


def _type(series: dict[str, object]) -> dict[str, object]:
    return {"type": series["error.type"]} if "error.type" in series else {}


def separate_calls(lb: LoadBalancerMetrics, error: object) -> None:
    lb.record_request("api", "api-1", "round_robin")
    lb.connection_opened("api", "api-1")
    lb.connection_closed("api", "api-1")
    lb.observe_request_duration("api", "api-1", 0.25, error=error)
    if error is not None:
        lb.record_error("api", "api-1", error)


@pytest.mark.parametrize(
    ("error", "expected_type"),
    [(None, None), (TimeoutError(), "timeout"), (503, "503")],
    ids=["success", "exception", "status"],
)
def test_tracker_records_exactly_what_the_separate_calls_record(error, expected_type):
    with capture() as by_hand:
        separate_calls(LoadBalancerMetrics(), error)
    with capture() as tracked:
        lb = LoadBalancerMetrics()
        try:
            with lb.track_request("api", "api-1", "round_robin", clock=ticking()) as attempt:
                if isinstance(error, Exception):
                    raise error
                if error is not None:
                    attempt.failed(error)
        except TimeoutError:
            pass
    assert lb_state(tracked) == lb_state(by_hand)
    state = lb_state(tracked)
    assert state["requests"] == 1
    assert state["connections"] == 0
    assert state["sum"] == pytest.approx(0.25)
    if expected_type is None:
        assert state["errors"] == []
        assert state["durations"] == [("<absent>", 1)]  # no error.type on success
    else:
        assert state["errors"] == [(expected_type, 1)]
        assert state["durations"] == [(expected_type, 1)]


def test_connection_is_open_while_the_request_runs():
    with capture() as captured:
        lb = LoadBalancerMetrics()
        with lb.track_request("api", "api-1", "round_robin"):
            inside = captured.value("mesh.lb.connections.active", service="api", instance="api-1")
        assert inside == 1
        assert captured.value("mesh.lb.connections.active", service="api", instance="api-1") == 0


def reset_after_a_502(lb: LoadBalancerMetrics) -> None:
    with lb.track_request("api", "api-1", "round_robin") as attempt:
        attempt.failed(502)
        raise ConnectionResetError


def test_exception_propagates_and_explicit_error_wins():
    with capture() as captured:
        lb = LoadBalancerMetrics()
        with pytest.raises(ConnectionResetError):
            reset_after_a_502(lb)
        assert captured.value("mesh.lb.errors", service="api", type="502") == 1
        assert captured.value("mesh.lb.errors", service="api") == 1


def test_decorator_sync_and_async_one_request_per_call():
    with capture() as captured:
        lb = LoadBalancerMetrics()

        @lb.track_request("api", "api-1", "round_robin", clock=ticking(0.5))
        def fetch(fail: bool) -> str:
            if fail:
                raise TimeoutError
            return "ok"

        @lb.track_request("api", "api-2", "round_robin", clock=ticking(0.5))
        async def fetch_async() -> str:
            return "ok"

        assert fetch(False) == "ok"
        with pytest.raises(TimeoutError):
            fetch(True)
        assert asyncio.run(fetch_async()) == "ok"
        assert captured.value("mesh.lb.requests", service="api", instance="api-1") == 2
        assert captured.value("mesh.lb.requests", service="api", instance="api-2") == 1
        assert captured.value("mesh.lb.errors", service="api", instance="api-1", type="timeout") == 1
        assert captured.histogram("mesh.lb.request.duration", instance="api-2").sum == pytest.approx(0.5)
        assert captured.value("mesh.lb.connections.active", service="api") == 0


def test_async_context_manager():
    async def main(lb: LoadBalancerMetrics) -> None:
        async with lb.track_request("api", "api-1", "least_connections") as attempt:
            attempt.failed("UNAVAILABLE")

    with capture() as captured:
        asyncio.run(main(LoadBalancerMetrics()))
        assert captured.value("mesh.lb.errors", service="api", type="UNAVAILABLE") == 1
        assert captured.value("mesh.lb.requests", strategy="least_connections") == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outlier_tracker_counts_ejections_active_endpoints_and_time_ejected():
    clock = FakeClock()
    with capture() as captured:
        outliers = LoadBalancerMetrics().outlier_tracker("orders", clock=clock)
        assert outliers.eject("orders-1", "consecutive_5xx") is True
        assert outliers.eject("orders-1", "consecutive_5xx") is False  # already ejected: nothing recorded
        clock.now += 0.3
        outliers.eject("orders-2", "success_rate")
        assert outliers.ejected == {"orders-1", "orders-2"}
        assert captured.value("mesh.lb.ejections.active", service="orders") == 2
        clock.now += 0.2
        assert outliers.uneject("orders-1") is True
        assert outliers.uneject("orders-1") is False
        assert captured.value("mesh.lb.ejection.time", instance="orders-1") == pytest.approx(0.5, abs=1e-9)
        clock.now += 30.0
        outliers.flush()  # orders-2 is still out: its time shows while it lasts
        assert captured.value("mesh.lb.ejection.time", instance="orders-2") == pytest.approx(30.2, abs=1e-9)
        clock.now += 1.0
        outliers.uneject("orders-2")
        assert captured.value("mesh.lb.ejection.time", instance="orders-2") == pytest.approx(31.2, abs=1e-9)
        assert captured.value("mesh.lb.ejections", instance="orders-1", reason="consecutive_5xx") == 1
        assert captured.value("mesh.lb.ejections", instance="orders-2", reason="success_rate") == 1
        assert captured.value("mesh.lb.ejections.active", service="orders") == 0
        assert {s["mesh.instance"] for s in captured.series("mesh.lb.ejections.active")} == {
            "orders-1",
            "orders-2",
        }


def test_stateless_ejection_methods_and_unknown_reason_folds():
    with capture(strict=False) as captured:
        lb = LoadBalancerMetrics()
        lb.record_ejection("api", "api-1", "gremlins")
        lb.record_ejection_time("api", "api-1", 2.5)
        lb.record_ejection_time("api", "api-1", -1.0)  # invalid: dropped, counted
        lb.record_unejection("api", "api-1")
        assert captured.value("mesh.lb.ejections", service="api", reason="_OTHER") == 1
        assert captured.value("mesh.lb.ejection.time", service="api") == 2.5
        assert captured.value("mesh.lb.ejections.active", service="api") == 0
        assert captured.value("meshmetrics.measurements.rejected", metric="mesh.lb.ejection.time") == 1


def test_a_long_ejection_shows_on_later_activity_at_most_once_a_second():
    clock = FakeClock()
    with capture() as captured:
        outliers = LoadBalancerMetrics().outlier_tracker("orders", clock=clock)
        outliers.eject("orders-1", "consecutive_5xx")
        clock.now += 0.5
        outliers.eject("orders-2", "consecutive_5xx")  # under a second since the last update: nothing yet
        assert captured.value("mesh.lb.ejection.time", instance="orders-1") == 0
        clock.now += 1.5
        outliers.uneject("orders-2")  # its own 1.5 s, and orders-1's 2 s so far
        assert captured.value("mesh.lb.ejection.time", instance="orders-2") == pytest.approx(1.5)
        assert captured.value("mesh.lb.ejection.time", instance="orders-1") == pytest.approx(2.0)
        assert outliers.ejected == {"orders-1"}
