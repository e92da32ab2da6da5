"""Every facade method, read back as exact values from the in-memory reader and /metrics."""

from __future__ import annotations

import asyncio

import pytest

from meshmetrics import (
    CircuitBreakerMetrics,
    LoadBalancerMetrics,
    RetryMetrics,
    ServiceMeshMetrics,
    classify_error,
    semconv,
)
from tests.conftest import sample


def record_every_metric() -> None:
    """One call of each kind, covering every registry metric (used by several tests)."""
    lb, retry, mesh = LoadBalancerMetrics(), RetryMetrics(), ServiceMeshMetrics()
    lb.record_request(service="api", instance="api-1", strategy="round_robin")
    lb.observe_request_duration(service="api", instance="api-1", duration=0.15)
    lb.record_error(service="api", instance="api-1", error=TimeoutError())
    lb.connection_opened(service="api", instance="api-1")
    lb.record_connection_failure(service="api", instance="api-1", error=ConnectionRefusedError())
    lb.set_instance_health(service="api", instance="api-1", score=0.5)
    lb.set_endpoints("api", healthy=2, unhealthy=1)
    lb.record_ejection("api", "api-1", "consecutive_5xx")
    lb.set_latency_estimate("api", "api-1", 0.02)
    lb.record_ejection_time("api", "api-1", 3.0)
    retry.record_attempt(service="api", operation="get_user", attempt=1)
    retry.record_error(service="api", operation="get_user", error=503)
    retry.record_delay(service="api", operation="get_user", delay=0.1)
    retry.record_call(service="api", operation="get_user", succeeded=True, attempts=2, duration=0.4)
    retry.record_exhausted(service="api", operation="get_user", reason="budget")
    retry.set_budget_remaining("api", 0)
    mesh.record_call_success(service="api", operation="get_user", duration=0.2)
    mesh.call_started(service="api", operation="get_user")
    mesh.record_registration("api")
    mesh.set_health_status("api", "api-1", "healthy")
    mesh.record_health_check("api", "api-1", success=True)
    breakers = mesh.circuit_breakers
    breakers.record_state_change("api", "closed", "open")
    breakers.record_rejected("api")
    breakers.set_failure_rate("api", 0.6)
    breakers.record_recovery("api", 12.0)
    breakers.record_state_time("api", "open", 12.0)
    mesh.record_call_success(service="api", operation="get_user", duration=float("nan"))  # rejected, counted


def test_seed_api_verbatim(configured):
    lb_metrics = LoadBalancerMetrics()
    retry_metrics = RetryMetrics()
    mesh_metrics = ServiceMeshMetrics()
    lb_metrics.record_request(service="api", instance="api-1", strategy="round_robin")
    lb_metrics.observe_request_duration(service="api", instance="api-1", duration=0.15)
    retry_metrics.record_attempt(service="api", operation="get_user", attempt=1)
    mesh_metrics.record_call_success(service="api", operation="get_user", duration=0.2)

    c = configured.captured
    assert c.value("mesh.lb.requests", service="api", instance="api-1", strategy="round_robin") == 1
    assert c.histogram("mesh.lb.request.duration", service="api").sum == pytest.approx(0.15)
    assert c.value("mesh.retry.attempts", service="api", operation="get_user", attempt="1") == 1
    call = c.histogram("mesh.call.duration", service="api", outcome="success")
    assert (call.count, call.sum) == (1, pytest.approx(0.2))


def test_every_registry_metric_is_emitted_by_a_facade(configured):
    record_every_metric()
    for name in semconv.METRICS:
        if name == "meshmetrics.attribute.overflows":
            continue  # covered by the policy tests
        assert configured.captured.points(name), f"{name} was never emitted"


def test_load_balancer_exact_values(configured):
    lb = LoadBalancerMetrics()
    for _ in range(3):
        lb.record_request(service="api", instance="a", strategy="least_connections")
    lb.record_request(service="api", instance="b", strategy="least_connections")
    lb.observe_request_duration(service="api", instance="a", duration=0.004)
    lb.observe_request_duration(service="api", instance="a", duration=3.0, error=TimeoutError())
    lb.record_error(service="api", instance="a", error=TimeoutError())
    lb.record_error(service="api", instance="a", error=ConnectionResetError())
    lb.connection_opened("api", "a")
    lb.connection_opened("api", "a")
    lb.connection_closed("api", "a")
    lb.record_connection_failure("api", "b", ConnectionRefusedError())
    lb.set_instance_health("api", "a", 0.25)
    lb.set_instance_health("api", "a", 0.75)
    lb.set_endpoints("api", healthy=3, degraded=1)
    lb.set_endpoints("api", healthy=2, degraded=0, unhealthy=2)

    c = configured.captured
    assert c.value("mesh.lb.requests", instance="a") == 3
    assert c.value("mesh.lb.requests", service="api") == 4
    ok = c.histogram("mesh.lb.request.duration", instance="a", error_type=None) if False else None
    series = c.series("mesh.lb.request.duration")
    assert {"mesh.service": "api", "mesh.instance": "a"} in series
    assert {"mesh.service": "api", "mesh.instance": "a", "error.type": "timeout"} in series
    failed = c.histogram("mesh.lb.request.duration", error_type="timeout")
    assert (failed.count, failed.sum) == (1, 3.0)
    assert failed.buckets()[5.0] == 1
    assert c.histogram("mesh.lb.request.duration", instance="a").buckets()[0.005] == 1
    assert ok is None
    assert c.value("mesh.lb.errors", error_type="timeout") == 1
    assert c.value("mesh.lb.errors", error_type="ConnectionResetError") == 1
    assert c.value("mesh.lb.connections.active", instance="a") == 1
    assert c.value("mesh.lb.connection.failures", instance="b", error_type="ConnectionRefusedError") == 1
    assert c.value("mesh.lb.instance.health_score", instance="a") == 0.75
    assert c.value("mesh.lb.endpoints", state="healthy") == 2
    assert c.value("mesh.lb.endpoints", state="degraded") == 0
    assert c.value("mesh.lb.endpoints", state="unhealthy") == 2
    assert c.value("mesh.lb.endpoints", state="unknown") == 0

    samples = configured.samples()
    assert (
        sample(
            samples,
            "mesh_lb_requests_total",
            mesh_service="api",
            mesh_instance="a",
            mesh_lb_strategy="least_connections",
        )
        == 3
    )
    assert (
        sample(samples, "mesh_lb_errors_total", mesh_service="api", mesh_instance="a", error_type="timeout")
        == 1
    )
    assert sample(samples, "mesh_lb_connections_active", mesh_service="api", mesh_instance="a") == 1
    assert sample(samples, "mesh_lb_instance_health_score", mesh_service="api", mesh_instance="a") == 0.75
    assert sample(samples, "mesh_lb_endpoints", mesh_service="api", mesh_health_state="unhealthy") == 2


def test_load_imbalance_is_one_for_even_traffic_and_rises_with_skew(configured):
    lb = LoadBalancerMetrics()
    for _ in range(10):
        for instance in ("a", "b", "c", "d"):
            lb.record_request(service="even", instance=instance, strategy="round_robin")
    for _ in range(7):
        lb.record_request(service="skewed", instance="hot", strategy="random")
    for instance in ("x", "y", "z"):
        lb.record_request(service="skewed", instance=instance, strategy="random")
    c = configured.captured
    assert c.value("mesh.lb.load_imbalance", service="even", strategy="round_robin") == 1.0
    # 4 instances, 10 requests, busiest has 7: share 0.7 over mean share 0.25 = 2.8
    assert c.value("mesh.lb.load_imbalance", service="skewed", strategy="random") == pytest.approx(2.8)
    samples = configured.samples()
    assert sample(
        samples, "mesh_lb_load_imbalance", mesh_service="skewed", mesh_lb_strategy="random"
    ) == pytest.approx(2.8)


def test_imbalance_window_forgets_old_traffic():
    from meshmetrics._engine.window import SnapshotWindow

    now = [0.0]
    window = SnapshotWindow(window_s=60, clock=lambda: now[0])
    # cumulative request counts per (service, strategy, instance), as collected
    first = window.imbalance({("s", "rr", "hot"): 9, ("s", "rr", "cold"): 1})
    assert first[("s", "rr")] == pytest.approx(1.8)
    now[0] = 61.0  # the first collection is now a minute old: only what came since counts
    assert window.imbalance({("s", "rr", "hot"): 10, ("s", "rr", "cold"): 2})[("s", "rr")] == 1.0
    now[0] = 200.0  # nothing new for over a minute
    assert window.imbalance({("s", "rr", "hot"): 10, ("s", "rr", "cold"): 2}) == {}


def test_retry_exact_values(configured):
    retry = RetryMetrics()
    for attempt in (1, 2, 3, 11, 12):
        retry.record_attempt("api", "get", attempt)
    retry.record_error("api", "get", TimeoutError())
    retry.record_error("api", "get", 503)
    retry.record_delay("api", "get", 0.2)
    retry.record_delay("api", "get", 0.4)
    retry.record_call("api", "get", succeeded=True, attempts=1, duration=0.05)
    retry.record_call("api", "get", succeeded=True, attempts=3, duration=0.9)
    retry.record_call("api", "get", succeeded=False, attempts=5, duration=2.0)
    retry.record_call("api", "get", succeeded=False, attempts=1, duration=0.01)
    retry.record_exhausted("api", "get", "max_attempts")
    retry.record_exhausted("api", "get", "circuit_open")

    c = configured.captured
    assert c.value("mesh.retry.attempts", attempt="1") == 1
    assert c.value("mesh.retry.attempts", attempt="3") == 1
    assert c.value("mesh.retry.attempts", attempt="_OTHER") == 2
    assert c.value("mesh.retry.errors", error_type="timeout") == 1
    assert c.value("mesh.retry.errors", error_type="503") == 1
    delay = c.histogram("mesh.retry.delay")
    assert (delay.count, delay.sum) == (2, pytest.approx(0.6))
    for outcome in (
        "successful_without_retry",
        "successful_with_retry",
        "failed_with_retry",
        "failed_without_retry",
    ):
        assert c.value("mesh.retry.calls", outcome=outcome) == 1
    per_call = c.histogram("mesh.retry.call.attempts")
    assert per_call.count == 4
    assert per_call.sum == 10
    assert per_call.buckets() == {1.0: 2, 2.0: 0, 3.0: 1, 4.0: 0, 5.0: 1, 7.0: 0, 10.0: 0, float("inf"): 0}
    assert c.histogram("mesh.retry.duration", outcome="failed_with_retry").sum == 2.0
    assert c.value("mesh.retry.exhausted", exhaust_reason="max_attempts") == 1
    assert c.value("mesh.retry.exhausted", exhaust_reason="circuit_open") == 1


def test_retry_tracker_derives_outcome_attempts_and_duration(configured):
    now = [0.0]
    retry = RetryMetrics()
    with retry.track_call("api", "get", clock=lambda: now[0]) as call:
        for attempt in range(3):
            call.attempt()
            if attempt < 2:
                call.failed(TimeoutError())
                call.backoff(0.1 * (attempt + 1))
                now[0] += 1.0
    tracker = retry.track_call("api", "put", clock=lambda: now[0])
    tracker.attempt()
    tracker.failed(ConnectionError())
    tracker.attempt()
    tracker.give_up("deadline")

    c = configured.captured
    assert c.value("mesh.retry.calls", operation="get", outcome="successful_with_retry") == 1
    assert c.histogram("mesh.retry.call.attempts", operation="get").sum == 3
    assert c.histogram("mesh.retry.duration", operation="get").sum == 2.0
    assert c.value("mesh.retry.attempts", operation="get") == 3
    assert c.value("mesh.retry.errors", operation="get", error_type="timeout") == 2
    assert c.histogram("mesh.retry.delay", operation="get").sum == pytest.approx(0.3)
    assert c.value("mesh.retry.calls", operation="put", outcome="failed_with_retry") == 1
    assert c.value("mesh.retry.exhausted", operation="put", exhaust_reason="deadline") == 1


def test_service_calls_registry_and_health(configured):
    mesh = ServiceMeshMetrics()
    mesh.record_call_success("api", "get", 0.2)
    mesh.record_call_failure("api", "get", 0.5, error=ConnectionRefusedError())
    mesh.record_registration("api")
    mesh.record_registration("api")
    mesh.record_registration("api", success=False, error=TimeoutError())
    mesh.record_renewal("api")
    mesh.record_deregistration("api")
    mesh.record_health_check("api", "a", success=True)
    mesh.record_health_check("api", "a", success=False)
    mesh.set_health_status("api", "a", "healthy")
    mesh.set_health_status("api", "a", "degraded")

    c = configured.captured
    assert c.histogram("mesh.call.duration", outcome="success").count == 1
    failed = c.series("mesh.call.duration", outcome="failure")
    assert failed == [
        {
            "mesh.service": "api",
            "mesh.operation": "get",
            "mesh.outcome": "failure",
            "error.type": "ConnectionRefusedError",
        }
    ]
    assert c.value("mesh.registry.operations", registry_operation="register", outcome="success") == 2
    assert (
        c.value(
            "mesh.registry.operations", registry_operation="register", outcome="failure", error_type="timeout"
        )
        == 1
    )
    assert c.value("mesh.registry.operations", registry_operation="renew") == 1
    assert c.value("mesh.registry.instances", service="api") == 1
    assert c.value("mesh.health.checks", outcome="failure") == 1
    states = {
        s: c.value("mesh.health.status", instance="a", state=s)
        for s in ("healthy", "degraded", "unhealthy", "unknown")
    }
    assert states == {"healthy": 0, "degraded": 1, "unhealthy": 0, "unknown": 0}
    assert sum(states.values()) == 1


def test_track_call_context_manager_and_decorators(configured):
    mesh = ServiceMeshMetrics()
    with mesh.track_call("api", "ctx"):
        assert configured.captured.value("mesh.calls.active", operation="ctx") == 1
    with pytest.raises(KeyError), mesh.track_call("api", "ctx"):
        raise KeyError("missing")

    @mesh.track_call("api", "sync")
    def double(x: int) -> int:
        return 2 * x

    @mesh.track_call("api", "async")
    async def fail() -> None:
        await asyncio.sleep(0)
        raise TimeoutError

    async def run_async_block() -> None:
        async with mesh.track_call("api", "async-block"):
            await asyncio.sleep(0)

    assert double(4) == 8
    assert double.__name__ == "double"
    with pytest.raises(TimeoutError):
        asyncio.run(fail())
    asyncio.run(run_async_block())

    c = configured.captured
    assert c.histogram("mesh.call.duration", operation="ctx", outcome="success").count == 1
    assert c.histogram("mesh.call.duration", operation="ctx", error_type="KeyError").count == 1
    assert c.histogram("mesh.call.duration", operation="sync", outcome="success").count == 1
    assert c.histogram("mesh.call.duration", operation="async", error_type="timeout").count == 1
    assert c.histogram("mesh.call.duration", operation="async-block", outcome="success").count == 1
    for operation in ("ctx", "sync", "async", "async-block"):
        assert c.value("mesh.calls.active", operation=operation) == 0


def test_circuit_breaker_scripted_sequence(configured):
    now = [0.0]
    breaker = CircuitBreakerMetrics().tracker("payments", clock=lambda: now[0])
    for at, state in ((10, "open"), (40, "half_open"), (41, "open"), (71, "half_open"), (75, "closed")):
        now[0] = float(at)
        breaker.transition(state)
    breaker.transition("closed")  # no-op: same state
    breaker.record_call("success")
    breaker.record_call("rejected")
    breaker.record_call("rejected")
    breaker.set_failure_rate(0.5)

    c = configured.captured
    transitions = {
        (a["mesh.circuit_breaker.previous_state"], a["mesh.circuit_breaker.state"])
        for a in c.series("mesh.circuit_breaker.transitions")
    }
    assert transitions == {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("half_open", "closed"),
    }
    assert c.value("mesh.circuit_breaker.transitions", previous_state="open", state="half_open") == 2
    assert c.value("mesh.circuit_breaker.transitions", previous_state="half_open", state="open") == 1
    assert c.value("mesh.circuit_breaker.transitions") == 5
    states = {
        s: c.value("mesh.circuit_breaker.state", state=s)
        for s in ("closed", "open", "half_open", "forced_open", "disabled")
    }
    assert states == {"closed": 1, "open": 0, "half_open": 0, "forced_open": 0, "disabled": 0}
    recovery = c.histogram("mesh.circuit_breaker.recovery.duration", service="payments")
    assert (recovery.count, recovery.sum) == (1, 65.0)  # first open (10) to close (75)
    assert c.value("mesh.circuit_breaker.calls", call_outcome="rejected") == 2
    assert c.value("mesh.circuit_breaker.failure_rate", service="payments") == 0.5
    samples = configured.samples()
    assert (
        sample(
            samples,
            "mesh_circuit_breaker_state",
            mesh_service="payments",
            mesh_circuit_breaker_state="closed",
        )
        == 1
    )
    assert (
        sample(samples, "mesh_circuit_breaker_recovery_duration_seconds_sum", mesh_service="payments") == 65
    )


def test_one_hot_state_always_sums_to_one(configured):
    breakers = CircuitBreakerMetrics()
    c = configured.captured
    for previous, state in (
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "forced_open"),
        ("forced_open", "disabled"),
    ):
        breakers.record_state_change("svc", previous, state)
        values = [
            c.value("mesh.circuit_breaker.state", state=s)
            for s in ("closed", "open", "half_open", "forced_open", "disabled")
        ]
        assert sum(values) == 1
        assert c.value("mesh.circuit_breaker.state", state=state) == 1


def test_explicit_meter_provider():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from meshmetrics.testing import CapturedMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    LoadBalancerMetrics(meter_provider=provider).record_request("api", "a", "random")
    assert CapturedMetrics(reader).value("mesh.lb.requests", service="api") == 1
    provider.shutdown()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError(), "timeout"),
        (asyncio.TimeoutError(), "timeout"),
        (ConnectionRefusedError(), "ConnectionRefusedError"),
        (ValueError, "ValueError"),
        (503, "503"),
        (42, "_OTHER"),
        (True, "_OTHER"),
        ("UNAVAILABLE", "UNAVAILABLE"),
        ("", "_OTHER"),
        (object(), "_OTHER"),
    ],
)
def test_classify_error(error, expected):
    assert classify_error(error) == expected


def test_classify_error_uses_qualified_names_for_library_errors():
    import json

    assert classify_error(json.JSONDecodeError("x", "doc", 0)) == "json.decoder.JSONDecodeError"


def _prometheus_total(samples: dict, definition) -> float:
    """Sum of a metric's series in the exposition (histograms: their _count)."""
    name = definition.prometheus_name + ("_count" if definition.instrument == "histogram" else "")
    return sum(value for (sample_name, _), value in samples.items() if sample_name == name)


def test_every_metric_reads_the_same_in_memory_and_in_prometheus_text(configured):
    record_every_metric()
    samples = configured.samples()
    c = configured.captured
    for definition in semconv.METRICS.values():
        if not c.points(definition.name):
            continue
        if definition.instrument == "histogram":
            expected = c.histogram(definition.name).count
            assert expected > 0
        else:
            expected = sum(point.value for _, point in c.points(definition.name))
        assert _prometheus_total(samples, definition) == pytest.approx(expected), definition.name
