"""The fast path (meshmetrics' own cells) exports exactly what the plain SDK path exports."""

from __future__ import annotations

import math
import threading
from urllib.request import urlopen

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

import meshmetrics
from meshmetrics import CircuitBreakerMetrics, LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics
from meshmetrics._engine.series import OVERFLOW_ATTRIBUTES, Table
from tests.conftest import parse_samples

DELTA = AggregationTemporality.DELTA
CUMULATIVE = AggregationTemporality.CUMULATIVE


def workload(round_: int) -> None:
    lb, retry, mesh, breakers = (
        LoadBalancerMetrics(),
        RetryMetrics(),
        ServiceMeshMetrics(),
        CircuitBreakerMetrics(),
    )
    for i in range(50 + round_):
        instance = f"api-{i % 3}"
        lb.record_request("api", instance, "round_robin")
        # values on, below and above bucket boundaries
        lb.observe_request_duration("api", instance, (0.005, 0.0049, 0.1, 0.2500001, 12.0)[i % 5])
        if i % 7 == 0:
            lb.observe_request_duration("api", instance, 0.3, error=TimeoutError())
            lb.record_error("api", instance, TimeoutError())
        retry.record_attempt("api", "get", 1 + i % 12)
        retry.record_call("api", "get", succeeded=i % 4 != 0, attempts=1 + i % 4, duration=0.01 * i)
        mesh.record_call_success("api", "get", 0.001 * i)
    lb.connection_opened("api", "api-0")
    lb.connection_opened("api", "api-1")
    lb.connection_closed("api", "api-1")
    lb.set_instance_health("api", "api-0", 0.5 + 0.1 * round_)
    lb.set_endpoints("api", healthy=2 + round_, unhealthy=1)
    mesh.set_health_status("api", "api-0", ("healthy", "degraded")[round_ % 2])
    breakers.record_state_change("api", "closed", "open")
    lb.observe_request_duration("api", "api-0", -1)  # rejected, counted


def snapshot(reader: MetricReader) -> dict:
    data = reader.get_metrics_data()
    result = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = {}
                for p in metric.data.data_points:
                    key = frozenset(p.attributes.items())
                    if hasattr(p, "bucket_counts"):
                        points[key] = (p.count, round(p.sum, 9), tuple(p.bucket_counts), p.min, p.max)
                    else:
                        points[key] = p.value
                temporality = getattr(metric.data, "aggregation_temporality", None)
                result[metric.name] = (type(metric.data).__name__, temporality, metric.unit, points)
    return result


def run(
    fast_path: bool, temporality: AggregationTemporality, detail: str = "standard", views=()
) -> list[dict]:
    reader = InMemoryMetricReader(
        preferred_temporality={
            Counter: temporality,
            Histogram: temporality,
            ObservableCounter: temporality,
            UpDownCounter: CUMULATIVE,
        }
    )
    handle = meshmetrics.configure(
        readers=[reader],
        prometheus=False,
        fast_path=fast_path,
        detail=detail,
        views=list(views),
        set_global=False,
        environ={},
    )
    try:
        collections = []
        for round_ in range(3):
            workload(round_)
            collections.append(snapshot(reader))
        return collections
    finally:
        handle.shutdown()


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA])
@pytest.mark.parametrize("detail", ["standard", "minimal"])
def test_fast_path_equals_sdk_path(temporality, detail):
    fast = run(True, temporality, detail)
    plain = run(False, temporality, detail)
    assert fast == plain
    names = set(fast[0])
    assert {
        "mesh.lb.requests",
        "mesh.lb.request.duration",
        "mesh.lb.endpoints",
        "mesh.health.status",
        "mesh.lb.connections.active",
        "meshmetrics.measurements.rejected",
    } <= names


def test_fast_path_is_really_used():
    with meshmetrics.configure(prometheus=False, set_global=False, environ={}) as handle:
        assert handle.runtime.tables["mesh.lb.requests"].sdk_instrument is None
    with meshmetrics.configure(prometheus=False, set_global=False, fast_path=False, environ={}) as handle:
        assert all(table.sdk_instrument is not None for table in handle.runtime.tables.values())


def test_a_user_view_on_an_instrument_keeps_the_sdk_path_for_it():
    view = View(
        instrument_name="mesh.lb.request.duration", aggregation=ExplicitBucketHistogramAggregation([0.5, 1.0])
    )
    reader = InMemoryMetricReader()
    with meshmetrics.configure(
        readers=[reader], prometheus=False, views=[view], set_global=False, environ={}
    ) as handle:
        assert handle.runtime.tables["mesh.lb.request.duration"].sdk_instrument is not None
        assert handle.runtime.tables["mesh.lb.requests"].sdk_instrument is None
        LoadBalancerMetrics().observe_request_duration("api", "a", 0.7)
        points = meshmetrics.testing.CapturedMetrics(reader).points("mesh.lb.request.duration")
        assert any(tuple(p.explicit_bounds) == (0.5, 1.0) for _, p in points)


def test_fast_path_equals_sdk_path_through_the_prometheus_exporter():
    texts = []
    for fast_path in (True, False):
        with meshmetrics.configure(
            prometheus_host="127.0.0.1", prometheus_port=0, fast_path=fast_path, set_global=False, environ={}
        ) as handle:
            workload(0)
            with urlopen(handle.prometheus_url, timeout=5) as response:
                texts.append(parse_samples(response.read().decode()))
    fast, plain = texts
    strip = lambda samples: {k: v for k, v in samples.items() if k[0] != "target_info"}  # noqa: E731
    assert strip(fast) == strip(plain)
    assert len(strip(fast)) > 100


def test_eight_threads_exact_totals_on_both_paths():
    for fast_path in (True, False):
        reader = InMemoryMetricReader()
        with meshmetrics.configure(
            readers=[reader], prometheus=False, fast_path=fast_path, set_global=False, environ={}
        ):
            lb = LoadBalancerMetrics()

            def work() -> None:
                for i in range(20_000):
                    lb.record_request("api", f"i-{i % 2}", "random")
                    lb.observe_request_duration("api", f"i-{i % 2}", 0.01)

            threads = [threading.Thread(target=work) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            captured = meshmetrics.testing.CapturedMetrics(reader)
            assert captured.value("mesh.lb.requests") == 160_000
            histogram = captured.histogram("mesh.lb.request.duration")
            assert histogram.count == 160_000
            assert histogram.sum == pytest.approx(1600.0)


def test_cardinality_limit_overflows_like_the_sdk():
    definition = meshmetrics.semconv.METRICS["mesh.lb.requests"]
    policies = {"mesh.instance": meshmetrics.unbounded(), "mesh.service": meshmetrics.unbounded()}
    with meshmetrics.configure(
        prometheus=False, set_global=False, environ={}, attribute_policies=policies
    ) as handle:
        table: Table = handle.runtime.tables["mesh.lb.requests"]
        for i in range(definition.cardinality_limit + 10):
            series = table.find(("api", str(i), "round_robin"))
            assert series is not None
            series.add(1)
        values = table.collect(0.0)
    assert len(values) == definition.cardinality_limit + 1
    overflow = [value for series, value in values if series.attributes == OVERFLOW_ATTRIBUTES]
    assert overflow == [10]


def test_pinned_sdk_behaviour_the_fast_path_relies_on():
    """If an SDK upgrade changes these, the fast path would export wrong data: fail loudly here."""
    from opentelemetry.sdk.metrics._internal.instrument import _Counter, _Gauge, _Histogram, _UpDownCounter

    reader = InMemoryMetricReader(preferred_temporality={Counter: DELTA})
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    assert callable(reader._collect)  # set by MeterProvider, called by MetricReader.collect()
    calls = []
    original = reader._collect

    def spy(target, timeout_millis=10_000):
        calls.append(timeout_millis)
        return original(target, timeout_millis=timeout_millis)

    reader._collect = spy
    reader.get_metrics_data()
    assert calls, "MetricReader.collect() no longer goes through reader._collect"
    table = reader._instrument_class_temporality
    assert table[_Counter] is DELTA
    assert {_Counter, _Histogram, _UpDownCounter, _Gauge} <= set(table)
    provider.shutdown()


def test_delta_histogram_min_max_are_per_interval():
    reader = InMemoryMetricReader(preferred_temporality={Histogram: DELTA})
    with meshmetrics.configure(readers=[reader], prometheus=False, set_global=False, environ={}):
        lb = LoadBalancerMetrics()
        lb.observe_request_duration("api", "a", 5.0)
        first = meshmetrics.testing.CapturedMetrics(reader).points("mesh.lb.request.duration")
        lb.observe_request_duration("api", "a", 0.2)
        second = meshmetrics.testing.CapturedMetrics(reader).points("mesh.lb.request.duration")
    assert [(p.min, p.max, p.count) for _, p in first] == [(5.0, 5.0, 1)]
    assert [(p.min, p.max, p.count) for _, p in second] == [(0.2, 0.2, 1)]
    assert not math.isinf(second[0][1].min)


def test_short_lived_threads_keep_their_counts_and_their_shards_are_folded():
    reader = InMemoryMetricReader()
    with meshmetrics.configure(readers=[reader], prometheus=False, set_global=False, environ={}) as handle:
        lb = LoadBalancerMetrics()
        for round_ in range(5):
            threads = [
                threading.Thread(
                    target=lambda: [lb.observe_request_duration("api", "a", 0.01) for _ in range(100)]
                )
                for _ in range(10)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            captured = meshmetrics.testing.CapturedMetrics(reader)
            assert captured.histogram("mesh.lb.request.duration").count == 1000 * (round_ + 1)
        table = handle.runtime.tables["mesh.lb.request.duration"]
        for series in table.series():  # finished threads' cells were folded into one
            assert len(series.cells) <= 2
        lb.remove_instance("api", "a")
        assert meshmetrics.testing.CapturedMetrics(reader).points("mesh.lb.request.duration") == []
