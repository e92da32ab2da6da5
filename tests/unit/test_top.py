"""`meshmetrics top`: quantiles from buckets, rows from two scrapes, and the live view of a demo."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from meshmetrics._cli.top import bucket_quantile, parse, render, rows
from tests.e2e.servers import free_port, running_demo


def test_bucket_quantile_interpolates_like_histogram_quantile():
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.3)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.95)
    assert math.isnan(bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))
    assert bucket_quantile(0.99, [(0.1, 0.0), (math.inf, 5.0)]) == 0.1  # all above the last bound


EXPOSITION = """
# TYPE mesh_call_duration_seconds histogram
mesh_call_duration_seconds_bucket{{mesh_service="api",mesh_operation="get",mesh_outcome="success",le="0.1"}} {ok_fast}
mesh_call_duration_seconds_bucket{{mesh_service="api",mesh_operation="get",mesh_outcome="success",le="1.0"}} {ok}
mesh_call_duration_seconds_bucket{{mesh_service="api",mesh_operation="get",mesh_outcome="success",le="+Inf"}} {ok}
mesh_call_duration_seconds_count{{mesh_service="api",mesh_operation="get",mesh_outcome="success"}} {ok}
mesh_call_duration_seconds_sum{{mesh_service="api",mesh_operation="get",mesh_outcome="success"}} 1
mesh_call_duration_seconds_bucket{{mesh_service="api",mesh_operation="get",mesh_outcome="failure",error_type="timeout",le="0.1"}} 0
mesh_call_duration_seconds_bucket{{mesh_service="api",mesh_operation="get",mesh_outcome="failure",error_type="timeout",le="1.0"}} {failed}
mesh_call_duration_seconds_bucket{{mesh_service="api",mesh_operation="get",mesh_outcome="failure",error_type="timeout",le="+Inf"}} {failed}
mesh_call_duration_seconds_count{{mesh_service="api",mesh_operation="get",mesh_outcome="failure",error_type="timeout"}} {failed}
mesh_call_duration_seconds_sum{{mesh_service="api",mesh_operation="get",mesh_outcome="failure",error_type="timeout"}} 1
# TYPE mesh_retry_attempts_total counter
mesh_retry_attempts_total{{mesh_service="api",mesh_operation="get",mesh_retry_attempt="1"}} {first}
mesh_retry_attempts_total{{mesh_service="api",mesh_operation="get",mesh_retry_attempt="2"}} {second}
# TYPE mesh_circuit_breaker_state gauge
mesh_circuit_breaker_state{{mesh_service="api",mesh_circuit_breaker_state="closed"}} 0
mesh_circuit_breaker_state{{mesh_service="api",mesh_circuit_breaker_state="open"}} 1
# TYPE mesh_health_status gauge
mesh_health_status{{mesh_service="api",mesh_instance="a",mesh_health_state="unhealthy"}} 1
mesh_health_status{{mesh_service="api",mesh_instance="b",mesh_health_state="unhealthy"}} 0
"""


def test_rows_from_two_scrapes():
    before = parse(EXPOSITION.format(ok_fast=0, ok=0, failed=0, first=0, second=0))
    after = parse(EXPOSITION.format(ok_fast=60, ok=90, failed=10, first=80, second=20))
    (row,) = rows(before, after, seconds=2.0)
    assert row.service == "api"
    assert row.rps == 50.0
    assert row.success == 0.9
    assert row.p50 == pytest.approx(0.1 * 50 / 60)
    assert row.retry_ratio == 0.2
    assert row.breaker == "open"
    assert row.unhealthy == "1/2"
    text = render([row], "http://x/metrics")
    assert "api" in text and "90.0%" in text and "open" in text and "1/2" in text


def test_top_against_a_running_demo():
    with running_demo("--duration", "20", "--rate", "120") as port:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshmetrics",
                "top",
                f"http://127.0.0.1:{port}/metrics",
                "--iterations",
                "3",
                "--interval",
                "0.5",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    views = [view for view in result.stdout.split("meshmetrics top") if view.strip()]
    assert len(views) == 3
    last = views[-1].splitlines()
    header = next(line for line in last if line.startswith("SERVICE"))
    assert header.split() == [
        "SERVICE",
        "RPS",
        "SUCCESS",
        "P50",
        "P90",
        "P99",
        "RETRY",
        "BREAKER",
        "UNHEALTHY",
    ]
    table = {line.split()[0]: line.split() for line in last[last.index(header) + 1 :] if line.strip()}
    assert set(table) == {"orders", "payments", "users"}
    for service, cells in table.items():
        assert float(cells[1]) > 0, service  # calls per second
        assert cells[2].endswith("%")
        assert cells[-2] in {"closed", "open", "half_open"}
        assert cells[-1].endswith("/3")


def test_top_reports_an_unreachable_url():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshmetrics",
            "top",
            f"http://127.0.0.1:{free_port()}/metrics",
            "--iterations",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot scrape" in result.stderr
