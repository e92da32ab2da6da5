"""Exemplars on the fast path: which measurements are kept, and what each reader is sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Exemplar,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

import meshmetrics
from meshmetrics import LoadBalancerMetrics, semconv
from meshmetrics._engine import exemplars
from meshmetrics._engine.series import Series
from meshmetrics._setup.settings import resolve

DELTA = AggregationTemporality.DELTA
REQUESTS = "mesh.lb.requests"
DURATION = "mesh.lb.request.duration"
BOUNDS = semconv.METRICS[DURATION].buckets
FILTER = "OTEL_METRICS_EXEMPLAR_FILTER"

sampled_tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
unsampled_tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")


@dataclass
class Setup:
    lb: LoadBalancerMetrics
    reader: InMemoryMetricReader
    handle: meshmetrics.MetricsHandle


def configure(monkeypatch: pytest.MonkeyPatch, exemplar_filter: str | None, *readers: MetricReader) -> Setup:
    monkeypatch.delenv(FILTER, raising=False)  # the SDK path would read it on its own
    environ = {} if exemplar_filter is None else {FILTER: exemplar_filter}  # the variable, as users set it
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader, *readers], prometheus=False, set_global=False, environ=environ
    )
    return Setup(LoadBalancerMetrics(), reader, handle)


@pytest.fixture
def trace_based(monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    setup = configure(monkeypatch, None)  # the default
    yield setup
    setup.handle.shutdown()


def collect(reader: MetricReader) -> dict[str, list]:
    """One collection: the points of each metric."""
    data = reader.get_metrics_data()
    found: dict[str, list] = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def points(reader: MetricReader, name: str) -> list:
    return collect(reader).get(name, [])


def exemplars_in(found: list) -> list[tuple]:
    return [(e.value, e.span_id, e.trace_id) for point in found for e in point.exemplars]


def exemplars_of(reader: MetricReader, name: str) -> list[tuple]:
    return exemplars_in(points(reader, name))


def ids(span: trace.Span) -> tuple[int, int]:
    span_context = span.get_span_context()
    return span_context.span_id, span_context.trace_id


def test_a_counter_in_a_sampled_span_carries_its_trace(trace_based):
    with sampled_tracer.start_as_current_span("request") as span:
        trace_based.lb.record_request("api", "api-0", "round_robin")
    (point,) = points(trace_based.reader, REQUESTS)
    assert point.value == 1
    (exemplar,) = point.exemplars
    assert isinstance(exemplar, Exemplar)  # the SDK's own type: exporters send it unchanged
    assert (exemplar.value, exemplar.span_id, exemplar.trace_id) == (1, *ids(span))
    assert exemplar.filtered_attributes == {}
    assert point.start_time_unix_nano <= exemplar.time_unix_nano <= point.time_unix_nano


def test_trace_based_keeps_nothing_outside_a_span_or_in_an_unsampled_one(trace_based):
    trace_based.lb.record_request("api", "api-0", "round_robin")
    trace_based.lb.observe_request_duration("api", "api-0", 0.2)
    with unsampled_tracer.start_as_current_span("not sampled") as span:
        assert span.get_span_context().is_valid
        trace_based.lb.record_request("api", "api-0", "round_robin")
        trace_based.lb.observe_request_duration("api", "api-0", 0.2)
    found = collect(trace_based.reader)
    assert [p.value for p in found[REQUESTS]] == [2]
    assert [p.count for p in found[DURATION]] == [2]
    assert exemplars_in(found[REQUESTS]) == []
    assert exemplars_in(found[DURATION]) == []


def test_always_on_keeps_measurements_outside_spans_without_a_trace(monkeypatch):
    setup = configure(monkeypatch, "always_on")
    try:
        setup.lb.record_request("api", "api-0", "round_robin")
        setup.lb.observe_request_duration("api", "api-0", 0.2)
        with unsampled_tracer.start_as_current_span("not sampled") as span:
            setup.lb.observe_request_duration("api", "api-0", 3.0)
        found = collect(setup.reader)
        assert exemplars_in(found[REQUESTS]) == [(1, None, None)]
        # the unsampled span is still a valid span: always_on records its ids, as the SDK does
        assert exemplars_in(found[DURATION]) == [(0.2, None, None), (3.0, *ids(span))]
    finally:
        setup.handle.shutdown()


def test_always_off_keeps_nothing_and_does_no_work_per_call(monkeypatch):
    setup = configure(monkeypatch, "always_off")
    try:
        with sampled_tracer.start_as_current_span("request"):
            setup.lb.record_request("api", "api-0", "round_robin")
            setup.lb.observe_request_duration("api", "api-0", 0.2)
        table = setup.handle.runtime.tables[REQUESTS]
        (series,) = table.series()
        assert type(series) is Series and series.sampling == 0  # the plain hot path: no span lookup at all
        assert series.exemplars == {}
        found = collect(setup.reader)
        assert [p.value for p in found[REQUESTS]] == [1]
        assert exemplars_in(found[REQUESTS]) == []
        assert exemplars_in(found[DURATION]) == []
    finally:
        setup.handle.shutdown()


def test_a_histogram_keeps_the_last_exemplar_of_each_bucket(trace_based):
    spans = []
    for duration in (0.2, 0.21, 0.22, 3.0):  # three in the (0.1, 0.25] bucket, one in (2.5, 5]
        with sampled_tracer.start_as_current_span("request") as span:
            trace_based.lb.observe_request_duration("api", "api-0", duration)
        spans.append(span)
    trace_based.lb.observe_request_duration("api", "api-0", 0.23)  # outside a span: not a candidate
    (point,) = points(trace_based.reader, DURATION)
    assert point.count == 5
    assert [(e.value, e.span_id, e.trace_id) for e in point.exemplars] == [
        (0.22, *ids(spans[2])),
        (3.0, *ids(spans[3])),
    ]


def test_histogram_exemplars_equal_the_sdks_for_the_same_filter(trace_based):
    sdk_reader = InMemoryMetricReader()
    sdk = MeterProvider(
        metric_readers=[sdk_reader],
        views=[View(instrument_name="h", aggregation=ExplicitBucketHistogramAggregation(BOUNDS))],
        exemplar_filter=TraceBasedExemplarFilter(),
        shutdown_on_exit=False,
    )
    histogram = sdk.get_meter("m").create_histogram("h")
    for index, duration in enumerate((0.001, 0.005, 0.3, 0.31, 12.0, 0.02, 0.3, 7.5)):
        tracer = sampled_tracer if index % 3 else unsampled_tracer
        with tracer.start_as_current_span("request"):
            trace_based.lb.observe_request_duration("api", "api-0", duration)
            histogram.record(duration, {"k": "v"})
    ours = exemplars_of(trace_based.reader, DURATION)
    theirs = exemplars_of(sdk_reader, "h")
    sdk.shutdown()
    assert [value for value, _, _ in ours] == [0.005, 0.02, 0.3, 7.5, 12.0]  # sampled ones, by bucket
    assert ours == theirs


def test_each_reader_gets_the_exemplars_of_its_own_interval(monkeypatch):
    delta = InMemoryMetricReader(preferred_temporality={Counter: DELTA, Histogram: DELTA})
    setup = configure(monkeypatch, None, delta)
    cumulative = setup.reader
    try:
        with sampled_tracer.start_as_current_span("first") as first:
            setup.lb.observe_request_duration("api", "api-0", 0.2)
        assert exemplars_of(delta, DURATION) == [(0.2, *ids(first))]
        with sampled_tracer.start_as_current_span("second") as second:
            setup.lb.observe_request_duration("api", "api-0", 3.0)
        assert exemplars_of(delta, DURATION) == [(3.0, *ids(second))]  # only this interval's
        # the cumulative reader had not collected yet: it gets both, once
        assert exemplars_of(cumulative, DURATION) == [(0.2, *ids(first)), (3.0, *ids(second))]
        assert exemplars_of(cumulative, DURATION) == []
        setup.lb.observe_request_duration("api", "api-0", 0.2)  # no span: a point, no exemplar
        assert [p.count for p in points(delta, DURATION)] == [1]
        assert exemplars_of(delta, DURATION) == []
    finally:
        setup.handle.shutdown()


def test_exemplars_of_several_threads_the_newest_wins(trace_based):
    started = threading.Barrier(2, timeout=30)
    spans: dict[str, trace.Span] = {}

    def work(name: str) -> None:
        started.wait()
        with sampled_tracer.start_as_current_span(name) as span:
            trace_based.lb.record_request("api", "api-0", "round_robin")
        spans[name] = span

    thread = threading.Thread(target=work, args=("thread",))
    thread.start()
    started.wait()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert exemplars_of(trace_based.reader, REQUESTS) == [(1, *ids(spans["thread"]))]
    with sampled_tracer.start_as_current_span("main") as span:
        trace_based.lb.record_request("api", "api-0", "round_robin")
    # the finished thread's sample was folded; the main thread's is newer and new
    assert exemplars_of(trace_based.reader, REQUESTS) == [(1, *ids(span))]
    (series,) = trace_based.handle.runtime.tables[REQUESTS].series()
    assert series.sampling
    assert len(series.exemplars) == 2  # the retired slot and the main thread's


def test_the_filter_comes_from_the_setting_then_the_standard_variable():
    assert (
        resolve(environ={FILTER: "always_on"}, exemplar_filter="always_off").exemplar_filter == "always_off"
    )
    assert resolve(environ={FILTER: " ALWAYS_ON "}).exemplar_filter == "always_on"
    assert resolve(environ={FILTER: "always_off"}).exemplar_filter == "always_off"
    assert resolve(environ={}).exemplar_filter == "trace_based"
    with pytest.raises(meshmetrics.ConfigurationError, match="OTEL_METRICS_EXEMPLAR_FILTER='sometimes'"):
        resolve(environ={FILTER: "sometimes"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("trace_based", TraceBasedExemplarFilter),
        ("always_on", AlwaysOnExemplarFilter),
        ("always_off", AlwaysOffExemplarFilter),
    ],
)
def test_the_sdk_path_gets_the_same_filter(monkeypatch, name, expected):
    monkeypatch.setenv(FILTER, "ALWAYS_ON")  # the SDK itself would raise on this spelling
    provider = MeterProvider(exemplar_filter=exemplars.sdk_exemplar_filter(name), shutdown_on_exit=False)
    try:
        assert type(provider._sdk_config.exemplar_filter) is expected
    finally:
        provider.shutdown()


def test_the_fast_context_read_is_the_apis_current_context():
    """Pins what the hot path relies on in the API: the context variable, the SpanContext tuple."""
    assert exemplars.current_context is not context.get_current  # the fast read is in use
    with sampled_tracer.start_as_current_span("request") as span:
        assert exemplars.current_context() is context.get_current()
        assert exemplars.current_context().get(exemplars.SPAN_KEY) is span
        assert trace.get_current_span() is span
        # the hot path unpacks the SpanContext tuple rather than reading its properties
        span_context = span.get_span_context()
        trace_id, span_id, _, flags, _, valid = span_context
        assert (trace_id, span_id, flags, valid) == (
            span_context.trace_id,
            span_context.span_id,
            span_context.trace_flags,
            span_context.is_valid,
        )
    assert exemplars.current_context().get(exemplars.SPAN_KEY) is None
