"""Every example runs and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.servers import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str) -> str:
    env = {
        **os.environ,
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(free_port()),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return result.stdout


def test_seed_usage_example():
    out = run_example("seed_usage.py")
    assert (
        'mesh_lb_requests_total{mesh_instance="api-1",mesh_lb_strategy="round_robin",mesh_service="api"'
        in out
    )
    assert (
        'mesh_retry_attempts_total{mesh_operation="get_user",mesh_retry_attempt="1",mesh_service="api"' in out
    )


def test_retry_library_examples():
    for name in ("tenacity_retry.py", "stamina_retry.py", "backoff_retry.py"):
        out = run_example(name)
        assert "result: alice" in out, name
        calls = [line for line in out.splitlines() if line.startswith("mesh_retry_calls_total")]
        assert len(calls) == 1 and 'mesh_retry_outcome="successful_with_retry"' in calls[0], (name, out)
        assert calls[0].endswith(" 1.0"), name


def test_breaker_library_examples():
    for name, service in (("pybreaker_breaker.py", "payments"), ("purgatory_breaker.py", "inventory")):
        out = run_example(name)
        assert "call failed:" in out, name
        assert (
            f'mesh_circuit_breaker_state{{mesh_circuit_breaker_state="open",mesh_service="{service}"' in out
        ), name
        rejected = [line for line in out.splitlines() if 'call_outcome="rejected"' in line]
        assert rejected and rejected[0].endswith(" 1.0"), (name, out)


def test_plugin_example_counts_every_decision_of_its_limiter():
    out = run_example("plugins/ratelimit/use_ratelimiter.py")
    decisions = [line for line in out.splitlines() if line.startswith("ratelimit_decisions_total{")]
    admitted = int(out.split("admitted ", 1)[1].split(" ", 1)[0])
    total = sum(float(line.rsplit(" ", 1)[1]) for line in decisions)
    assert total == 40
    refused = sum(
        float(line.rsplit(" ", 1)[1]) for line in decisions if 'ratelimit_outcome="rejected"' in line
    )
    assert refused == 40 - admitted > 0  # 8 at once against 5 tokens: some are refused
    assert any('ratelimit_client="tenant-2"' in line for line in decisions)
    (waiting,) = [line for line in out.splitlines() if line.startswith("ratelimit_waiting{")]
    assert waiting.endswith(" 0.0")  # nobody is left waiting
