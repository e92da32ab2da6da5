"""The product path, end to end: configure(), the facades inside real spans, a real Prometheus.

Exemplars recorded on the fast path inside sampled spans of a real
``TracerProvider`` reach Prometheus (``/api/v1/query_exemplars`` returns the
trace ids of the spans this test made; none with ``always_off``), and with
``prometheus_native_histograms=True`` a latency facade's 100,000 lognormal
samples are stored as one native histogram whose quantiles are within the
resolution of its scale, while a text scrape keeps the classic buckets.
"""

from __future__ import annotations

import math
import random
import time
from urllib.request import Request, urlopen

import pytest
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import ExponentialHistogram, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from tests.e2e.test_native_histograms_exposition import prometheus_with_native_histograms, query_exemplars

pytestmark = pytest.mark.e2e
SAMPLES = 100_000


def _configure(**kwargs: object) -> meshmetrics.MetricsHandle:
    return meshmetrics.configure(
        prometheus_port=0, prometheus_host="127.0.0.1", set_global=False, environ={}, **kwargs
    )


def _target(handle: meshmetrics.MetricsHandle) -> str:
    assert handle.prometheus_port is not None
    return f"127.0.0.1:{handle.prometheus_port}"


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_off"])
def test_exemplars_link_latency_to_the_spans_that_made_it(exemplar_filter):
    tracer = TracerProvider().get_tracer("e2e")
    handle = _configure(exemplar_filter=exemplar_filter)
    lb = LoadBalancerMetrics()
    made: set[str] = set()
    try:
        with prometheus_with_native_histograms(_target(handle)) as prometheus:
            prometheus.wait_for('up{job="text"} == 1')
            deadline = time.monotonic() + 20
            found: set[str] = set()
            while time.monotonic() < deadline:
                for latency in (0.003, 0.04, 0.3):
                    with tracer.start_as_current_span("call") as span:
                        made.add(f"{span.get_span_context().trace_id:032x}")
                        lb.observe_request_duration("api", "api-1", latency)
                        lb.record_request("api", "api-1", "round_robin")
                time.sleep(1.2)  # a scrape sees each batch
                found = query_exemplars(prometheus, "mesh_lb_request_duration_seconds_bucket")
                if exemplar_filter == "trace_based" and len(found) >= 3:
                    break
            if exemplar_filter == "always_off":
                assert found == set()
                assert query_exemplars(prometheus, "mesh_lb_requests_total") == set()
            else:
                assert found and found <= made  # every exemplar is one of the spans this test made
                assert query_exemplars(prometheus, "mesh_lb_requests_total") <= made
    finally:
        handle.shutdown()


def test_a_latency_facade_becomes_a_native_histogram_with_the_classic_buckets_beside_it():
    exponential = InMemoryMetricReader(
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
    )
    handle = _configure(prometheus_native_histograms=True, readers=[exponential])
    lb = LoadBalancerMetrics()
    rng = random.Random(20261129)
    values = [rng.lognormvariate(-2.0, 1.0) for _ in range(SAMPLES)]
    try:
        for value in values:
            lb.observe_request_duration("api", "api-1", value)
        scale = next(
            point.scale
            for resource in exponential.get_metrics_data().resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "mesh.lb.request.duration" and isinstance(metric.data, ExponentialHistogram)
            for point in metric.data.data_points
        )
        with prometheus_with_native_histograms(_target(handle)) as prometheus:
            expression = 'mesh_lb_request_duration_seconds{job="native"}'
            (series,) = prometheus.wait_for(expression)
            assert "histogram" in series, series  # one series: a native histogram
            assert float(prometheus.query(f"histogram_count({expression})")[0]["value"][1]) == SAMPLES
            ordered = sorted(values)
            schema = min(scale, 8)  # Prometheus keeps schemas up to 8
            bound = 2 ** (2**-schema) - 1
            for q in (0.5, 0.9, 0.99):
                exact = ordered[math.ceil(q * SAMPLES) - 1]
                (result,) = prometheus.query(f"histogram_quantile({q}, {expression})")
                estimate = float(result["value"][1])
                assert abs(estimate - exact) / exact <= bound, (q, estimate, exact, schema)
        request = Request(handle.prometheus_url or "", headers={"Accept": "text/plain"})
        with urlopen(request, timeout=10) as response:
            text = response.read().decode()
        buckets = [
            s
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "mesh_lb_request_duration_seconds_bucket"
        ]
        bounds = meshmetrics.semconv.METRICS["mesh.lb.request.duration"].buckets
        assert (
            len(buckets) == len(bounds) + 1 and max(s.value for s in buckets) == SAMPLES
        )  # the classic ones
    finally:
        handle.shutdown()
