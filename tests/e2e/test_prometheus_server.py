"""A real Prometheus server scrapes meshmetrics' endpoint; its query API returns what was recorded."""

from __future__ import annotations

import pytest

import meshmetrics
from meshmetrics import CircuitBreakerMetrics, LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics
from tests.e2e.servers import prometheus_server

pytestmark = pytest.mark.e2e


def _values(result: list[dict], label: str) -> dict[str, float]:
    return {series["metric"][label]: float(series["value"][1]) for series in result}


def test_real_prometheus_scrapes_recorded_values():
    handle = meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, service_name="e2e", environ={}
    )
    try:
        lb, retry, mesh = LoadBalancerMetrics(), RetryMetrics(), ServiceMeshMetrics()
        for _ in range(7):
            lb.record_request(service="api", instance="api-1", strategy="round_robin")
        for _ in range(3):
            lb.record_request(service="api", instance="api-2", strategy="round_robin")
        for duration in (0.02, 0.2, 2.0):
            mesh.record_call_success("api", "get_user", duration)
        retry.record_attempt("api", "get_user", 2)
        CircuitBreakerMetrics().record_state_change("api", "closed", "open")

        with prometheus_server([f"127.0.0.1:{handle.prometheus_port}"]) as prometheus:
            result = prometheus.wait_for('mesh_lb_requests_total{mesh_service="api"}')
            assert _values(result, "mesh_instance") == {"api-1": 7.0, "api-2": 3.0}
            count = prometheus.wait_for('mesh_call_duration_seconds_count{mesh_outcome="success"}')
            assert float(count[0]["value"][1]) == 3.0
            le = prometheus.query('mesh_call_duration_seconds_bucket{le="0.25"}')
            assert float(le[0]["value"][1]) == 2.0
            assert prometheus.query('mesh_retry_attempts_total{mesh_retry_attempt="2"}')[0]["value"][1] == "1"
            state = prometheus.query("mesh_circuit_breaker_state")
            assert _values(state, "mesh_circuit_breaker_state") == {
                "closed": 0.0,
                "open": 1.0,
                "half_open": 0.0,
                "forced_open": 0.0,
                "disabled": 0.0,
            }
            # the resource reaches Prometheus as target_info
            info = prometheus.query('target_info{service_name="e2e"}')
            assert len(info) == 1
            # quantiles work on the exported buckets
            p50 = prometheus.query("histogram_quantile(0.5, sum by (le) (mesh_call_duration_seconds_bucket))")
            assert 0.1 <= float(p50[0]["value"][1]) <= 0.25
            up = prometheus.targets_up()
            assert [t["health"] for t in up] == ["up"]
    finally:
        handle.shutdown()
