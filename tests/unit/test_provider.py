"""configure(): readers, Views, Prometheus naming, flush/shutdown semantics and SDK traps."""

from __future__ import annotations

import socket
import threading
import time
from urllib.request import urlopen

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

import meshmetrics
from meshmetrics import LoadBalancerMetrics, ServiceMeshMetrics, semconv
from tests.conftest import parse_samples, sample


def test_prometheus_names_follow_the_registry(configured):
    lb = LoadBalancerMetrics()
    mesh = ServiceMeshMetrics()
    lb.record_request(service="api", instance="api-1", strategy="round_robin")
    lb.record_request(service="api", instance="api-1", strategy="round_robin")
    lb.observe_request_duration(service="api", instance="api-1", duration=0.15)
    lb.connection_opened(service="api", instance="api-1")
    mesh.set_health_status("api", "api-1", "healthy")
    samples = configured.samples()
    requests = semconv.METRICS["mesh.lb.requests"].prometheus_name
    assert requests == "mesh_lb_requests_total"
    assert (
        sample(samples, requests, mesh_service="api", mesh_instance="api-1", mesh_lb_strategy="round_robin")
        == 2
    )
    duration = semconv.METRICS["mesh.lb.request.duration"].prometheus_name
    assert duration == "mesh_lb_request_duration_seconds"
    assert sample(samples, duration + "_count", mesh_service="api", mesh_instance="api-1") == 1
    assert sample(samples, duration + "_sum", mesh_service="api", mesh_instance="api-1") == pytest.approx(
        0.15
    )
    assert sample(samples, duration + "_bucket", mesh_service="api", mesh_instance="api-1", le="0.1") == 0
    assert sample(samples, duration + "_bucket", mesh_service="api", mesh_instance="api-1", le="0.25") == 1
    connections = semconv.METRICS["mesh.lb.connections.active"].prometheus_name
    assert sample(samples, connections, mesh_service="api", mesh_instance="api-1") == 1
    health = semconv.METRICS["mesh.health.status"].prometheus_name
    assert (
        sample(samples, health, mesh_service="api", mesh_instance="api-1", mesh_health_state="healthy") == 1
    )


def test_every_registry_metric_gets_its_prometheus_name(configured):
    from tests.unit.test_facades import record_every_metric

    record_every_metric()
    names = {name for name, _ in configured.samples()}
    for definition in semconv.METRICS.values():
        if definition.name.startswith("meshmetrics."):
            continue
        base = definition.prometheus_name
        expected = base + "_count" if definition.instrument == "histogram" else base
        assert expected in names, definition.name


def test_attributes_outside_the_declared_set_never_reach_an_exporter(configured):
    # a user's own instrument on the meshmetrics meter with the same name can add attributes;
    # the conventions View keeps only the declared keys
    meter = configured.handle.meter_provider.get_meter("meshmetrics")
    counter = meter.create_counter("mesh.lb.requests", unit="{request}")
    counter.add(
        1, {"mesh.service": "api", "mesh.instance": "a", "mesh.lb.strategy": "random", "user.id": "42"}
    )
    series = configured.captured.series("mesh.lb.requests")
    assert series == [{"mesh.service": "api", "mesh.instance": "a", "mesh.lb.strategy": "random"}]


def test_cardinality_limit_view_is_per_metric():
    views = meshmetrics._setup.provider.conventions_views("standard")
    assert {v._instrument_name for v in views} == set(semconv.METRICS)
    assert all(v._aggregation_cardinality_limit == 2000 for v in views)


def test_minimal_detail_drops_instance_from_histograms_only():
    reader = InMemoryMetricReader()
    with meshmetrics.configure(
        readers=[reader], prometheus=False, set_global=False, detail="minimal", environ={}
    ):
        lb = LoadBalancerMetrics()
        lb.observe_request_duration(service="api", instance="api-1", duration=0.1)
        lb.record_request(service="api", instance="api-1", strategy="random")
        captured = meshmetrics.testing.CapturedMetrics(reader)
        assert captured.series("mesh.lb.request.duration") == [{"mesh.service": "api"}]
        assert captured.series("mesh.lb.requests")[0]["mesh.instance"] == "api-1"


def test_configure_from_environment_alone(monkeypatch):
    port = _free_port()
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    handle = meshmetrics.configure(set_global=False)
    try:
        assert handle.prometheus_url == f"http://127.0.0.1:{port}/metrics"
        LoadBalancerMetrics().record_request(service="api", instance="i", strategy="random")
        with urlopen(handle.prometheus_url, timeout=5) as response:
            samples = parse_samples(response.read().decode())
        info = [labels for (name, labels) in samples if name == "target_info"][0]
        assert ("service_name", "from-env") in info
        assert ("deployment_environment", "test") in info
        assert (
            sample(
                samples,
                "mesh_lb_requests_total",
                mesh_service="api",
                mesh_instance="i",
                mesh_lb_strategy="random",
            )
            == 1
        )
    finally:
        handle.shutdown()


def test_sdk_disabled_is_a_no_op(monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    handle = meshmetrics.configure(set_global=False)
    assert not handle.enabled
    assert handle.prometheus_url is None
    LoadBalancerMetrics().record_request(service="api", instance="i", strategy="random")  # no error
    assert handle.shutdown()


def test_facades_are_no_ops_before_configure():
    assert meshmetrics.current_handle() is None
    lb = LoadBalancerMetrics()
    lb.record_request(service="api", instance="i", strategy="random")
    lb.observe_request_duration(service="api", instance="i", duration=-1)  # not even validated


def test_configure_twice_frees_the_first_server_and_port():
    first = meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, environ={}
    )
    port = first.prometheus_port
    threads_before = threading.active_count()
    second = meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=port, set_global=False, environ={}
    )
    try:
        assert second.prometheus_port == port  # the port was freed and could be bound again
        assert threading.active_count() <= threads_before
        assert meshmetrics.current_handle() is second
    finally:
        second.shutdown()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # and freed again


def test_shutdown_is_idempotent_and_configure_works_after_it():
    handle = meshmetrics.configure(prometheus=False, set_global=False, environ={})
    assert handle.shutdown() is True
    assert handle.shutdown() is True
    again = meshmetrics.configure(prometheus=False, set_global=False, environ={})
    assert again.shutdown()


def test_context_manager_shuts_down():
    with meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, environ={}
    ) as handle:
        port = handle.prometheus_port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_handle_force_flush_does_not_duplicate_prometheus_series(configured):
    """SDK trap: MeterProvider.force_flush() queues a Prometheus collection -> duplicate series."""
    LoadBalancerMetrics().record_request(service="api", instance="i", strategy="random")
    for _ in range(3):
        configured.handle.force_flush()
    configured.samples()  # parse_samples asserts there is no duplicate series
    configured.samples()


def test_sdk_provider_force_flush_still_duplicates_series():
    """Pins the SDK behaviour the handle works around; if this fails, the SDK fixed it."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    provider.get_meter("m").create_counter("c").add(1, {"k": "v"})
    provider.force_flush()
    provider.force_flush()
    text = generate_latest(registry).decode()
    provider.shutdown()
    assert text.count('c_total{k="v"') > 1


def test_exponential_view_is_refused_when_prometheus_is_on():
    view = View(instrument_name="mesh.call.duration", aggregation=ExponentialBucketHistogramAggregation())
    with pytest.raises(ValueError, match="exponential"):
        meshmetrics.configure(
            views=[view], prometheus_host="127.0.0.1", prometheus_port=0, set_global=False, environ={}
        )


def test_sdk_exponential_histogram_breaks_a_prometheus_scrape():
    """Pins the SDK trap the check above prevents."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    view = View(instrument_name="h", aggregation=ExponentialBucketHistogramAggregation())
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], views=[view], shutdown_on_exit=False
    )
    provider.get_meter("m").create_histogram("h").record(1.0)
    try:
        text = generate_latest(registry).decode()
        assert "h_bucket" not in text  # the histogram is lost from the scrape at best
    except Exception:
        pass  # or the whole scrape fails
    finally:
        provider.shutdown()


def test_exponential_on_otlp_keeps_prometheus_explicit():
    handle = meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        otlp_endpoint="http://127.0.0.1:9",  # nothing listens: the push reader just exists
        otlp_histogram_aggregation="base2_exponential_bucket_histogram",
        export_interval=3600,
        set_global=False,
        environ={},
    )
    try:
        ServiceMeshMetrics().record_call_success(service="api", operation="op", duration=0.3)
        with urlopen(handle.prometheus_url, timeout=5) as response:
            samples = parse_samples(response.read().decode())
        assert (
            sample(
                samples,
                "mesh_call_duration_seconds_bucket",
                mesh_service="api",
                mesh_operation="op",
                mesh_outcome="success",
                le="0.5",
            )
            == 1
        )
    finally:
        assert handle.shutdown(timeout=3) is False  # the final export could not reach anything


def test_flush_and_shutdown_report_truthfully_and_stay_bounded_with_no_collector():
    # a TCP server that accepts and never answers: the worst kind of collector
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=f"http://127.0.0.1:{port}/v1/metrics",
            otlp_protocol="http/protobuf",
            export_interval=3600,
            set_global=False,
            environ={"OTEL_EXPORTER_OTLP_TIMEOUT": "500"},
        )
        ServiceMeshMetrics().record_call_success(service="api", operation="op", duration=0.3)
        started = time.monotonic()
        assert handle.force_flush(timeout=2) is False
        assert handle.last_export_succeeded is False
        assert handle.shutdown(timeout=2) is False
        assert time.monotonic() - started < 6
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_secrets_in_logs():
    import structlog

    with structlog.testing.capture_logs() as logs:
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint="http://127.0.0.1:9",
            otlp_headers={"authorization": "Bearer s3cr3t-token"},
            export_interval=3600,
            set_global=False,
            environ={"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=another-s3cr3t"},
        )
        handle.shutdown(timeout=2)
    assert any(entry["event"] == "meshmetrics_configured" for entry in logs)
    assert "s3cr3t" not in repr(logs)
