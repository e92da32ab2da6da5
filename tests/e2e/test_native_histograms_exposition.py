"""A real Prometheus (2.42, native histograms and exemplar storage on) scrapes our exposition.

One tiny HTTP server answers through ``respond()``: the ``native`` job gets the
delimited protobuf (Prometheus asks for it first), the ``text`` job the same data
as OpenMetrics (``native_histograms`` off for it). The data holds an explicit
histogram with exemplars whose trace ids we chose, and one latency metric as both
a 15-bucket explicit histogram and an exponential one of 100,000 lognormal samples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest
from opentelemetry.sdk.metrics import Exemplar, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry

from meshmetrics._serve.exposition import EndpointAuth, respond
from meshmetrics._serve.protobuf import CONTENT_TYPE
from meshmetrics._serve.translate import TranslatingCollector
from tests.e2e.servers import PrometheusServer, prometheus_server

pytestmark = pytest.mark.e2e

SAMPLES = 100_000
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 25.0]
TRACE_IDS = [0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00000000000000000000000000000ABC]
SPAN_ID = 0x00F067AA0BA902B7
QUANTILES = (0.5, 0.9, 0.99)


@dataclasses.dataclass
class Lognormal:
    data: MetricsData
    exact: dict[float, float]  # quantile -> the order statistic Prometheus' rank lands on


def lognormal_data() -> Lognormal:
    """100,000 lognormal latencies recorded once into an explicit and an exponential histogram."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource({"service.name": "native-e2e"}),
        views=[
            View(instrument_name="rpc.latency", aggregation=ExplicitBucketHistogramAggregation(BOUNDS)),
            View(
                instrument_name="rpc.latency",
                name="rpc.latency.exponential",
                aggregation=ExponentialBucketHistogramAggregation(),
            ),
        ],
    )
    rng = random.Random(20261129)
    values = [rng.lognormvariate(-2.0, 1.0) for _ in range(SAMPLES)]
    try:
        histogram = provider.get_meter("meshmetrics", "1.0").create_histogram("rpc.latency", unit="s")
        attributes = {"service": "checkout"}
        for value in values:
            histogram.record(value, attributes)
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    # the engine may one day produce both for one metric: give the exponential one the same name
    (resource_metrics,) = data.resource_metrics
    (scope_metrics,) = resource_metrics.scope_metrics
    metrics = [dataclasses.replace(metric, name="rpc.latency") for metric in scope_metrics.metrics]
    assert sorted(type(metric.data).__name__ for metric in metrics) == ["ExponentialHistogram", "Histogram"]
    ordered = sorted(values)
    exact = {q: ordered[math.ceil(q * SAMPLES) - 1] for q in QUANTILES}
    now = time.time_ns()
    exemplars = [
        Exemplar({}, 0.02 + i, now - i * 10**6, SPAN_ID + i, trace) for i, trace in enumerate(TRACE_IDS)
    ]
    traced = Metric(
        "checkout.latency",
        "Checkout latency.",
        "s",
        Histogram(
            [
                HistogramDataPoint(
                    {"service": "checkout"}, now, now, 2, 1.06, [0, 1, 1], [0.1, 1.0], 0.02, 1.02, exemplars
                )
            ],
            AggregationTemporality.CUMULATIVE,
        ),
    )
    scope = ScopeMetrics(InstrumentationScope("meshmetrics", "1.0"), [*metrics, traced], "")
    merged = MetricsData([ResourceMetrics(resource_metrics.resource, [scope], "")])
    return Lognormal(merged, exact)


@contextmanager
def serving(data: MetricsData) -> Iterator[tuple[int, dict[str, set[str]]]]:
    """Serve ``data`` on 127.0.0.1; ``?native=off`` turns native histograms off. Yields (port, content types by job)."""
    registry = CollectorRegistry()
    registry.register(TranslatingCollector(lambda: data))
    served: dict[str, set[str]] = {"native": set(), "text": set()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            native = "native=off" not in self.path
            status, headers, body = respond(
                method="GET",
                path=self.path,
                authorization=None,
                accept=self.headers.get("Accept"),
                accept_encoding=self.headers.get("Accept-Encoding"),
                registry=registry,
                auth=EndpointAuth(),
                native_histograms=native,
            )
            served["native" if native else "text"].add(dict(headers)["Content-Type"])
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def prometheus_with_native_histograms(target: str) -> Iterator[PrometheusServer]:
    """Prometheus with ``--enable-feature=native-histograms,exemplar-storage``; jobs ``native`` and ``text``."""
    config = (
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: native, static_configs: [{{targets: ['{target}']}}]}}\n"
        f"  - {{job_name: text, params: {{native: ['off']}}, static_configs: [{{targets: ['{target}']}}]}}\n"
    )
    with prometheus_server(
        [target], config_text=config, flags=("--enable-feature=native-histograms,exemplar-storage",)
    ) as prometheus:
        yield prometheus


def query_exemplars(prometheus: PrometheusServer, expression: str) -> set[str]:
    now = time.time()
    url = f"http://127.0.0.1:{prometheus.port}/api/v1/query_exemplars?" + urlencode(
        {"query": expression, "start": now - 3600, "end": now + 3600}
    )
    with urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return {exemplar["labels"]["trace_id"] for series in body["data"] for exemplar in series["exemplars"]}


def wait_for_exemplars(prometheus: PrometheusServer, expression: str, timeout: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = query_exemplars(prometheus, expression)
        if len(found) >= len(TRACE_IDS) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def test_real_prometheus_reads_exemplars_and_native_histograms() -> None:
    lognormal = lognormal_data()
    with (
        serving(lognormal.data) as (port, served),
        prometheus_with_native_histograms(f"127.0.0.1:{port}") as prometheus,
    ):
        up = prometheus.wait_for('up{job=~"native|text"} == 1')
        assert len(prometheus.wait_for('count(up{job=~"native|text"} == 1) == 2')) == 1, up

        # (a) the trace ids we chose, through OpenMetrics and through protobuf
        wanted = {f"{trace:032x}" for trace in TRACE_IDS}
        assert wait_for_exemplars(prometheus, 'checkout_latency_seconds_bucket{job="text"}') == wanted
        assert wait_for_exemplars(prometheus, 'checkout_latency_seconds_bucket{job="native"}') == wanted
        assert served["text"] == {
            "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"
        }
        assert served["native"] == {CONTENT_TYPE}

        # (b) quantiles of the native histogram, within the resolution of its scale
        expression = 'rpc_latency_seconds{job="native"}'
        (series,) = prometheus.wait_for(expression)
        assert "histogram" in series, series  # stored as a native histogram
        count = prometheus.query(f"histogram_count({expression})")
        assert float(count[0]["value"][1]) == SAMPLES
        scale = native_scale(lognormal.data)
        base = 2 ** (2**-scale)
        for q, exact in lognormal.exact.items():
            (result,) = prometheus.query(f"histogram_quantile({q}, {expression})")
            estimate = float(result["value"][1])
            assert abs(estimate - exact) / exact <= base - 1, (q, estimate, exact, scale)
            # stronger: the estimate lies in the very bucket (base**(k-1), base**k] holding the exact value
            k = math.ceil(math.log(exact, base))
            assert base ** (k - 1) * (1 - 1e-9) <= estimate <= base**k * (1 + 1e-9), (q, estimate, exact, k)
            print(f"p{q * 100:g}: exact {exact:.6f} native {estimate:.6f} scale {scale}")

        # the classic buckets of the same metric reach a text scraper; a protobuf-only classic histogram too
        buckets = prometheus.query('rpc_latency_seconds_bucket{job="text"}')
        assert len(buckets) == len(BOUNDS) + 1
        assert {b["metric"]["le"]: b["value"][1] for b in buckets}["+Inf"] == str(SAMPLES)
        classic = prometheus.query('checkout_latency_seconds_bucket{job="native"}')
        assert {b["metric"]["le"]: b["value"][1] for b in classic} == {"0.1": "0", "1.0": "1", "+Inf": "2"}


def native_scale(data: MetricsData) -> int:
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = metric.data.data_points
                if hasattr(points[0], "scale"):
                    return min(int(points[0].scale), 8)
    raise AssertionError("no exponential histogram")
