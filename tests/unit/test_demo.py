"""The demo (``make demo``) exercises every mesh metric and shows a living mesh."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from urllib.request import urlopen

import pytest

from meshmetrics import semconv
from meshmetrics._cli import demo as _demo
from meshmetrics.testing import capture
from tests.conftest import parse_samples
from tests.e2e.servers import free_port, wait_for_port


def test_demo_emits_every_mesh_metric_and_breakers_recover():
    out = io.StringIO()
    with capture(strict=False) as captured:  # the demo's legacy clients send a few invalid values
        _demo.run(duration=4.5, rate=300, seed=7, out=out, cycle_s=2.0, summary_every_s=1.0)
    for name in semconv.METRICS:
        assert captured.points(name), f"the demo never emitted {name}"
    assert captured.value("meshmetrics.attribute.overflows", attribute="mesh.lb.strategy") >= 1
    assert captured.value("meshmetrics.measurements.rejected", metric="mesh.lb.request.duration") >= 1
    assert (
        captured.value(
            "mesh.circuit_breaker.transitions", service="orders", previous_state="closed", state="open"
        )
        >= 1
    )
    assert captured.histogram("mesh.circuit_breaker.recovery.duration", service="orders").count >= 1
    assert captured.value("mesh.circuit_breaker.calls", service="orders", call_outcome="rejected") >= 1
    assert captured.value("mesh.registry.operations", registry_operation="deregister") >= 1
    assert captured.value("mesh.retry.calls", outcome="successful_with_retry") >= 1
    # outlier detection: the flaky instance is ejected and comes back; time ejected and in state add up
    assert captured.value("mesh.lb.ejections", service="orders", instance="orders-1") >= 1
    assert captured.value("mesh.lb.ejection.time", service="orders", instance="orders-1") > 0
    assert captured.value("mesh.lb.ejections.active", service="orders") in (0, 1)
    assert captured.value("mesh.circuit_breaker.state.time", service="orders", state="open") > 0
    assert captured.value("mesh.circuit_breaker.state.time", service="users", state="closed") > 0
    # the retry budget refuses retries during incidents, and says so
    assert captured.value("mesh.retry.exhausted", exhaust_reason="budget") >= 1
    assert 0 <= captured.value("mesh.retry.budget.remaining", service="orders") < 100
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "service",
        "rps",
        "success",
        "p50",
        "ms",
        "p99",
        "ms",
        "retry",
        "breaker",
        "ejected",
    ]
    assert {line.split()[0] for line in lines if line and not line.startswith("service")} == {
        "users",
        "orders",
        "payments",
    }


def test_demo_cli_serves_metrics_and_stops_cleanly():
    port = free_port()
    env = {**os.environ, "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "meshmetrics", "demo", "--duration", "4", "--port", str(port), "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_port(port)
        time.sleep(1.0)
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            samples = parse_samples(response.read().decode())
        names = {name for name, _ in samples}
        assert "mesh_lb_requests_total" in names
        assert "mesh_call_duration_seconds_count" in names
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert b"metrics on http://127.0.0.1:" in output
    assert b"stopped (flushed)" in output


@pytest.mark.parametrize("argv", [["demo", "--help"]])
def test_cli_help(argv):
    result = subprocess.run([sys.executable, "-m", "meshmetrics", *argv], capture_output=True, check=True)
    assert b"--duration" in result.stdout
