"""Exponential histograms on the fast path: the same points as the SDK's exponential aggregation."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.exponential_histogram.mapping.exponent_mapping import (
    ExponentMapping,
)
from opentelemetry.sdk.metrics._internal.exponential_histogram.mapping.logarithm_mapping import (
    LogarithmMapping,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    InMemoryMetricReader,
    MetricReader,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from meshmetrics._engine import exponential
from meshmetrics._engine import runtime as _runtime
from meshmetrics._engine.series import ExponentialSeries
from meshmetrics._setup.settings import Settings

DELTA = AggregationTemporality.DELTA
CUMULATIVE = AggregationTemporality.CUMULATIVE
DURATION = "mesh.lb.request.duration"
EXPONENTIAL = {Histogram: ExponentialBucketHistogramAggregation()}


def exponential_reader(temporality: AggregationTemporality = CUMULATIVE) -> InMemoryMetricReader:
    return InMemoryMetricReader(
        preferred_temporality={Histogram: temporality}, preferred_aggregation=EXPONENTIAL
    )


def only_point(reader: MetricReader, name: str) -> object:
    data = reader.get_metrics_data()
    found = [
        (metric.data, point)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
    assert len(found) == 1, found
    return found[0]


def fields(point: object) -> dict[str, object]:
    """Every field of an exponential point, buckets as {index: count} (the SDK pads with zeros)."""
    positive = {point.positive.offset + i: c for i, c in enumerate(point.positive.bucket_counts) if c}
    negative = {point.negative.offset + i: c for i, c in enumerate(point.negative.bucket_counts) if c}
    return {
        "count": point.count,
        "scale": point.scale,
        "zero_count": point.zero_count,
        "positive": positive,
        "negative": negative,
        "min": point.min,
        "max": point.max,
        "flags": point.flags,
    }


@dataclass
class Pair:
    """meshmetrics' fast path and a plain SDK histogram, each with an exponential reader."""

    lb: LoadBalancerMetrics
    ours: InMemoryMetricReader
    sdk: InMemoryMetricReader
    record_sdk: object

    def record(self, values: Sequence[float]) -> None:
        for value in values:
            self.lb.observe_request_duration("api", "api-0", value)
            self.record_sdk(value, {"k": "v"})

    def compare(self) -> dict[str, object]:
        ours_data, ours = only_point(self.ours, DURATION)
        sdk_data, sdk = only_point(self.sdk, "h")
        assert isinstance(ours_data, ExponentialHistogram)
        assert ours_data.aggregation_temporality == sdk_data.aggregation_temporality
        assert fields(ours) == fields(sdk)
        assert math.isclose(ours.sum, sdk.sum, rel_tol=1e-12)  # the SDK adds interval sums: rounding
        # ours carries no padding: the first and last positive buckets are not empty
        assert not ours.positive.bucket_counts or 0 not in (
            ours.positive.bucket_counts[0],
            ours.positive.bucket_counts[-1],
        )
        return fields(ours)


@pytest.fixture(params=[CUMULATIVE, DELTA], ids=["cumulative", "delta"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    ours = exponential_reader(request.param)
    handle = meshmetrics.configure(readers=[ours], prometheus=False, set_global=False, environ={})
    sdk = exponential_reader(request.param)
    provider = MeterProvider(metric_readers=[sdk], shutdown_on_exit=False)
    yield Pair(LoadBalancerMetrics(), ours, sdk, provider.get_meter("m").create_histogram("h").record)
    provider.shutdown()
    handle.shutdown()


def wide(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(1e-6), math.log(1e4))) for _ in range(count)]


def test_a_narrow_range_stays_at_scale_20(pair):
    pair.record([0.1, 0.1000001, 0.10001])
    got = pair.compare()
    assert got["scale"] == 20
    assert got["count"] == 3


def test_a_wide_range_is_downscaled_as_the_sdk_does(pair):
    pair.record([*wide(300, seed=1), 1e-6, 1e4])
    got = pair.compare()
    assert got["scale"] == 2  # 1e-6 .. 1e4 is 33.2 octaves: 133 buckets at scale 2, 266 at 3
    assert got["count"] == 302
    assert max(got["positive"]) - min(got["positive"]) < exponential.MAX_SIZE


def test_zeros_and_exact_powers_of_two(pair):
    pair.record([0.0, 0.25, 0.5, 1.0, 2.0, 0.0, 0.375, 1024.0, 0.0])
    got = pair.compare()
    assert got["zero_count"] == 3
    assert got["count"] == 9


def test_zeros_only(pair):
    pair.record([0.0, 0.0])
    got = pair.compare()
    assert (got["scale"], got["zero_count"], got["positive"]) == (0, 2, {})


def test_a_second_collection_in_the_same_range(pair):
    pair.record(wide(100, seed=2))
    pair.compare()
    pair.record([0.003, 0.0, 42.0, *wide(50, seed=3)])
    got = pair.compare()
    assert got["count"] in (53, 153)  # delta, cumulative


def test_threads_merge_to_the_same_point_as_one_sdk_histogram(pair):
    values = wide(400, seed=4) + [0.0] * 4
    chunks = [values[i::4] for i in range(4)]
    start = threading.Barrier(4, timeout=30)

    def work(chunk: list[float]) -> None:
        start.wait()
        for value in chunk:
            pair.lb.observe_request_duration("api", "api-0", value)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    for value in values:
        pair.record_sdk(value, {"k": "v"})
    got = pair.compare()  # the finished threads' cells are folded on the way
    assert got["count"] == 404


def test_each_reader_gets_the_kind_it_asks_for():
    explicit, expo = InMemoryMetricReader(), exponential_reader()
    handle = meshmetrics.configure(readers=[explicit, expo], prometheus=False, set_global=False, environ={})
    try:
        LoadBalancerMetrics().observe_request_duration("api", "api-0", 0.3)
        LoadBalancerMetrics().observe_request_duration("api", "api-0", 0.0)
        table = handle.runtime.tables[DURATION]
        assert table.sdk_instrument is None  # on the fast path
        assert all(isinstance(s, ExponentialSeries) for s in table.series())
        data, point = only_point(explicit, DURATION)
        assert isinstance(data, HistogramData)
        assert (point.count, point.sum, point.bucket_counts[0], point.bucket_counts[7]) == (2, 0.3, 1, 1)
        data, point = only_point(expo, DURATION)
        assert isinstance(data, ExponentialHistogram)
        assert (point.count, point.sum, point.zero_count, point.scale) == (2, 0.3, 1, 20)
        assert point.positive.offset == exponential.index_of(0.3, 20)
        assert list(point.positive.bucket_counts) == [1]
    finally:
        handle.shutdown()


def test_the_runtime_takes_a_histogram_kind_per_reader():
    """How a Prometheus reader gets native histograms: ``histogram_kinds``."""
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first, second], shutdown_on_exit=False)
    previous = _runtime.state.current
    try:
        _runtime.state.current = _runtime.Runtime(
            provider, Settings(), readers=[first, second], histogram_kinds={second: "exponential"}
        )
        LoadBalancerMetrics().observe_request_duration("api", "api-0", 1.5)
        assert isinstance(only_point(first, DURATION)[0], HistogramData)
        data, point = only_point(second, DURATION)
        assert isinstance(data, ExponentialHistogram)
        assert (point.count, point.sum, point.positive.offset) == (1, 1.5, exponential.index_of(1.5, 20))
    finally:
        _runtime.state.current = previous
        provider.shutdown()


def test_explicit_only_readers_keep_plain_histogram_series():
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(readers=[reader], prometheus=False, set_global=False, environ={})
    try:
        LoadBalancerMetrics().observe_request_duration("api", "api-0", 0.3)
        table = handle.runtime.tables[DURATION]
        assert not table.exponential
        assert not any(isinstance(s, ExponentialSeries) for s in table.series())
    finally:
        handle.shutdown()


def test_otlp_asking_for_exponential_keeps_histograms_on_the_fast_path():
    handle = meshmetrics.configure(
        prometheus=False,
        otlp_endpoint="http://127.0.0.1:9",  # nothing listens: the push reader just exists
        otlp_histogram_aggregation="base2_exponential_bucket_histogram",
        export_interval=3600,
        set_global=False,
        environ={},
    )
    try:
        table = handle.runtime.tables[DURATION]
        assert table.sdk_instrument is None
        assert table.exponential
    finally:
        handle.shutdown(timeout=3)


@pytest.mark.parametrize("scale", [-10, -3, -1, 0, 1, 2, 5, 10, 15, 20])
def test_the_index_function_is_the_sdks(scale):
    mapping = LogarithmMapping(scale) if scale > 0 else ExponentMapping(scale)
    rng = random.Random(scale)
    values = [math.exp(rng.uniform(-700, 700)) for _ in range(2000)]
    values += [2.0**k for k in range(-1022, 1024, 7)] + [5e-324, 1e-310, 2.2250738585072014e-308]
    values += [1.7976931348623157e308, 1.0, 0.1, 0.3]
    for value in values:
        assert exponential.index_of(value, scale) == mapping.map_to_index(value), value


def test_a_delta_between_scales():
    cell = exponential.new_cell()
    for value in (1.5, 1.5000001, 0.0):
        exponential.record(cell, value)
    before = exponential.merge([cell])
    for value in (1e-6, 1e4, 1.5, 0.0):
        exponential.record(cell, value)
    after = exponential.merge([cell])
    assert (before.scale, after.scale) == (20, 2)
    delta = after.minus(before)
    assert (delta.scale, delta.count, delta.zero_count) == (2, 4, 1)
    assert delta.counts == {
        exponential.index_of(1e-6, 2): 1,
        exponential.index_of(1e4, 2): 1,
        exponential.index_of(1.5, 2): 1,
    }


def test_delta_points_stay_correct_when_the_range_moves():
    """A delta reader gets the interval's counts at the series' lifetime scale (the SDK may be finer)."""
    delta = exponential_reader(DELTA)
    handle = meshmetrics.configure(readers=[delta], prometheus=False, set_global=False, environ={})
    try:
        lb = LoadBalancerMetrics()
        lb.observe_request_duration("api", "api-0", 1e-6)
        first = only_point(delta, DURATION)[1]
        lb.observe_request_duration("api", "api-0", 1e4)
        lb.observe_request_duration("api", "api-0", 0.0)
        second = only_point(delta, DURATION)[1]
        assert (first.count, first.scale) == (1, 20)
        assert (second.count, second.zero_count, second.sum, second.min, second.max) == (2, 1, 1e4, 0.0, 1e4)
        assert second.scale == 2  # both values' range: 1e-6 .. 1e4
        (index,) = [second.positive.offset + i for i, c in enumerate(second.positive.bucket_counts) if c]
        base = 2.0 ** (2.0**-second.scale)
        assert base**index < 1e4 <= base ** (index + 1)
    finally:
        handle.shutdown()


def test_a_reader_can_get_both_kinds_for_native_histograms(monkeypatch):
    """``both``: the classic and the exponential histogram under one name, each with the exemplar."""
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    previous = _runtime.state.current
    try:
        _runtime.state.current = _runtime.Runtime(
            provider, Settings(), readers=[reader], histogram_kinds={reader: "both"}
        )
        with TracerProvider().get_tracer("t").start_as_current_span("request") as span:
            LoadBalancerMetrics().observe_request_duration("api", "api-0", 0.3)
            LoadBalancerMetrics().record_request("api", "api-0", "round_robin")
        data = reader.get_metrics_data()
        metrics = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
        durations = [m.data for m in metrics if m.name == DURATION]
        assert [type(d) for d in durations] == [HistogramData, ExponentialHistogram]
        explicit, expo = (d.data_points[0] for d in durations)
        assert (explicit.count, expo.count, explicit.sum, expo.sum) == (1, 1, 0.3, 0.3)
        trace_id = span.get_span_context().trace_id
        assert [e.trace_id for e in explicit.exemplars] == [e.trace_id for e in expo.exemplars] == [trace_id]
        assert [type(m.data).__name__ for m in metrics if m.name == "mesh.lb.requests"] == ["Sum"]
    finally:
        _runtime.state.current = previous
        provider.shutdown()
