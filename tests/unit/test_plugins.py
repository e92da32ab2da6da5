"""A plugin's generated facade records like a built-in one: exact values, folds, strictness, workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.request import urlopen

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import meshmetrics
from meshmetrics.__main__ import main
from meshmetrics._engine import runtime as _runtime
from meshmetrics.testing import CapturedMetrics, capture
from tests.conftest import import_path, parse_samples, sample

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "plugins" / "ratelimit"
YAML = PLUGIN / "ratelimit.yaml"


ratelimit = import_path(PLUGIN / "ratelimit_metrics.py", "ratelimit_metrics")
RateLimiterMetrics = ratelimit.RateLimiterMetrics


def _configure(**kwargs):
    reader = InMemoryMetricReader()
    options = {"prometheus_port": 0, "prometheus_host": "127.0.0.1", "set_global": False, "environ": {}}
    handle = meshmetrics.configure(readers=[reader], conventions=[YAML], **{**options, **kwargs})
    return handle, CapturedMetrics(reader)


def _scrape(handle: meshmetrics.MetricsHandle) -> dict:
    assert handle.prometheus_url is not None
    with urlopen(handle.prometheus_url, timeout=10) as response:
        return parse_samples(response.read().decode())


def test_every_instrument_records_exact_values_on_the_reader_and_the_endpoint():
    handle, captured = _configure()
    try:
        limiter = RateLimiterMetrics()
        for _ in range(7):
            limiter.count_decision("api", "search", "allowed")
        limiter.count_decision("api", "search", "rejected", 3)
        limiter.count_decision("api", "search", "rejected", 0.5)  # a float amount takes the validator
        for seconds in (0.0, 0.002, 0.02, 0.02, 3.0):
            limiter.record_wait("api", "search", "delayed", seconds)
        limiter.set_tokens_remaining("api", "search", 12)
        limiter.set_tokens_remaining("api", "search", 9.5)
        limiter.add_waiting("api", "search")
        limiter.add_waiting("api", "search")
        limiter.add_waiting("api", "search", -1)

        assert captured.value("ratelimit.decisions", outcome="allowed") == 7
        assert captured.value("ratelimit.decisions", outcome="rejected") == 3.5
        wait = captured.histogram("ratelimit.wait.duration", outcome="delayed")
        assert wait.count == 5
        assert wait.sum == pytest.approx(3.042)
        assert wait.buckets() == {
            0.001: 1, 0.005: 1, 0.01: 0, 0.025: 2, 0.05: 0, 0.1: 0, 0.25: 0, 0.5: 0, 1.0: 0, 2.5: 0,
            float("inf"): 1,
        }  # fmt: skip
        assert captured.value("ratelimit.tokens.remaining", limiter="search") == 9.5
        assert captured.value("ratelimit.waiting") == 1

        samples = _scrape(handle)
        labels = {"mesh_service": "api", "ratelimit_limiter": "search"}
        assert sample(samples, "ratelimit_decisions_total", **labels, ratelimit_outcome="allowed") == 7
        assert sample(samples, "ratelimit_decisions_total", **labels, ratelimit_outcome="rejected") == 3.5
        delayed = {**labels, "ratelimit_outcome": "delayed"}
        assert sample(samples, "ratelimit_wait_duration_seconds_count", **delayed) == 5
        assert sample(samples, "ratelimit_wait_duration_seconds_bucket", **delayed, le="0.025") == 4
        assert sample(samples, "ratelimit_wait_duration_seconds_bucket", **delayed, le="+Inf") == 5
        assert sample(samples, "ratelimit_tokens_remaining", **labels) == 9.5
        assert sample(samples, "ratelimit_waiting", **labels) == 1
        # every name on /metrics is the one the generated module and reference declare
        exposed = {name for name, _ in samples}
        for definition in ratelimit.METRICS.values():
            assert any(name.startswith(definition.prometheus_name) for name in exposed), definition.name
    finally:
        handle.shutdown()


def test_an_open_ended_attribute_folds_at_its_declared_limit_and_counts_the_overflow():
    handle, captured = _configure()
    try:
        limiter = RateLimiterMetrics()
        for client in range(60):  # ratelimit.client is bounded at 50
            limiter.count_decision("api", "search", "allowed", client=f"tenant-{client}")
        clients = {
            attributes.get("ratelimit.client") for attributes in captured.series("ratelimit.decisions")
        }
        assert len(clients) == 51
        assert "_OTHER" in clients
        assert captured.value("ratelimit.decisions", client="_OTHER") == 10
        assert captured.value("ratelimit.decisions") == 60  # folded, never lost
        overflows = captured.value(
            "meshmetrics.attribute.overflows",
            meshmetrics_metric="ratelimit.decisions",
            meshmetrics_attribute="ratelimit.client",
        )
        assert overflows == 10
    finally:
        handle.shutdown()


def test_invalid_values_are_dropped_and_counted_in_production_and_raise_in_strict_mode():
    handle, captured = _configure()
    try:
        limiter = RateLimiterMetrics()
        limiter.count_decision("api", "search", "allowed", -1)  # a counter never goes down
        limiter.record_wait("api", "search", "delayed", float("nan"))
        limiter.set_tokens_remaining("api", "search", "many")  # type: ignore[arg-type]
        limiter.count_decision("api", "search", "no-such-outcome")  # an enum without _OTHER: rejected
        assert captured.value("ratelimit.decisions") == 0
        assert captured.histogram("ratelimit.wait.duration").count == 0
        rejected = captured.value("meshmetrics.measurements.rejected", reason="invalid_value")
        assert rejected == 3
        assert captured.value("meshmetrics.measurements.rejected", reason="invalid_attribute") == 1
    finally:
        handle.shutdown()

    handle, _ = _configure(strict=True, prometheus=False)
    try:
        limiter = RateLimiterMetrics()
        with pytest.raises(meshmetrics.InvalidMeasurement, match=r"ratelimit.decisions: amount=-1"):
            limiter.count_decision("api", "search", "allowed", -1)
        with pytest.raises(meshmetrics.InvalidMeasurement, match=r"seconds=nan"):
            limiter.record_wait("api", "search", "delayed", float("nan"))
        with pytest.raises(ValueError, match=r"ratelimit.outcome"):
            limiter.count_decision("api", "search", "no-such-outcome")
    finally:
        handle.shutdown()


def test_before_configure_every_method_is_a_no_op():
    previous = _runtime.state.current
    _runtime.state.current = None
    try:
        limiter = RateLimiterMetrics()
        assert limiter.count_decision("api", "search", "allowed") is None
        assert limiter.record_wait("api", "search", "allowed", 0.1) is None
        assert limiter.set_tokens_remaining("api", "search", 1) is None
        assert limiter.add_waiting("api", "search") is None
    finally:
        _runtime.state.current = previous


def test_an_explicit_meter_provider_records_through_the_sdk():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    limiter = RateLimiterMetrics(meter_provider=provider)
    limiter.count_decision("api", "search", "allowed", 2)
    limiter.record_wait("api", "search", "allowed", 0.004)
    captured = CapturedMetrics(reader)
    names = {
        m.name for r in reader.get_metrics_data().resource_metrics for s in r.scope_metrics for m in s.metrics
    }
    assert {"ratelimit.decisions", "ratelimit.wait.duration"} <= names
    ((attributes, point),) = captured.points("ratelimit.decisions")
    assert point.value == 2
    assert attributes == {
        "mesh.service": "api",
        "ratelimit.limiter": "search",
        "ratelimit.outcome": "allowed",
    }
    ((_, wait),) = captured.points("ratelimit.wait.duration")
    assert tuple(wait.explicit_bounds) == ratelimit.METRICS["ratelimit.wait.duration"].buckets  # the advice
    assert wait.bucket_counts[0:2] == (0, 1)
    provider.shutdown()


def test_the_minimal_profile_drops_what_the_plugin_declares_and_attribute_policies_reach_it():
    handle, captured = _configure(detail="minimal", prometheus=False)
    try:
        RateLimiterMetrics().count_decision("api", "search", "allowed", client="tenant-1")
        (attributes,) = captured.series("ratelimit.decisions")
        assert "ratelimit.client" not in attributes  # minimal: drop
        assert attributes["ratelimit.limiter"] == "search"
    finally:
        handle.shutdown()

    handle, captured = _configure(
        prometheus=False, attribute_policies={"ratelimit.limiter": meshmetrics.hashed(4)}
    )
    try:
        RateLimiterMetrics().count_decision("api", "search", "allowed")
        (attributes,) = captured.series("ratelimit.decisions")
        assert attributes["ratelimit.limiter"].startswith("h")  # hashed into one of 4 buckets
    finally:
        handle.shutdown()


def test_a_facade_records_without_its_file_given_to_configure():
    with capture() as captured:  # configure() was never told of the plugin
        RateLimiterMetrics().count_decision("api", "search", "delayed", 4)
        assert captured.value("ratelimit.decisions", outcome="delayed") == 4


def test_a_stale_generated_module_is_refused_not_recorded_under_the_wrong_shape(tmp_path):
    changed = tmp_path / "ratelimit.yaml"
    text = YAML.read_text()
    old = "      - {ref: ratelimit.client, requirement_level: recommended}\n"
    assert old in text
    changed.write_text(text.replace(old, ""))  # the decisions metric loses an attribute; the module is stale
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], conventions=[changed], prometheus=False, set_global=False, environ={}
    )
    try:
        RateLimiterMetrics().count_decision("api", "search", "allowed")
        captured = CapturedMetrics(reader)
        assert captured.value("ratelimit.decisions") == 0
        assert captured.value("meshmetrics.measurements.rejected", reason="internal_error") == 1
    finally:
        handle.shutdown()


def test_a_stale_module_is_refused_even_after_a_current_one_recorded_the_same_attributes(tmp_path):
    changed = tmp_path / "ratelimit.yaml"
    text = YAML.read_text()
    old = "brief: Decisions of the rate limiter, by outcome."
    assert old in text
    changed.write_text(text.replace(old, "brief: What the limiter decided."))
    current = tmp_path / "current_metrics.py"
    assert main(["generate", str(changed), "--output", str(current)]) == 0
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], conventions=[changed], prometheus=False, set_global=False, environ={}
    )
    try:
        import_path(current, "current_metrics").RateLimiterMetrics().count_decision(
            "api", "search", "allowed"
        )
        RateLimiterMetrics().count_decision("api", "search", "allowed")  # same attributes, stale module
        captured = CapturedMetrics(reader)
        assert captured.value("ratelimit.decisions") == 1
        assert captured.value("meshmetrics.measurements.rejected", reason="internal_error") == 1
    finally:
        handle.shutdown()


@pytest.mark.parametrize("merger_knows_the_plugin", [True, False], ids=["configured", "from-worker-files"])
def test_workers_merge_a_plugin_gauge_by_its_declared_rule(tmp_path, merger_knows_the_plugin):
    child = textwrap.dedent(
        f"""
        import importlib.util, sys, time
        import meshmetrics
        spec = importlib.util.spec_from_file_location("ratelimit_metrics", {str(PLUGIN / "ratelimit_metrics.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        meshmetrics.configure(
            multiprocess_dir={str(tmp_path)!r}, multiprocess_interval=0.1, prometheus=False, environ={{}}
        )
        limiter = module.RateLimiterMetrics()  # this worker was not given the file: adopted on first use
        limiter.set_tokens_remaining("api", "search", int(sys.argv[1]))
        limiter.count_decision("api", "search", "allowed", int(sys.argv[1]))
        time.sleep(0.5)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", child, str(tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for tokens in (7, 5)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            lines = iter(worker.stdout.readline, "")  # structlog's lines first
            assert any(line.strip() == "ready" for line in lines)
        handle = meshmetrics.configure(
            conventions=[YAML] if merger_knows_the_plugin else None,
            multiprocess_dir=str(tmp_path),
            prometheus_port=0,
            prometheus_host="127.0.0.1",
            set_global=False,
            environ={},
        )
        try:
            expected = 12  # rule sum: 7 + 5 from the workers' files
            if merger_knows_the_plugin:
                RateLimiterMetrics().set_tokens_remaining("api", "search", 3)
                expected += 3
            samples = _scrape(handle)
            labels = {"mesh_service": "api", "ratelimit_limiter": "search"}
            assert sample(samples, "ratelimit_tokens_remaining", **labels) == expected
            assert sample(samples, "ratelimit_decisions_total", **labels, ratelimit_outcome="allowed") == 12
        finally:
            handle.shutdown()
    finally:
        for worker in workers:
            worker.communicate(timeout=30)
