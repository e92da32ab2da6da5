"""Generate ``conventions/prometheus/rules.yaml``: recording rules and alerts for meshmetrics.

Usage::

    python tools/gen_rules.py [--objective 0.999] [--runbook-base URL] [--output PATH] [--check]

Every metric and label name comes from the registry (``meshmetrics.semconv``),
so a renamed metric breaks generation instead of silently breaking an alert.
The SLO alerts follow the multi-window, multi-burn-rate form of the Google SRE
workbook (chapter 5): page at 14.4x (1 h / 5 m) and 6x (6 h / 30 m) burn,
ticket at 3x (1 d / 2 h) and 1x (3 d / 6 h). The rules are curated here; the
file's assembly is meshmetrics' own (``meshmetrics._conventions.rules``), which
also derives a plugin's recording rules (``python -m meshmetrics generate --rules``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshmetrics import semconv
from meshmetrics._conventions.files import write_or_check
from meshmetrics._conventions.rules import RECORDING_QUANTILES, alert
from meshmetrics._conventions.rules import render as render_rules

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "conventions" / "prometheus" / "rules.yaml"
# Relative to the repository by default; point it at where you host the runbooks
# with --runbook-base (e.g. https://wiki.example.com/meshmetrics-runbooks).
RUNBOOK = "conventions/prometheus/README.md"

M = semconv.PROMETHEUS_NAMES
CALLS = M["mesh.call.duration"] + "_count"
CALL_BUCKETS = M["mesh.call.duration"] + "_bucket"
ATTEMPTS = M["mesh.retry.attempts"]
BREAKER_STATE = M["mesh.circuit_breaker.state"]
BREAKER_STATE_TIME = M["mesh.circuit_breaker.state.time"]
EJECTIONS = M["mesh.lb.ejections"]
HEALTH = M["mesh.health.status"]
OVERFLOWS = M["meshmetrics.attribute.overflows"]
REJECTED = M["meshmetrics.measurements.rejected"]

L = semconv.PROMETHEUS_LABELS
SERVICE = L["mesh.service"]
OUTCOME = L["mesh.outcome"]
INSTANCE = L["mesh.instance"]
ATTEMPT = L["mesh.retry.attempt"]
STATE = L["mesh.circuit_breaker.state"]
HEALTH_STATE = L["mesh.health.state"]
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
ERROR_RATIO_THRESHOLD = 0.05
P99_THRESHOLD_S = 1.0
RETRY_RATIO_THRESHOLD = 0.2
BREAKER_OPEN_SHARE_THRESHOLD = 0.1  # 6 minutes of the last hour
RECURRING_EJECTIONS = 3  # per instance in an hour


def recording_rules() -> list[dict[str, str]]:
    rules = [
        {"record": f"{SERVICE}:mesh_calls:rate5m", "expr": f"sum by ({SERVICE}) (rate({CALLS}[5m]))"},
        {
            "record": f"{SERVICE}:mesh_call_failures:rate5m",
            "expr": f'sum by ({SERVICE}) (rate({CALLS}{{{OUTCOME}="failure"}}[5m]))',
        },
        {
            "record": f"{SERVICE}:mesh_call_success:ratio_rate5m",
            "expr": f"1 - ({SERVICE}:mesh_call_failures:rate5m / {SERVICE}:mesh_calls:rate5m)",
        },
    ]
    for quantile, name in RECORDING_QUANTILES:
        rules.append(
            {
                "record": f"{SERVICE}:mesh_call_duration_seconds:{name}_5m",
                "expr": f"histogram_quantile({quantile}, sum by ({SERVICE}, le) (rate({CALL_BUCKETS}[5m])))",
            }
        )
    for window in SLO_WINDOWS:
        rules.append(
            {
                "record": f"{SERVICE}:mesh_call_errors:ratio_rate{window}",
                "expr": (
                    f'sum by ({SERVICE}) (rate({CALLS}{{{OUTCOME}="failure"}}[{window}]))'
                    f" / sum by ({SERVICE}) (rate({CALLS}[{window}]))"
                ),
            }
        )
    return rules


def burn(window_long: str, window_short: str, factor: float, budget: float) -> str:
    threshold = f"{factor * budget:.6g}"
    return (
        f"({SERVICE}:mesh_call_errors:ratio_rate{window_long} > {threshold}"
        f" and {SERVICE}:mesh_call_errors:ratio_rate{window_short} > {threshold})"
    )


def alerting_rules(objective: float) -> list[dict[str, object]]:
    budget = 1 - objective
    percent = f"{objective * 100:g}%"
    return [
        alert(
            "MeshHighErrorRatio",
            f"{SERVICE}:mesh_call_failures:rate5m / {SERVICE}:mesh_calls:rate5m > {ERROR_RATIO_THRESHOLD}",
            "5m",
            "warning",
            "{{ $labels.mesh_service }}: more than 5% of calls fail",
            "{{ $value | humanizePercentage }} of calls to {{ $labels.mesh_service }} failed over the last 5 minutes.",
        ),
        alert(
            "MeshHighLatencyP99",
            f"{SERVICE}:mesh_call_duration_seconds:p99_5m > {P99_THRESHOLD_S}",
            "10m",
            "warning",
            "{{ $labels.mesh_service }}: p99 latency above 1 s",
            "The 99th percentile of calls to {{ $labels.mesh_service }} took {{ $value | humanizeDuration }}.",
        ),
        alert(
            "MeshCircuitBreakerOpen",
            f'max by ({SERVICE}) ({BREAKER_STATE}{{{STATE}=~"open|forced_open"}}) == 1',
            "5m",
            "critical",
            "{{ $labels.mesh_service }}: circuit breaker open for 5 minutes",
            "Calls to {{ $labels.mesh_service }} are being rejected by an open circuit breaker.",
        ),
        alert(
            "MeshCircuitBreakerOpenShare",
            (
                f'sum by ({SERVICE}) (increase({BREAKER_STATE_TIME}{{{STATE}=~"open|forced_open"}}[1h]))'
                f" / sum by ({SERVICE}) (increase({BREAKER_STATE_TIME}[1h])) > {BREAKER_OPEN_SHARE_THRESHOLD}"
            ),
            "5m",
            "warning",
            "{{ $labels.mesh_service }}: circuit breaker open for more than 10% of the last hour",
            "The breaker of {{ $labels.mesh_service }} spent {{ $value | humanizePercentage }} of the last "
            "hour open: it keeps tripping, even if it is closed at each scrape.",
        ),
        alert(
            "MeshOutlierEjectionsRecurring",
            f"sum by ({SERVICE}, {INSTANCE}) (increase({EJECTIONS}[1h])) >= {RECURRING_EJECTIONS}",
            "5m",
            "warning",
            "{{ $labels.mesh_service }}/{{ $labels.mesh_instance }} ejected again and again",
            f"Outlier detection ejected {{{{ $labels.mesh_instance }}}} ({{{{ $labels.mesh_service }}}}) "
            f"{RECURRING_EJECTIONS} or more times in the last hour: it fails each time it comes back.",
        ),
        alert(
            "MeshRetryStorm",
            (
                f'sum by ({SERVICE}) (rate({ATTEMPTS}{{{ATTEMPT}!="1"}}[5m]))'
                f" / sum by ({SERVICE}) (rate({ATTEMPTS}[5m])) > {RETRY_RATIO_THRESHOLD}"
            ),
            "5m",
            "warning",
            "{{ $labels.mesh_service }}: more than 20% of attempts are retries",
            "Retries make up {{ $value | humanizePercentage }} of attempts to {{ $labels.mesh_service }}: "
            "retries amplify load on a struggling service.",
        ),
        alert(
            "MeshInstanceUnhealthy",
            f'max by ({SERVICE}, {INSTANCE}) ({HEALTH}{{{HEALTH_STATE}="unhealthy"}}) == 1',
            "5m",
            "warning",
            "{{ $labels.mesh_service }}/{{ $labels.mesh_instance }} unhealthy for 5 minutes",
            "Health checks of {{ $labels.mesh_instance }} ({{ $labels.mesh_service }}) keep failing.",
        ),
        alert(
            "MeshMetricsCardinalityOverflow",
            (
                f"sum by (meshmetrics_metric, meshmetrics_attribute) (rate({OVERFLOWS}[10m])) > 0"
                ' or count by (__name__) ({otel_metric_overflow="true"}) > 0'
            ),
            "15m",
            "info",
            "meshmetrics folds attribute values into _OTHER",
            "{{ $labels.meshmetrics_metric }} {{ $labels.meshmetrics_attribute }}{{ $labels.__name__ }}: "
            "more distinct values than its cardinality budget; series are folded, not lost.",
        ),
        alert(
            "MeshErrorBudgetBurnFast",
            f"{burn('1h', '5m', 14.4, budget)} or {burn('6h', '30m', 6, budget)}",
            "2m",
            "critical",
            f"{{{{ $labels.mesh_service }}}}: burning the {percent} success SLO's error budget fast",
            "At this rate the 30-day error budget of {{ $labels.mesh_service }} is gone within days.",
        ),
        alert(
            "MeshErrorBudgetBurnSlow",
            f"{burn('1d', '2h', 3, budget)} or {burn('3d', '6h', 1, budget)}",
            "15m",
            "warning",
            f"{{{{ $labels.mesh_service }}}}: burning the {percent} success SLO's error budget",
            "{{ $labels.mesh_service }} spends its error budget faster than the SLO allows.",
        ),
    ]


def render(objective: float, runbook: str = RUNBOOK) -> str:
    """The rules file for a success-rate SLO of ``objective``, runbooks at ``runbook``."""
    groups = [
        ("meshmetrics.recording", recording_rules()),
        ("meshmetrics.alerts", alerting_rules(objective)),
    ]
    header = [
        "Generated by tools/gen_rules.py from the conventions registry; do not edit.",
        f"SLO objective: {objective} (regenerate with --objective to change it).",
    ]
    return render_rules(groups, header, runbook)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objective", type=float, default=0.999, help="success-rate SLO (default 0.999)")
    parser.add_argument(
        "--runbook-base",
        default=RUNBOOK,
        help=f"where the runbooks live; each alert's runbook_url is this + #alertname (default: {RUNBOOK})",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the output is stale")
    args = parser.parse_args()
    if not 0 < args.objective < 1:
        parser.error("--objective must be between 0 and 1")
    content = render(args.objective, args.runbook_base)
    return write_or_check({args.output: content}, check=args.check, fix="make conventions", root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
