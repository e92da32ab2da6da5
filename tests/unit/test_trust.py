"""Trust, second pass: values that used to stop export, escape the guard, or cost what they weighed."""

from __future__ import annotations

import decimal
import gc
import tracemalloc

import pytest
from prometheus_client.parser import text_string_to_metric_families

import meshmetrics
from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics
from tests.conftest import parse_samples, sample


def test_an_integer_no_exporter_can_carry_is_rejected_and_stops_nothing(configured):
    lb = LoadBalancerMetrics()
    lb.record_request("api", "a", "round_robin")
    lb.set_endpoints("api", healthy=2**1024)  # stopped every scrape
    lb.set_endpoints("api", healthy=2**63)  # stopped every OTLP export (int64)
    RetryMetrics().record_call("api", "op", succeeded=True, attempts=2**1024, duration=0.1)
    samples = configured.samples()  # the scrape still works, whole
    assert (
        sample(
            samples,
            "mesh_lb_requests_total",
            mesh_service="api",
            mesh_instance="a",
            mesh_lb_strategy="round_robin",
        )
        == 1
    )
    rejected = configured.captured.value("meshmetrics.measurements.rejected", reason="invalid_value")
    assert rejected == 3
    states = {s["mesh.health.state"] for s in configured.captured.series("mesh.lb.endpoints")}
    assert states == {"degraded", "unhealthy", "unknown"}  # only the invalid count was dropped
    assert configured.captured.series("mesh.retry.call.attempts") == []  # no count/bucket mismatch


def test_strict_mode_raises_only_invalid_measurement_with_the_cause_chained(strict_configured):
    lb = LoadBalancerMetrics()

    class BadHash(str):
        __slots__ = ()

        def __hash__(self) -> int:
            raise RuntimeError("no hash")

    for value in (None, 1.5, 2**1024, True, decimal.Decimal(1), object(), [1]):
        with pytest.raises(meshmetrics.InvalidMeasurement):
            lb.record_request("api", value, "round_robin")  # type: ignore[arg-type]
    lb.record_request("api", BadHash("x"), "round_robin")  # its characters are a label; its hash is not used
    assert strict_configured.captured.value("mesh.lb.requests", instance="x") == 1

    class NoStrError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    class Proxy:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(name)

    with pytest.raises(meshmetrics.InvalidMeasurement) as raised:
        lb.record_error("api", "a", Proxy())
    assert raised.value.__cause__ is not None
    with pytest.raises(meshmetrics.InvalidMeasurement):
        lb.remove_instance("api", object())  # type: ignore[arg-type]
    lb.record_error("api", "a", NoStrError())  # an exception's class names it: no str() needed


def test_production_mode_raises_nothing_for_unclassifiable_values(configured):
    class Proxy:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(name)

    class Lower(str):
        __slots__ = ()

        def lower(self) -> str:  # type: ignore[override]
            raise RuntimeError("no lower")

    lb, mesh = LoadBalancerMetrics(), ServiceMeshMetrics()
    lb.record_error("api", "a", Proxy())
    lb.observe_request_duration("api", "a", 0.1, error=Proxy())
    mesh.record_call_failure("api", "op", 0.1, error=Proxy())
    mesh.set_health_status("api", "a", Lower("healthy"))
    assert configured.captured.value("meshmetrics.measurements.rejected", reason="invalid_attribute") == 3
    assert configured.captured.value("mesh.health.status", state="healthy") == 1  # its characters count


def test_a_label_is_accepted_whatever_was_recorded_before(strict_configured):
    lb = LoadBalancerMetrics()
    for value in (True, 1.0, decimal.Decimal(1)):
        with pytest.raises(meshmetrics.InvalidMeasurement):
            lb.record_request("api", value, "round_robin")  # type: ignore[arg-type]
    lb.record_request("api", 1, "round_robin")  # type: ignore[arg-type] - ints are labels
    lb.record_request("api", "1", "round_robin")
    for value in (True, 1.0, decimal.Decimal(1)):  # used to be accepted once an int 1 was cached
        with pytest.raises(meshmetrics.InvalidMeasurement):
            lb.record_request("api", value, "round_robin")  # type: ignore[arg-type]
    assert strict_configured.captured.value("mesh.lb.requests", instance="1") == 2


def test_memory_follows_the_exported_label_not_the_raw_value(configured):
    lb = LoadBalancerMetrics()
    huge = "x" * 1_000_000
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(300):
            lb.record_error("api", "a", huge + str(i))  # a new 1 MB string each time
            lb.record_request("api", f"{i}{huge}", "round_robin")
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 10_000_000  # was 287 MB
    text = configured.scrape()
    assert (
        max(
            len(s.labels.get("error_type", ""))
            for f in text_string_to_metric_families(text)
            for s in f.samples
        )
        == 128
    )
    assert configured.captured.value("mesh.lb.errors") == 300


def test_a_hostile_label_is_cut_before_it_is_scanned(configured):
    lb = LoadBalancerMetrics()
    lb.record_request("api", " \x00" + "é" * 10_000 + "\ud800", "round_robin")
    [instance] = {s["mesh.instance"] for s in configured.captured.series("mesh.lb.requests")}
    assert instance == "é" * 128
    assert all(v >= 0 for v in parse_samples(configured.scrape()).values())
