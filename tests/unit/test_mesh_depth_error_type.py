"""error.type is absent on success, at both exporters (OTLP/in-memory and Prometheus)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics


def record_successes_beside_failures() -> None:
    mesh, lb = ServiceMeshMetrics(), LoadBalancerMetrics()
    mesh.record_call_success("api", "get", 0.1)
    mesh.record_call_failure("api", "get", 0.1, error=503)
    with mesh.track_call("api", "list"):
        pass
    mesh.record_registration("api")
    mesh.record_registration("api", success=False, error="timeout")
    with lb.track_request("api", "api-1", "round_robin"):
        pass
    with lb.track_request("api", "api-1", "round_robin") as attempt:
        attempt.failed(503)
    RetryMetrics().record_call("api", "get", succeeded=True, attempts=1, duration=0.1)


SUCCESS_SERIES = {
    "mesh.call.duration": {"mesh.outcome": "success"},
    "mesh.registry.operations": {"mesh.outcome": "success"},
    "mesh.lb.request.duration": {},
}


def test_success_series_carry_no_error_type_in_memory(configured):
    record_successes_beside_failures()
    for metric, where in SUCCESS_SERIES.items():
        series = configured.captured.series(metric, **where)
        plain = [s for s in series if "error.type" not in s]
        assert plain, f"{metric}: no series without error.type in {series}"
        assert all(s.get("error.type") != "" for s in series), series


def test_success_series_carry_no_error_type_at_the_prometheus_endpoint(configured):
    record_successes_beside_failures()
    empty = [
        (sample.name, key)
        for family in text_string_to_metric_families(configured.scrape())
        for sample in family.samples
        for key, value in sample.labels.items()
        if value == "" and not key.startswith("otel_scope")
    ]
    assert empty == []


def test_an_empty_error_is_no_error(configured):
    LoadBalancerMetrics().observe_request_duration("api", "api-1", 0.1, error="")
    assert configured.captured.series("mesh.lb.request.duration") == [
        {"mesh.service": "api", "mesh.instance": "api-1"}
    ]
