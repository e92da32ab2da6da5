"""The example plugin end to end: a real Prometheus scrapes it and runs its rules and dashboard; rotel gets OTLP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import meshmetrics
from tests.conftest import import_path
from tests.e2e.servers import free_port, prometheus_server, rotel_receiver

pytestmark = pytest.mark.e2e

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "ratelimit"


def _facade() -> type:
    return import_path(PLUGIN / "ratelimit_metrics.py", "ratelimit_metrics_e2e").RateLimiterMetrics


def _record(limiter) -> None:
    for _ in range(7):
        limiter.count_decision("api", "search", "allowed", client="tenant-1")
    limiter.count_decision("api", "search", "rejected", 3, client="tenant-2")
    for seconds in (0.002, 0.02, 0.03, 0.2):
        limiter.record_wait("api", "search", "delayed", seconds)
    limiter.set_tokens_remaining("api", "search", 9)
    limiter.add_waiting("api", "search")


def test_otlp_carries_every_plugin_instrument_with_exact_values():
    with rotel_receiver() as rotel:
        handle = meshmetrics.configure(
            conventions=[PLUGIN / "ratelimit.yaml"],
            prometheus=False,
            otlp_endpoint=rotel.grpc_endpoint,
            export_interval=60,
            service_name="e2e-plugin",
            set_global=False,
            environ={},
        )
        try:
            _record(_facade()())
            assert handle.force_flush(timeout=10) is True
            base = {"mesh.service": "api", "ratelimit.limiter": "search"}
            allowed = rotel.wait_for(
                "ratelimit.decisions",
                **base,
                **{"ratelimit.outcome": "allowed", "ratelimit.client": "tenant-1"},
            )
            assert allowed["value"] == 7
            rejected = rotel.wait_for(
                "ratelimit.decisions",
                **base,
                **{"ratelimit.outcome": "rejected", "ratelimit.client": "tenant-2"},
            )
            assert rejected["value"] == 3
            wait = rotel.wait_for("ratelimit.wait.duration", **base, **{"ratelimit.outcome": "delayed"})
            assert wait["count"] == 4
            assert wait["sum"] == pytest.approx(0.252)
            assert wait["bounds"] == [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
            assert wait["buckets"] == [0, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0]
            assert rotel.wait_for("ratelimit.tokens.remaining", **base)["value"] == 9
            assert rotel.wait_for("ratelimit.waiting", **base)["value"] == 1
        finally:
            handle.shutdown()


def test_prometheus_scrapes_the_plugin_and_runs_its_generated_rules_and_dashboard():
    port = free_port()
    handle = meshmetrics.configure(
        conventions=[PLUGIN / "ratelimit.yaml"],
        prometheus_port=port,
        prometheus_host="127.0.0.1",
        set_global=False,
        environ={},
    )
    try:
        limiter = _facade()()
        _record(limiter)
        rules = (str(PLUGIN / "rules.yaml"),)
        with prometheus_server([f"127.0.0.1:{port}"], rule_files=rules) as prometheus:
            found = prometheus.wait_for('ratelimit_decisions_total{ratelimit_outcome="allowed"}')
            assert [float(series["value"][1]) for series in found] == [7.0]
            assert found[0]["metric"]["ratelimit_client"] == "tenant-1"
            count = prometheus.wait_for("ratelimit_wait_duration_seconds_count")
            assert float(count[0]["value"][1]) == 4
            _record(limiter)  # a second round between scrapes: rates and quantiles have something to show
            recorded = prometheus.wait_for(
                "mesh_service_ratelimit_limiter_ratelimit_outcome:ratelimit_decisions:rate5m", timeout=30
            )
            assert {series["metric"]["ratelimit_outcome"] for series in recorded} == {"allowed", "rejected"}
            p99 = prometheus.wait_for(
                "mesh_service_ratelimit_limiter_ratelimit_outcome:ratelimit_wait_duration_seconds:p99_5m"
            )
            assert p99, "the histogram rule recorded nothing"
            dashboard = json.loads((PLUGIN / "dashboard.json").read_text())
            expressions = [
                target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
            ]
            names = (
                "ratelimit_decisions_total",
                "ratelimit_tokens_remaining",
                "ratelimit_wait_duration_seconds",
            )
            assert all(any(name in e for e in expressions) for name in (*names, "ratelimit_waiting"))
            for expression in expressions:
                query = expression.replace("$__rate_interval", "1m").replace("$service", ".*")
                result = prometheus.wait_for(query, timeout=30)  # fails unless Prometheus accepts it
                assert result, f"no data for a dashboard query: {query}"
    finally:
        handle.shutdown()
