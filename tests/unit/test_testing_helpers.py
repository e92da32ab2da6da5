"""meshmetrics.testing used the way a service team's own test suite would."""

from __future__ import annotations

import pytest

from meshmetrics import LoadBalancerMetrics, ServiceMeshMetrics
from meshmetrics.testing import capture

lb = LoadBalancerMetrics()  # module-level facade, created before any configure()
mesh = ServiceMeshMetrics()


def route(user_id: int) -> str:
    """A user's code: picks an instance and records it."""
    instance = f"users-{user_id % 2}"
    lb.record_request(service="users", instance=instance, strategy="round_robin")
    with mesh.track_call("users", "get_user"):
        pass
    return instance


def test_with_the_fixture(meshmetrics_capture):
    for user_id in range(5):
        route(user_id)
    assert meshmetrics_capture.value("mesh.lb.requests", service="users") == 5
    assert meshmetrics_capture.value("mesh.lb.requests", instance="users-0") == 3
    assert (
        meshmetrics_capture.histogram("mesh.call.duration", operation="get_user", outcome="success").count
        == 5
    )


def test_with_the_context_manager():
    with capture() as captured:
        route(1)
    assert captured.value("mesh.lb.requests", instance="users-1") == 1
    route(1)  # outside the block: not captured, and a no-op since nothing is configured
    assert captured.value("mesh.lb.requests", instance="users-1") == 1


def test_capture_is_strict_so_bad_values_fail_the_test():
    with capture(), pytest.raises(ValueError, match="duration"):
        mesh.record_call_success("users", "get_user", duration=-1)


def test_unknown_attribute_names_are_reported():
    with capture() as captured, pytest.raises(LookupError, match="no single attribute named 'colour'"):
        captured.value("mesh.lb.requests", colour="red")


def test_a_captured_point_lists_its_exemplars():
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with capture() as captured:
        LoadBalancerMetrics().observe_request_duration("api", "a", 0.2)  # outside a span: none
        with tracer.start_as_current_span("call") as span:
            LoadBalancerMetrics().observe_request_duration("api", "a", 3.0)
        [exemplar] = captured.exemplars("mesh.lb.request.duration", instance="a")
    assert exemplar.value == 3.0
    assert exemplar.trace_id == f"{span.get_span_context().trace_id:032x}"
    assert exemplar.span_id == f"{span.get_span_context().span_id:016x}"
