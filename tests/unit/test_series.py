"""Series as one object: exact data when instances leave and come back, under races and churn."""

from __future__ import annotations

import threading
import time

import pytest
import structlog
from opentelemetry.sdk.metrics import Counter, Histogram, ObservableGauge, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from meshmetrics._engine import series as series_module
from meshmetrics.testing import CapturedMetrics

DELTA = AggregationTemporality.DELTA
_ALL_DELTA = {Counter: DELTA, UpDownCounter: DELTA, Histogram: DELTA, ObservableGauge: DELTA}


def configure(**kwargs):
    delta = InMemoryMetricReader(preferred_temporality=_ALL_DELTA)
    cumulative = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[delta, cumulative], set_global=False, environ={}, **{"prometheus": False, **kwargs}
    )
    return handle, delta, CapturedMetrics(cumulative)


def collect(reader, instance="api-1"):
    """One collection of ``reader``: metric name -> the points of ``instance``."""
    data = reader.get_metrics_data()
    found: dict[str, list] = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(
                    p for p in metric.data.data_points if p.attributes.get("mesh.instance") == instance
                )
    return found


def test_an_instance_that_comes_back_is_a_new_series_for_every_reader():
    handle, delta, cumulative = configure()
    lb = LoadBalancerMetrics()
    try:
        for _ in range(100):
            lb.observe_request_duration("api", "api-1", 0.01)
            lb.record_request("api", "api-1", "round_robin")
            lb.connection_opened("api", "api-1")
        lb.connection_closed("api", "api-1")
        lb.set_instance_health("api", "api-1", 0.25)
        first = collect(delta)
        [histogram] = first["mesh.lb.request.duration"]
        assert histogram.count == 100
        assert [p.value for p in first["mesh.lb.requests"]] == [100]
        assert [p.value for p in first["mesh.lb.connections.active"]] == [99]
        assert cumulative.value("mesh.lb.requests", instance="api-1") == 100
        first_start = cumulative.points("mesh.lb.requests")[0][1].start_time_unix_nano

        lb.remove_instance("api", "api-1")
        assert collect(delta).get("mesh.lb.request.duration", []) == []
        assert cumulative.series("mesh.lb.requests") == []

        lb.observe_request_duration("api", "api-1", 0.01)  # the instance is back
        lb.record_request("api", "api-1", "round_robin")
        lb.connection_opened("api", "api-1")
        lb.set_instance_health("api", "api-1", 1.0)
        back = collect(delta)
        [histogram] = back["mesh.lb.request.duration"]
        assert histogram.count == 1  # was -99 when delta state outlived the series
        assert histogram.bucket_counts[1] == 1 and min(histogram.bucket_counts) == 0
        assert [p.value for p in back["mesh.lb.requests"]] == [1]
        assert [p.value for p in back["mesh.lb.connections.active"]] == [1]
        assert [p.value for p in back["mesh.lb.instance.health_score"]] == [1.0]
        assert cumulative.value("mesh.lb.requests", instance="api-1") == 1
        assert cumulative.histogram("mesh.lb.request.duration", instance="api-1").count == 1
        assert cumulative.value("mesh.lb.connections.active", instance="api-1") == 1
        assert cumulative.points("mesh.lb.requests")[0][1].start_time_unix_nano > first_start

        lb.record_request("api", "api-1", "round_robin")
        later = collect(delta)
        assert [p.value for p in later["mesh.lb.requests"]] == [1]  # deltas go on from there
        assert later.get("mesh.lb.request.duration", []) == []  # nothing new: no point
    finally:
        handle.shutdown()


def test_a_removal_between_lookup_and_write_loses_no_later_measurement(monkeypatch):
    """Forced interleaving: thread B removes the series right after thread A resolved it."""
    handle, _, captured = configure()
    lb = LoadBalancerMetrics()
    table = handle.runtime.tables["mesh.lb.requests"]
    original = series_module.Table.find
    interleave = [True]

    def find_then_remove(self, values):
        found = original(self, values)
        if interleave and self is table:
            interleave.clear()
            other = threading.Thread(target=lb.remove_instance, args=("api", "api-1"))
            other.start()
            other.join()
        return found

    try:
        lb.record_request("api", "api-0", "round_robin")
        monkeypatch.setattr(series_module.Table, "find", find_then_remove)
        lb.record_request("api", "api-1", "round_robin")  # resolved, then removed before the write
        assert not interleave
        monkeypatch.setattr(series_module.Table, "find", original)
        for _ in range(10):
            lb.record_request("api", "api-1", "round_robin")
        assert captured.value("mesh.lb.requests", instance="api-1") == 10
        assert captured.value("mesh.lb.requests", instance="api-0") == 1
    finally:
        handle.shutdown()


def test_a_ttl_expiry_between_lookup_and_write_loses_no_later_measurement(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(series_module, "monotonic", lambda: now[0])
    handle, _, captured = configure(series_ttl=1.0)
    lb = LoadBalancerMetrics()
    table = handle.runtime.tables["mesh.lb.request.duration"]
    try:
        lb.observe_request_duration("api", "api-1", 0.1)
        assert captured.histogram("mesh.lb.request.duration").count == 1
        [stale] = table.series()
        now[0] += 5
        collector = threading.Thread(target=captured.points, args=("mesh.lb.request.duration",))
        collector.start()  # the TTL sweep runs in another thread's collection
        collector.join()
        assert captured.series("mesh.lb.request.duration") == []
        stale.record(0.1)  # a write by a thread that looked the series up before the sweep
        for _ in range(10):
            lb.observe_request_duration("api", "api-1", 0.1)
        # woken from its sleep with its cumulative value: nothing recorded after the lookup is lost
        assert captured.histogram("mesh.lb.request.duration", instance="api-1").count == 12
    finally:
        handle.shutdown()


def test_churn_soak_stable_series_exact_and_returning_series_exported():
    handle, delta, captured = configure()
    lb = LoadBalancerMetrics()
    stop = threading.Event()
    churning = [f"pod-{i}" for i in range(5)]
    recorded = [0] * 4
    negative: list[float] = []

    def record(index: int) -> None:
        deadline = time.monotonic() + 1.5
        while not stop.is_set() and time.monotonic() < deadline and recorded[index] < 200_000:
            lb.record_request("api", "stable", "round_robin")
            recorded[index] += 1
            lb.record_request("api", churning[recorded[index] % 5], "round_robin")
            lb.observe_request_duration("api", churning[recorded[index] % 5], 0.01)

    def churn() -> None:
        cycles = 0
        while not stop.is_set() and cycles < 100_000:
            for instance in churning:
                lb.remove_instance("api", instance)
            cycles += 1
            for metric in delta.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics:
                if metric.name in ("mesh.lb.requests", "mesh.lb.request.duration"):
                    for point in metric.data.data_points:
                        value = point.value if metric.name == "mesh.lb.requests" else point.count
                        if value < 0:
                            negative.append(value)
            time.sleep(0.01)

    try:
        recorders = [threading.Thread(target=record, args=(i,)) for i in range(4)]
        churner = threading.Thread(target=churn)
        for thread in [*recorders, churner]:
            thread.start()
        for thread in recorders:
            thread.join()
        stop.set()
        churner.join()
        assert negative == []
        assert captured.value("mesh.lb.requests", instance="stable") == sum(recorded)
        for instance in churning:
            lb.remove_instance("api", instance)
        for instance in churning:
            for _ in range(7):
                lb.record_request("api", instance, "round_robin")
        for instance in churning:
            assert captured.value("mesh.lb.requests", instance=instance) == 7
        table = handle.runtime.tables["mesh.lb.requests"]
        assert len(table.by_labels) == 6
        assert len(table.cache) <= 6
        assert len(table.budgets["mesh.instance"]) == 6
    finally:
        handle.shutdown()


def test_reader_state_stays_bounded_over_100k_remove_and_come_back_cycles():
    handle, delta, captured = configure()
    lb = LoadBalancerMetrics()
    tables = handle.runtime.tables
    try:
        for cycle in range(100_000):
            lb.record_request("api", f"pod-{cycle % 3}", "round_robin")
            lb.observe_request_duration("api", f"pod-{cycle % 3}", 0.01)
            if cycle % 3 == 2:
                for instance in ("pod-0", "pod-1", "pod-2"):
                    lb.remove_instance("api", instance)
            if cycle % 10_000 == 0:
                delta.get_metrics_data()
                captured.points("mesh.lb.requests")
        for instance in ("pod-0", "pod-1", "pod-2"):
            lb.remove_instance("api", instance)
        lb.record_request("api", "pod-9", "round_robin")
        lb.observe_request_duration("api", "pod-9", 0.01)
        delta.get_metrics_data()
        for name in ("mesh.lb.requests", "mesh.lb.request.duration"):
            table = tables[name]
            live = table.series()
            assert [s.attributes["mesh.instance"] for s in live] == ["pod-9"]
            assert all(len(series.sent) <= 2 for series in live)  # one entry per reader
            assert len(table.cache) == 1 and len(table.dormant) == 0
            assert table.budgets["mesh.instance"] == {"pod-9": 1}
    finally:
        handle.shutdown()


def test_a_freed_budget_place_goes_to_the_next_value_without_dropping_the_cache():
    handle, _, captured = configure(attribute_policies={"mesh.instance": meshmetrics.bounded(2)})
    lb = LoadBalancerMetrics()
    table = handle.runtime.tables["mesh.lb.requests"]
    try:
        for instance in ("a", "b", "c"):
            lb.record_request("api", instance, "round_robin")
        assert captured.value("mesh.lb.requests", instance="_OTHER") == 1
        assert ("api", "c", "round_robin") not in table.cache  # folded values are never cached
        lb.remove_instance("api", "a")
        assert ("api", "b", "round_robin") in table.cache  # the hot path of the others is kept
        lb.record_request("api", "c", "round_robin")
        assert captured.value("mesh.lb.requests", instance="c") == 1
        assert captured.value("mesh.lb.requests", instance="b") == 1
        assert table.budgets["mesh.instance"] == {"b": 1, "c": 1}
    finally:
        handle.shutdown()


def test_ending_a_series_on_the_sdk_path_is_logged_once():
    view = View(instrument_name="mesh.lb.requests", aggregation=ExplicitBucketHistogramAggregation([1.0]))
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], prometheus=False, views=[view], set_global=False, environ={}
    )
    lb = LoadBalancerMetrics()
    try:
        with structlog.testing.capture_logs() as logs:
            lb.record_request("api", "api-1", "round_robin")
            for _ in range(3):
                lb.remove_instance("api", "api-1")
        said = [e for e in logs if e["event"] == "meshmetrics_series_cannot_end"]
        assert len(said) == 1 and said[0]["metric"] == "mesh.lb.requests"
    finally:
        handle.shutdown()


@pytest.mark.parametrize("fast_path", [True, False])
def test_load_imbalance_is_one_algorithm_on_both_paths(fast_path):
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], prometheus=False, fast_path=fast_path, set_global=False, environ={}
    )
    lb = LoadBalancerMetrics()
    try:
        for instance, requests in (("a", 30), ("b", 10), ("c", 20)):
            for _ in range(requests):
                lb.record_request("api", instance, "round_robin")
        captured = CapturedMetrics(reader)
        assert captured.value("mesh.lb.load_imbalance", service="api") == pytest.approx(1.5)
    finally:
        handle.shutdown()


def test_series_ttl_on_the_sdk_path_is_logged_not_silently_ignored():
    with structlog.testing.capture_logs() as logs:
        handle = meshmetrics.configure(
            prometheus=False, fast_path=False, series_ttl=60, set_global=False, environ={}
        )
        handle.shutdown()
    [said] = [e for e in logs if e["event"] == "meshmetrics_series_ttl_not_applied"]
    assert "mesh.lb.requests" in said["metrics"]
