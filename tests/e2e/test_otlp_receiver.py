"""OTLP pushed to a real receiver (rotel); both exporters in one process agree on totals."""

from __future__ import annotations

from urllib.request import urlopen

import pytest

import meshmetrics
from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics
from tests.conftest import parse_samples, sample
from tests.e2e.servers import rotel_receiver

pytestmark = pytest.mark.e2e


def _record(lb: LoadBalancerMetrics, mesh: ServiceMeshMetrics, retry: RetryMetrics) -> None:
    for i in range(10):
        lb.record_request(service="api", instance=f"api-{i % 2}", strategy="least_connections")
    for duration in (0.003, 0.04, 0.3, 3.0):
        mesh.record_call_success("api", "get_user", duration)
    mesh.record_call_failure("api", "get_user", 0.5, error=TimeoutError())
    retry.record_attempt("api", "get_user", 1)
    retry.record_attempt("api", "get_user", 2)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_push_reaches_a_real_receiver(protocol):
    with rotel_receiver() as rotel:
        endpoint = rotel.grpc_endpoint if protocol == "grpc" else rotel.http_endpoint
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=endpoint,
            otlp_protocol=protocol,
            export_interval=60,
            service_name="e2e-otlp",
            set_global=False,
            environ={},
        )
        try:
            _record(LoadBalancerMetrics(), ServiceMeshMetrics(), RetryMetrics())
            assert handle.force_flush(timeout=10) is True
            point = rotel.wait_for(
                "mesh.lb.requests",
                **{"mesh.service": "api", "mesh.instance": "api-0", "mesh.lb.strategy": "least_connections"},
            )
            assert point["value"] == 5
            duration = rotel.wait_for(
                "mesh.call.duration",
                **{"mesh.service": "api", "mesh.operation": "get_user", "mesh.outcome": "success"},
            )
            assert duration["count"] == 4
            assert duration["sum"] == pytest.approx(3.343)
            assert duration["bounds"][:3] == [0.005, 0.01, 0.025]
            assert sum(duration["buckets"]) == 4
            failed = rotel.wait_for(
                "mesh.call.duration",
                **{
                    "mesh.service": "api",
                    "mesh.operation": "get_user",
                    "mesh.outcome": "failure",
                    "error.type": "timeout",
                },
            )
            assert failed["count"] == 1
            received = rotel.received()
            assert any(r.get("service.name") == "e2e-otlp" for r in received.resources)
        finally:
            handle.shutdown(timeout=10)


def test_measurements_recorded_just_before_shutdown_reach_the_receiver():
    with rotel_receiver() as rotel:
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=rotel.grpc_endpoint,
            export_interval=3600,
            set_global=False,
            environ={},
        )
        LoadBalancerMetrics().record_request(service="late", instance="i", strategy="random")
        assert handle.shutdown(timeout=10) is True
        point = rotel.wait_for(
            "mesh.lb.requests", **{"mesh.service": "late", "mesh.instance": "i", "mesh.lb.strategy": "random"}
        )
        assert point["value"] == 1


def test_prometheus_and_otlp_from_one_provider_agree():
    with rotel_receiver() as rotel:
        handle = meshmetrics.configure(
            prometheus_host="127.0.0.1",
            prometheus_port=0,
            otlp_endpoint=rotel.grpc_endpoint,
            export_interval=3600,
            set_global=False,
            environ={},
        )
        try:
            _record(LoadBalancerMetrics(), ServiceMeshMetrics(), RetryMetrics())
            assert handle.force_flush(timeout=10)
            with urlopen(handle.prometheus_url, timeout=5) as response:
                samples = parse_samples(response.read().decode())
            for instance in ("api-0", "api-1"):
                pulled = sample(
                    samples,
                    "mesh_lb_requests_total",
                    mesh_service="api",
                    mesh_instance=instance,
                    mesh_lb_strategy="least_connections",
                )
                pushed = rotel.wait_for(
                    "mesh.lb.requests",
                    **{
                        "mesh.service": "api",
                        "mesh.instance": instance,
                        "mesh.lb.strategy": "least_connections",
                    },
                )["value"]
                assert pulled == pushed == 5
            labels = {"mesh_service": "api", "mesh_operation": "get_user", "mesh_outcome": "success"}
            pushed = rotel.wait_for(
                "mesh.call.duration",
                **{"mesh.service": "api", "mesh.operation": "get_user", "mesh.outcome": "success"},
            )
            assert sample(samples, "mesh_call_duration_seconds_count", **labels) == pushed["count"] == 4
            assert sample(samples, "mesh_call_duration_seconds_sum", **labels) == pytest.approx(pushed["sum"])
            assert (
                sample(
                    samples,
                    "mesh_retry_attempts_total",
                    mesh_service="api",
                    mesh_operation="get_user",
                    mesh_retry_attempt="2",
                )
                == 1
            )
        finally:
            handle.shutdown(timeout=10)


def _received_points(rotel, service: str) -> dict:
    """Everything rotel holds for one service, keyed without the service label."""
    result = {}
    for (name, attributes), point in rotel.received().values.items():
        attrs = dict(attributes)
        if attrs.pop("mesh.service", None) == service:
            result[(name, frozenset(attrs.items()))] = {k: v for k, v in point.items() if k != "bounds"} | {
                "bounds": point.get("bounds")
            }
    return result


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_fast_path_and_sdk_path_push_the_same_otlp(temporality):
    with rotel_receiver() as rotel:
        for fast_path in (True, False):
            handle = meshmetrics.configure(
                prometheus=False,
                otlp_endpoint=rotel.grpc_endpoint,
                otlp_temporality=temporality,
                export_interval=3600,
                fast_path=fast_path,
                set_global=False,
                environ={},
            )
            try:
                service = f"fast-{fast_path}"
                lb, mesh, retry = LoadBalancerMetrics(), ServiceMeshMetrics(), RetryMetrics()
                for i in range(40):
                    lb.record_request(service, f"i-{i % 3}", "random")
                    lb.observe_request_duration(service, f"i-{i % 3}", (0.005, 0.02, 0.3, 7.0)[i % 4])
                    retry.record_attempt(service, "op", 1 + i % 3)
                    mesh.record_call_success(service, "op", 0.01 * i)
                lb.set_instance_health(service, "i-0", 0.5)
                lb.connection_opened(service, "i-0")
                assert handle.force_flush(timeout=10)
            finally:
                handle.shutdown(timeout=10)
        rotel.wait_for(
            "mesh.lb.requests",
            **{"mesh.service": "fast-False", "mesh.instance": "i-0", "mesh.lb.strategy": "random"},
        )
        fast, plain = _received_points(rotel, "fast-True"), _received_points(rotel, "fast-False")
        assert len(fast) >= 12
        assert fast == plain
