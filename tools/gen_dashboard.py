"""Generate ``conventions/dashboards/mesh-overview.json``, the Grafana dashboard.

Usage::

    python tools/gen_dashboard.py [--check]

Metric and label names come from the registry (``meshmetrics.semconv``); a test
checks every query against it, and the end-to-end test runs every query on a
real Prometheus scraping the demo. The rows are curated here; the queries'
helpers and the dashboard's assembly are meshmetrics' own
(``meshmetrics._conventions.dashboard``), which also derives a plugin's
dashboard (``python -m meshmetrics generate --dashboard``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshmetrics import semconv
from meshmetrics._conventions.dashboard import RATE_INTERVAL as RI
from meshmetrics._conventions.dashboard import SERVICE_MATCHER as SEL
from meshmetrics._conventions.dashboard import Row, build, quantile, rate, ratio, render
from meshmetrics._conventions.files import write_or_check

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "conventions" / "dashboards" / "mesh-overview.json"

M = semconv.PROMETHEUS_NAMES
CALLS = M["mesh.call.duration"] + "_count"
ATTEMPTS = M["mesh.retry.attempts"]

# (row title, [(panel title, panel type, unit, description, [(expr, legend)])])
ROWS: list[Row] = [
    (
        "Golden signals",
        [
            (
                "Call rate",
                "timeseries",
                "reqps",
                "Calls per second to each destination service.",
                [(rate(CALLS, "mesh_service"), "{{mesh_service}}")],
            ),
            (
                "Success rate",
                "timeseries",
                "percentunit",
                "Share of calls that succeeded.",
                [
                    (
                        ratio(
                            rate(CALLS, "mesh_service", 'mesh_outcome="success"'), rate(CALLS, "mesh_service")
                        ),
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Call latency p50 / p99",
                "timeseries",
                "s",
                "From mesh.call.duration buckets.",
                [
                    (quantile("0.5", M["mesh.call.duration"], "mesh_service"), "p50 {{mesh_service}}"),
                    (quantile("0.99", M["mesh.call.duration"], "mesh_service"), "p99 {{mesh_service}}"),
                ],
            ),
            (
                "Failed calls by error type",
                "timeseries",
                "reqps",
                "error.type of failed calls.",
                [
                    (
                        rate(CALLS, "mesh_service, error_type", 'mesh_outcome="failure"'),
                        "{{mesh_service}} {{error_type}}",
                    )
                ],
            ),
            (
                "Calls in flight",
                "timeseries",
                "short",
                "mesh.calls.active.",
                [(f"sum by (mesh_service) ({M['mesh.calls.active']}{{{SEL}}})", "{{mesh_service}}")],
            ),
        ],
    ),
    (
        "Load balancing",
        [
            (
                "Requests per instance",
                "timeseries",
                "reqps",
                "Distribution of picks across instances.",
                [(rate(M["mesh.lb.requests"], "mesh_service, mesh_instance"), "{{mesh_instance}}")],
            ),
            (
                "Load imbalance",
                "timeseries",
                "short",
                "Busiest instance's share over the mean share (1 = even).",
                [
                    (
                        f"max by (mesh_service, mesh_lb_strategy) ({M['mesh.lb.load_imbalance']}{{{SEL}}})",
                        "{{mesh_service}} ({{mesh_lb_strategy}})",
                    )
                ],
            ),
            (
                "Latency p99 per instance",
                "timeseries",
                "s",
                "From mesh.lb.request.duration buckets.",
                [
                    (
                        quantile("0.99", M["mesh.lb.request.duration"], "mesh_service, mesh_instance"),
                        "{{mesh_instance}}",
                    )
                ],
            ),
            (
                "Pick share per instance",
                "timeseries",
                "percentunit",
                "Each instance's share of its service's picks (mesh.lb.requests).",
                [
                    (
                        ratio(
                            rate(M["mesh.lb.requests"], "mesh_service, mesh_instance"),
                            "ignoring (mesh_instance) group_left "
                            + rate(M["mesh.lb.requests"], "mesh_service"),
                        ),
                        "{{mesh_service}} {{mesh_instance}}",
                    )
                ],
            ),
            (
                "Latency estimate per instance",
                "timeseries",
                "s",
                "What latency-aware strategies pick by, e.g. an EWMA (mesh.lb.instance.latency_estimate).",
                [
                    (
                        f"max by (mesh_service, mesh_instance) "
                        f"({M['mesh.lb.instance.latency_estimate']}{{{SEL}}})",
                        "{{mesh_instance}}",
                    )
                ],
            ),
            (
                "Active connections",
                "timeseries",
                "short",
                "mesh.lb.connections.active per instance.",
                [
                    (
                        f"sum by (mesh_service, mesh_instance) ({M['mesh.lb.connections.active']}{{{SEL}}})",
                        "{{mesh_instance}}",
                    )
                ],
            ),
            (
                "Instance health score",
                "timeseries",
                "percentunit",
                "The balancer's score, 0 to 1.",
                [
                    (
                        f"max by (mesh_service, mesh_instance) ({M['mesh.lb.instance.health_score']}{{{SEL}}})",
                        "{{mesh_instance}}",
                    )
                ],
            ),
            (
                "Endpoints by health state",
                "timeseries",
                "short",
                "mesh.lb.endpoints.",
                [
                    (
                        f"sum by (mesh_service, mesh_health_state) ({M['mesh.lb.endpoints']}{{{SEL}}})",
                        "{{mesh_service}} {{mesh_health_state}}",
                    )
                ],
            ),
            (
                "Ejections by reason",
                "timeseries",
                "ops",
                "Outlier detection ejecting instances (mesh.lb.ejections).",
                [
                    (
                        rate(M["mesh.lb.ejections"], "mesh_service, mesh_instance, mesh_lb_ejection_reason"),
                        "{{mesh_instance}} {{mesh_lb_ejection_reason}}",
                    )
                ],
            ),
            (
                "Ejected endpoints",
                "timeseries",
                "short",
                "Instances out of the pool now (mesh.lb.ejections.active).",
                [
                    (
                        f"sum by (mesh_service) ({M['mesh.lb.ejections.active']}{{{SEL}}})",
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Share of time ejected",
                "timeseries",
                "percentunit",
                "Seconds ejected per second, per instance (mesh.lb.ejection.time).",
                [
                    (
                        rate(M["mesh.lb.ejection.time"], "mesh_service, mesh_instance"),
                        "{{mesh_instance}}",
                    )
                ],
            ),
            (
                "Request errors by type",
                "timeseries",
                "reqps",
                "mesh.lb.errors.",
                [(rate(M["mesh.lb.errors"], "mesh_service, error_type"), "{{mesh_service}} {{error_type}}")],
            ),
            (
                "Connection failures",
                "timeseries",
                "reqps",
                "mesh.lb.connection.failures.",
                [
                    (
                        rate(M["mesh.lb.connection.failures"], "mesh_service, mesh_instance"),
                        "{{mesh_instance}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Retries",
        [
            (
                "Attempts by ordinal",
                "timeseries",
                "reqps",
                "1 = first try; 2 and up are retries.",
                [(rate(ATTEMPTS, "mesh_retry_attempt"), "attempt {{mesh_retry_attempt}}")],
            ),
            (
                "Retry ratio",
                "timeseries",
                "percentunit",
                "Retries over all attempts.",
                [
                    (
                        ratio(
                            rate(ATTEMPTS, "mesh_service", 'mesh_retry_attempt!="1"'),
                            rate(ATTEMPTS, "mesh_service"),
                        ),
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Call outcomes",
                "timeseries",
                "reqps",
                "mesh.retry.calls by resilience4j kind.",
                [
                    (
                        rate(M["mesh.retry.calls"], "mesh_service, mesh_retry_outcome"),
                        "{{mesh_service}} {{mesh_retry_outcome}}",
                    )
                ],
            ),
            (
                "Attempts per call (mean)",
                "timeseries",
                "short",
                "From mesh.retry.call.attempts.",
                [
                    (
                        ratio(
                            rate(M["mesh.retry.call.attempts"] + "_sum", "mesh_service"),
                            rate(M["mesh.retry.call.attempts"] + "_count", "mesh_service"),
                        ),
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Backoff delay p50 / p99",
                "timeseries",
                "s",
                "mesh.retry.delay.",
                [
                    (quantile("0.5", M["mesh.retry.delay"], "mesh_service"), "p50 {{mesh_service}}"),
                    (quantile("0.99", M["mesh.retry.delay"], "mesh_service"), "p99 {{mesh_service}}"),
                ],
            ),
            (
                "Retried call duration p99",
                "timeseries",
                "s",
                "mesh.retry.duration, all attempts and backoff.",
                [(quantile("0.99", M["mesh.retry.duration"], "mesh_service"), "{{mesh_service}}")],
            ),
            (
                "Failed attempts by error type",
                "timeseries",
                "reqps",
                "mesh.retry.errors.",
                [
                    (
                        rate(M["mesh.retry.errors"], "mesh_service, error_type"),
                        "{{mesh_service}} {{error_type}}",
                    )
                ],
            ),
            (
                "Retry budget remaining",
                "timeseries",
                "short",
                "Retries the budget allows now; at 0 retries are refused (exhaust_reason=budget).",
                [
                    (
                        f"min by (mesh_service) ({M['mesh.retry.budget.remaining']}{{{SEL}}})",
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Retries exhausted by reason",
                "timeseries",
                "reqps",
                "max_attempts, budget, deadline, circuit_open.",
                [
                    (
                        rate(M["mesh.retry.exhausted"], "mesh_service, mesh_retry_exhaust_reason"),
                        "{{mesh_service}} {{mesh_retry_exhaust_reason}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Circuit breakers",
        [
            (
                "Breaker state",
                "state-timeline",
                "short",
                "The one-hot state gauge: the state whose value is 1.",
                [
                    (
                        f"max by (mesh_service, mesh_circuit_breaker_state) ({M['mesh.circuit_breaker.state']}{{{SEL}}}) == 1",
                        "{{mesh_service}} {{mesh_circuit_breaker_state}}",
                    )
                ],
            ),
            (
                "Share of time in each state",
                "timeseries",
                "percentunit",
                "Seconds per second in each state (mesh.circuit_breaker.state.time): "
                "shows openings shorter than a scrape interval.",
                [
                    (
                        rate(
                            M["mesh.circuit_breaker.state.time"], "mesh_service, mesh_circuit_breaker_state"
                        ),
                        "{{mesh_service}} {{mesh_circuit_breaker_state}}",
                    )
                ],
            ),
            (
                "Transitions",
                "timeseries",
                "short",
                "mesh.circuit_breaker.transitions.",
                [
                    (
                        f"sum by (mesh_service, mesh_circuit_breaker_previous_state, mesh_circuit_breaker_state) (increase({M['mesh.circuit_breaker.transitions']}{{{SEL}}}[{RI}]))",
                        "{{mesh_service}} {{mesh_circuit_breaker_previous_state}} → {{mesh_circuit_breaker_state}}",
                    )
                ],
            ),
            (
                "Calls by outcome (rejected = refused by an open breaker)",
                "timeseries",
                "reqps",
                "mesh.circuit_breaker.calls.",
                [
                    (
                        rate(
                            M["mesh.circuit_breaker.calls"], "mesh_service, mesh_circuit_breaker_call_outcome"
                        ),
                        "{{mesh_service}} {{mesh_circuit_breaker_call_outcome}}",
                    )
                ],
            ),
            (
                "Failure rate",
                "timeseries",
                "percentunit",
                "Over each breaker's sliding window.",
                [
                    (
                        f"max by (mesh_service) ({M['mesh.circuit_breaker.failure_rate']}{{{SEL}}})",
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Mean recovery time (1 h)",
                "timeseries",
                "s",
                "Open to closed again.",
                [
                    (
                        f"sum by (mesh_service) (increase({M['mesh.circuit_breaker.recovery.duration']}_sum{{{SEL}}}[1h]))\n/\n"
                        f"sum by (mesh_service) (increase({M['mesh.circuit_breaker.recovery.duration']}_count{{{SEL}}}[1h]))",
                        "{{mesh_service}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Registry and health",
        [
            (
                "Registry operations",
                "timeseries",
                "ops",
                "register, renew, deregister by outcome.",
                [
                    (
                        rate(
                            M["mesh.registry.operations"],
                            "mesh_service, mesh_registry_operation, mesh_outcome",
                        ),
                        "{{mesh_service}} {{mesh_registry_operation}} {{mesh_outcome}}",
                    )
                ],
            ),
            (
                "Registered instances",
                "timeseries",
                "short",
                "mesh.registry.instances.",
                [(f"sum by (mesh_service) ({M['mesh.registry.instances']}{{{SEL}}})", "{{mesh_service}}")],
            ),
            (
                "Unhealthy instances",
                "timeseries",
                "short",
                "Instances whose health state is unhealthy.",
                [
                    (
                        f'sum by (mesh_service) ({M["mesh.health.status"]}{{{SEL},mesh_health_state="unhealthy"}})',
                        "{{mesh_service}}",
                    )
                ],
            ),
            (
                "Health check failure ratio",
                "timeseries",
                "percentunit",
                "mesh.health.checks.",
                [
                    (
                        ratio(
                            rate(M["mesh.health.checks"], "mesh_service", 'mesh_outcome="failure"'),
                            rate(M["mesh.health.checks"], "mesh_service"),
                        ),
                        "{{mesh_service}}",
                    )
                ],
            ),
        ],
    ),
    (
        "meshmetrics itself",
        [
            (
                "Values folded into _OTHER",
                "timeseries",
                "ops",
                "Cardinality budget overflows.",
                [
                    (
                        f"sum by (meshmetrics_metric, meshmetrics_attribute) (rate({M['meshmetrics.attribute.overflows']}[{RI}]))",
                        "{{meshmetrics_metric}} {{meshmetrics_attribute}}",
                    )
                ],
            ),
            (
                "Rejected measurements",
                "timeseries",
                "ops",
                "Invalid input dropped in production mode.",
                [
                    (
                        f"sum by (meshmetrics_metric, meshmetrics_reason) (rate({M['meshmetrics.measurements.rejected']}[{RI}]))",
                        "{{meshmetrics_metric}} {{meshmetrics_reason}}",
                    )
                ],
            ),
        ],
    ),
]

TITLE = "meshmetrics: mesh overview"
UID = "meshmetrics-overview"
DESCRIPTION = (
    "Golden signals, load balancing, retries, circuit breakers, registry and health from meshmetrics."
)
TAGS = ["meshmetrics", "service-mesh"]
SERVICE_SERIES = f"{M['mesh.call.duration']}_count"


def render_overview() -> str:
    dashboard = build(
        ROWS, title=TITLE, uid=UID, description=DESCRIPTION, tags=TAGS, service_series=SERVICE_SERIES
    )
    return render(dashboard)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the dashboard is stale")
    args = parser.parse_args()
    return write_or_check({OUTPUT: render_overview()}, check=args.check, fix="make conventions", root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
