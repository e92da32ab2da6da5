"""Bad input gets a clear answer and loses nothing else."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import meshmetrics
from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics
from meshmetrics._policy.sanitize import to_label


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  api  ", "api"),
        ("a\x00b\nc", "a\ufffdb\ufffdc"),
        (b"caf\xc3\xa9", "café"),
        (b"\xff\xfe", "\ufffd\ufffd"),
        ("", "_EMPTY"),
        ("   ", "_EMPTY"),
        (503, "503"),
        ("x" * 500, "x" * 128),
        ("\ud800", "\ufffd"),
    ],
)
def test_label_sanitising(raw, expected):
    assert to_label(raw, 128) == expected


def test_invalid_measurements_are_dropped_counted_and_nothing_else_lost(configured):
    lb = LoadBalancerMetrics()
    mesh = ServiceMeshMetrics()
    lb.observe_request_duration(service="api", instance="a", duration=0.1)
    for bad in (-1.0, math.nan, math.inf, None, "0.1", True, 10**400):
        lb.observe_request_duration(service="api", instance="a", duration=bad)  # type: ignore[arg-type]
    lb.set_instance_health("api", "a", 1.5)
    mesh.set_health_status("api", "a", "on fire")
    lb.record_request(service=None, instance="a", strategy="random")  # type: ignore[arg-type]
    lb.record_request(service=["not", "hashable"], instance="a", strategy="random")  # type: ignore[arg-type]
    RetryMetrics().record_attempt("api", "op", 0)

    c = configured.captured
    assert c.histogram("mesh.lb.request.duration").count == 1
    assert (
        c.value(
            "meshmetrics.measurements.rejected", metric="mesh.lb.request.duration", reason="invalid_value"
        )
        == 7
    )
    assert c.value("meshmetrics.measurements.rejected", metric="mesh.lb.instance.health_score") == 1
    assert (
        c.value("meshmetrics.measurements.rejected", metric="mesh.health.status", reason="invalid_attribute")
        == 1
    )
    assert (
        c.value("meshmetrics.measurements.rejected", metric="mesh.lb.requests", reason="invalid_attribute")
        == 2
    )
    assert c.value("meshmetrics.measurements.rejected", metric="mesh.retry.attempts") == 1
    assert c.points("mesh.health.status") == []
    assert c.value("mesh.lb.requests") == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: LoadBalancerMetrics().observe_request_duration("api", "a", -0.5),
            r"mesh.lb.request.duration: duration=-0.5 is invalid: must be finite and >= 0",
        ),
        (lambda: LoadBalancerMetrics().observe_request_duration("api", "a", math.nan), r"duration=nan"),
        (
            lambda: LoadBalancerMetrics().set_instance_health("api", "a", 2),
            r"score=2 is invalid: must be within \[0, 1\]",
        ),
        (
            lambda: RetryMetrics().record_attempt("api", "op", 0),
            r"attempt=0 is invalid: must be an integer within \[1, 2\*\*53\]",
        ),
        (
            lambda: ServiceMeshMetrics().set_health_status("api", "a", "on fire"),
            r"mesh.health.state='on fire' is invalid: must be one of healthy",
        ),
        (
            lambda: LoadBalancerMetrics().record_request(None, "a", "random"),
            r"mesh.service=None is invalid: is required",
        ),
        (
            lambda: LoadBalancerMetrics().record_request(1.5, "a", "random"),
            r"mesh.service=1.5 is invalid: must be a string",
        ),
    ],
)
def test_strict_mode_raises_value_error_naming_field_value_and_rule(strict_configured, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_strict_from_environment(monkeypatch):
    monkeypatch.setenv("MESHMETRICS_STRICT", "1")
    with (
        meshmetrics.configure(prometheus=False, set_global=False),
        pytest.raises(meshmetrics.InvalidMeasurement),
    ):
        LoadBalancerMetrics().observe_request_duration("api", "a", -1)


def test_unknown_strategy_folds_into_other_and_is_counted(configured):
    lb = LoadBalancerMetrics()
    lb.record_request("api", "a", "my_custom_strategy")
    lb.record_request("api", "a", "my_custom_strategy")
    c = configured.captured
    assert c.value("mesh.lb.requests", strategy="_OTHER") == 2
    assert (
        c.value("meshmetrics.attribute.overflows", metric="mesh.lb.requests", attribute="mesh.lb.strategy")
        == 2
    )


def test_bounded_attribute_folds_after_its_budget_and_loses_no_count(configured):
    lb = LoadBalancerMetrics()
    for i in range(150):
        lb.record_request("api", f"pod-{i}", "random")
    lb.record_request("api", "pod-0", "random")  # a kept value stays kept
    c = configured.captured
    instances = {s["mesh.instance"] for s in c.series("mesh.lb.requests")}
    assert len(instances) == 101  # the mesh.instance budget (100) + _OTHER
    assert c.value("mesh.lb.requests", instance="_OTHER") == 50
    assert c.value("mesh.lb.requests") == 151
    assert c.value("meshmetrics.attribute.overflows", attribute="mesh.instance") == 50


def test_label_values_are_sanitised_before_export(configured):
    LoadBalancerMetrics().record_request("api\n\x00", b"\xff" + b"i" * 300, "random")
    series = configured.captured.series("mesh.lb.requests")
    assert series == [
        {"mesh.service": "api", "mesh.instance": "\ufffd" + "i" * 127, "mesh.lb.strategy": "random"}
    ]
    list(text_string_to_metric_families(configured.scrape()))


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(service=anything, instance=anything, value=anything, state=anything)
def test_production_mode_never_raises_and_exposition_always_parses(
    configured, service, instance, value, state
):
    lb, retry, mesh = LoadBalancerMetrics(), RetryMetrics(), ServiceMeshMetrics()
    lb.record_request(service, instance, state)
    lb.observe_request_duration(service, instance, value, error=state)
    lb.set_instance_health(service, instance, value)
    lb.set_endpoints(service, healthy=value)
    retry.record_attempt(service, instance, value)
    retry.record_call(service, instance, succeeded=bool(state), attempts=value, duration=value)
    mesh.record_call_failure(service, instance, value, error=state)
    mesh.set_health_status(service, instance, state)
    mesh.circuit_breakers.record_state_change(service, state, "open")
    mesh.circuit_breakers.set_failure_rate(service, value)
    list(text_string_to_metric_families(configured.scrape()))
