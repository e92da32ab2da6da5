"""The demo, scraped by a real Prometheus: every dashboard and rule query parses; every panel has data."""

from __future__ import annotations

import time
from urllib.request import urlopen

import pytest

from meshmetrics import semconv
from tests.conftest import parse_samples
from tests.e2e.servers import prometheus_server, running_demo
from tests.unit.test_dashboards_and_rules import RULES, dashboard_queries, rule_queries

pytestmark = pytest.mark.e2e

SUBSTITUTIONS = {"$__rate_interval": "10s", "$service": ".*"}


def grafana_to_promql(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


@pytest.fixture(scope="module")
def demo_port():
    with running_demo("--duration", "90", "--cycle", "8", "--rate", "150", "--seed", "3") as port:
        yield port


def test_every_registry_metric_is_in_the_demo_exposition(demo_port):
    expected = {
        d.prometheus_name + ("_count" if d.instrument == "histogram" else "")
        for d in semconv.METRICS.values()
    }
    deadline = time.monotonic() + 30  # a fault cycle (8 s) has an outage, a breaker trip and recovery
    while True:
        with urlopen(f"http://127.0.0.1:{demo_port}/metrics", timeout=5) as response:
            missing = expected - {name for name, _ in parse_samples(response.read().decode())}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing


def test_dashboard_and_rule_queries_against_real_prometheus(demo_port):
    with prometheus_server([f"127.0.0.1:{demo_port}"], rule_files=(str(RULES),)) as prometheus:
        # wait until a breaker has tripped and recovered in the scraped data
        assert prometheus.wait_for("mesh_circuit_breaker_recovery_duration_seconds_count > 0", timeout=40)
        time.sleep(12)  # a few more scrapes so every rate window holds two samples
        empty = []
        for expr in dashboard_queries():
            if expr.startswith("label_values"):
                continue  # a Grafana function, not PromQL
            result = prometheus.query(grafana_to_promql(expr))  # raises unless it parses and runs
            if not result:
                empty.append(expr)
        assert not empty, f"dashboard panels without data: {empty}"
        rule_exprs, _ = rule_queries()
        for expr in rule_exprs:
            prometheus.query(expr)
        # the recording rules evaluate to data for the demo's services
        services = {
            s["metric"]["mesh_service"] for s in prometheus.wait_for("mesh_service:mesh_calls:rate5m")
        }
        assert services == {"users", "orders", "payments"}
        assert prometheus.wait_for("mesh_service:mesh_call_duration_seconds:p99_5m")
