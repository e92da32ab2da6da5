"""Bounded series: budgets, folding, series that end, churn, overrides and normalisers."""

from __future__ import annotations

import math

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import meshmetrics
from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics
from meshmetrics.testing import CapturedMetrics
from tests.conftest import parse_samples


def configure(**kwargs):
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], set_global=False, environ={}, **{"prometheus": False, **kwargs}
    )
    return handle, CapturedMetrics(reader)


def test_200k_distinct_instances_stay_within_budget_and_lose_nothing():
    handle, c = configure()
    try:
        lb = LoadBalancerMetrics()
        total = 200_000
        for i in range(total):
            lb.record_request("api", f"pod-{i}", "round_robin")
        budget = meshmetrics.semconv.ATTRIBUTES["mesh.instance"].limit
        series = c.series("mesh.lb.requests")
        assert len(series) == budget + 1  # the budget, plus _OTHER
        assert c.value("mesh.lb.requests") == total  # folded, not lost
        assert c.value("mesh.lb.requests", instance="_OTHER") == total - budget
        assert (
            c.value("meshmetrics.attribute.overflows", metric="mesh.lb.requests", attribute="mesh.instance")
            == total - budget
        )
    finally:
        handle.shutdown()


def test_overflow_is_logged_once_then_rate_limited():
    handle, _ = configure(attribute_policies={"mesh.instance": meshmetrics.bounded(2)})
    try:
        with structlog.testing.capture_logs() as logs:
            lb = LoadBalancerMetrics()
            for i in range(50):
                lb.record_request("api", f"pod-{i}", "random")
        warnings = [e for e in logs if e["event"] == "meshmetrics_attribute_budget_exceeded"]
        assert len(warnings) == 1
        assert warnings[0]["metric"] == "mesh.lb.requests" and warnings[0]["limit"] == 2
    finally:
        handle.shutdown()


def test_deregistered_instance_disappears_from_the_next_scrape():
    with meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, environ={}
    ) as handle:
        lb, mesh = LoadBalancerMetrics(), ServiceMeshMetrics()
        for instance in ("a", "b"):
            mesh.record_registration("api")
            mesh.set_health_status("api", instance, "healthy")
            lb.set_instance_health("api", instance, 1.0)
            lb.connection_opened("api", instance)
            lb.record_request("api", instance, "random")

        def instances(name: str) -> set[str]:
            from urllib.request import urlopen

            with urlopen(handle.prometheus_url, timeout=5) as response:
                samples = parse_samples(response.read().decode())
            return {dict(labels).get("mesh_instance") for (n, labels) in samples if n == name}

        assert instances("mesh_health_status") == {"a", "b"}
        mesh.record_deregistration("api", instance="a")
        for name in (
            "mesh_health_status",
            "mesh_lb_instance_health_score",
            "mesh_lb_connections_active",
            "mesh_lb_requests_total",
        ):
            assert instances(name) == {"b"}, name
        lb.remove_instance("api", "b")
        assert instances("mesh_lb_instance_health_score") == set()


def test_idle_series_expire_and_resume_at_their_cumulative_value(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(meshmetrics._engine.series, "monotonic", lambda: now[0])
    handle, c = configure(series_ttl=1.0)
    try:
        lb = LoadBalancerMetrics()
        for _ in range(2):
            lb.record_request("api", "idle", "random")
            lb.record_request("api", "busy", "random")
        lb.observe_request_duration("api", "idle", 0.1)
        assert {s["mesh.instance"] for s in c.series("mesh.lb.requests")} == {"idle", "busy"}
        now[0] += 1.5
        lb.record_request("api", "busy", "random")
        c.points("mesh.lb.requests")  # a collection runs the expiry
        assert {s["mesh.instance"] for s in c.series("mesh.lb.requests")} == {"busy"}
        assert c.series("mesh.lb.request.duration") == []
        lb.record_request("api", "idle", "random")  # used again: resumes where it stopped
        assert c.value("mesh.lb.requests", instance="idle") == 3
    finally:
        handle.shutdown()


def test_rolling_deploys_keep_current_instances_by_name():
    handle, c = configure(attribute_policies={"mesh.instance": meshmetrics.bounded(50)})
    try:
        lb, mesh = LoadBalancerMetrics(), ServiceMeshMetrics()
        current: list[str] = []
        for deploy in range(10):
            new = [f"api-v{deploy}-{i}" for i in range(20)]
            for instance in new:
                mesh.record_registration("api")
                mesh.set_health_status("api", instance, "healthy")
                lb.set_instance_health("api", instance, 1.0)
                for _ in range(3):
                    lb.record_request("api", instance, "least_connections")
                    lb.observe_request_duration("api", instance, 0.05)
            for instance in current:
                lb.remove_instance("api", instance)
                mesh.record_deregistration("api", instance=instance)
            current = new
            for metric in (
                "mesh.lb.requests",
                "mesh.lb.request.duration",
                "mesh.lb.instance.health_score",
                "mesh.health.status",
            ):
                exported = {s.get("mesh.instance") for s in c.series(metric)}
                assert exported == set(current), (deploy, metric, exported - set(current))
        assert c.value("meshmetrics.attribute.overflows") == 0
    finally:
        handle.shutdown()


def test_hashed_drop_and_normalisers():
    handle, c = configure(
        attribute_policies={"mesh.instance": meshmetrics.hashed(4), "error.type": meshmetrics.drop()},
        normalizers={"mesh.operation": meshmetrics.template_path},
    )
    try:
        lb, retry = LoadBalancerMetrics(), RetryMetrics()
        for i in range(100):
            lb.record_request("api", f"10.0.0.{i}", "random")
            lb.record_error("api", f"10.0.0.{i}", TimeoutError())
        retry.record_attempt("api", "/users/123/orders/9?x=1", 1)
        retry.record_attempt("api", "/users/456/orders/77", 1)
        instances = {s["mesh.instance"] for s in c.series("mesh.lb.requests")}
        assert instances <= {"h0", "h1", "h2", "h3"} and len(instances) > 1
        assert c.value("mesh.lb.requests") == 100
        assert all("error.type" not in s for s in c.series("mesh.lb.errors"))
        assert c.value("mesh.retry.attempts", operation="/users/{id}/orders/{id}") == 2
    finally:
        handle.shutdown()


def test_normaliser_helpers():
    assert meshmetrics.template_path("/users/123/orders/9") == "/users/{id}/orders/{id}"
    assert meshmetrics.template_path("/a/3f2b9c1e-8d7a-4c6b-9e5f-1a2b3c4d5e6f") == "/a/{id}"
    assert meshmetrics.template_path("/health") == "/health"
    assert meshmetrics.status_class("503") == "5xx"
    assert meshmetrics.status_class("timeout") == "timeout"


def test_policy_overrides_are_checked():
    with pytest.raises(ValueError, match="an attribute of the conventions registry"):
        meshmetrics.configure(
            attribute_policies={"user.id": meshmetrics.drop()}, prometheus=False, set_global=False, environ={}
        )
    with pytest.raises(ValueError, match="enum"):
        meshmetrics.configure(
            attribute_policies={"mesh.lb.strategy": meshmetrics.bounded(3)},
            prometheus=False,
            set_global=False,
            environ={},
        )
    with pytest.raises(ValueError, match="at least 1"):
        meshmetrics.bounded(0)


bad_duration = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.floats(max_value=-1e-9),
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.integers(max_value=-1),
    st.just(10**400),
)
bad_ratio = st.one_of(
    st.floats(min_value=1.0000001),
    st.floats(max_value=-1e-9),
    st.just(math.nan),
    st.none(),
    st.text(max_size=3),
)
bad_attempt = st.one_of(st.integers(max_value=0), st.floats(), st.none(), st.booleans(), st.text(max_size=3))
bad_label = st.one_of(
    st.none(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
bad_state = st.text(max_size=10).filter(
    lambda s: s.strip().lower() not in {"healthy", "degraded", "unhealthy", "unknown"}
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(duration=bad_duration, ratio=bad_ratio, attempt=bad_attempt, label=bad_label, state=bad_state)
def test_strict_mode_rejects_each_invalid_input_with_a_clear_message(
    strict_configured, duration, ratio, attempt, label, state
):
    lb, retry, mesh = LoadBalancerMetrics(), RetryMetrics(), ServiceMeshMetrics()
    cases = [
        (lambda: lb.observe_request_duration("api", "a", duration), "duration="),
        (lambda: mesh.record_call_success("api", "op", duration), "duration="),
        (lambda: retry.record_delay("api", "op", duration), "delay="),
        (lambda: lb.set_instance_health("api", "a", ratio), "score="),
        (lambda: mesh.circuit_breakers.set_failure_rate("api", ratio), "rate="),
        (lambda: retry.record_attempt("api", "op", attempt), "attempt="),
        (lambda: lb.record_request(label, "a", "random"), "mesh.service="),
        (lambda: mesh.set_health_status("api", "a", state), "mesh.health.state="),
    ]
    for call, field in cases:
        with pytest.raises(ValueError, match="is invalid: ") as error:
            call()
        assert field in str(error.value), (field, str(error.value))
