"""`meshmetrics top`: quantiles from buckets, rows from two scrapes, and the live view of a demo."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from meshmetrics import LoadBalancerMetrics
from meshmetrics._cli.top import (
    bucket_quantile,
    instance_rows,
    parse,
    render,
    render_instances,
    rows,
    view,
    watch,
)
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


ENDPOINTS_ONLY = """
# TYPE mesh_lb_endpoints gauge
mesh_lb_endpoints{mesh_service="search",mesh_health_state="healthy"} 3
mesh_lb_endpoints{mesh_service="search",mesh_health_state="degraded"} 0
mesh_lb_endpoints{mesh_service="search",mesh_health_state="unhealthy"} 1
mesh_lb_endpoints{mesh_service="search",mesh_health_state="unknown"} 0
"""


def test_unhealthy_falls_back_to_the_balancers_endpoint_counts():
    snapshot = parse(EXPOSITION.format(ok_fast=0, ok=0, failed=0, first=0, second=0) + ENDPOINTS_ONLY)
    by_service = {row.service: row for row in rows(snapshot, snapshot, seconds=1.0)}
    assert by_service["search"].unhealthy == "1/4"  # from mesh.lb.endpoints: no health checks there
    assert by_service["api"].unhealthy == "1/2"  # health checks per instance win where they exist
    text = render(list(by_service.values()), "http://x/metrics")
    search = next(line for line in text.splitlines() if line.startswith("search"))
    assert search.split() == ["search", "-", "-", "-", "-", "-", "-", "-", "1/4"]


def test_unhealthy_from_a_real_set_endpoints(configured):
    LoadBalancerMetrics().set_endpoints("api", healthy=3)
    (row,) = rows({}, parse(configured.scrape()), seconds=1.0)
    assert (row.service, row.unhealthy) == ("api", "0/3")


INSTANCES = """
# TYPE mesh_lb_requests_total counter
mesh_lb_requests_total{{mesh_service="orders",mesh_instance="orders-1",mesh_lb_strategy="round_robin"}} {r1}
mesh_lb_requests_total{{mesh_service="orders",mesh_instance="orders-2",mesh_lb_strategy="round_robin"}} {r2}
mesh_lb_requests_total{{mesh_service="users",mesh_instance="users-1",mesh_lb_strategy="round_robin"}} {r2}
# TYPE mesh_lb_request_duration_seconds histogram
mesh_lb_request_duration_seconds_bucket{{mesh_service="orders",mesh_instance="orders-1",le="0.1"}} {ok1}
mesh_lb_request_duration_seconds_bucket{{mesh_service="orders",mesh_instance="orders-1",le="+Inf"}} {ok1}
mesh_lb_request_duration_seconds_count{{mesh_service="orders",mesh_instance="orders-1"}} {ok1}
mesh_lb_request_duration_seconds_sum{{mesh_service="orders",mesh_instance="orders-1"}} 1
mesh_lb_request_duration_seconds_bucket{{mesh_service="orders",mesh_instance="orders-1",error_type="503",le="0.1"}} 0
mesh_lb_request_duration_seconds_bucket{{mesh_service="orders",mesh_instance="orders-1",error_type="503",le="+Inf"}} {bad1}
mesh_lb_request_duration_seconds_count{{mesh_service="orders",mesh_instance="orders-1",error_type="503"}} {bad1}
mesh_lb_request_duration_seconds_sum{{mesh_service="orders",mesh_instance="orders-1",error_type="503"}} 1
mesh_lb_request_duration_seconds_bucket{{mesh_service="orders",mesh_instance="orders-2",error_type="",le="0.1"}} {r2}
mesh_lb_request_duration_seconds_bucket{{mesh_service="orders",mesh_instance="orders-2",error_type="",le="+Inf"}} {r2}
mesh_lb_request_duration_seconds_count{{mesh_service="orders",mesh_instance="orders-2",error_type=""}} {r2}
mesh_lb_request_duration_seconds_sum{{mesh_service="orders",mesh_instance="orders-2",error_type=""}} 1
# TYPE mesh_health_status gauge
mesh_health_status{{mesh_service="orders",mesh_instance="orders-1",mesh_health_state="degraded"}} 1
mesh_health_status{{mesh_service="orders",mesh_instance="orders-1",mesh_health_state="healthy"}} 0
# TYPE mesh_lb_instance_health_score gauge
mesh_lb_instance_health_score{{mesh_service="orders",mesh_instance="orders-2"}} 0.75
# TYPE mesh_lb_ejections_active gauge
mesh_lb_ejections_active{{mesh_service="orders",mesh_instance="orders-1"}} {ejected}
"""


def test_per_instance_view_of_one_service():
    before = parse(INSTANCES.format(r1=0, r2=0, ok1=0, bad1=0, ejected=0))
    after = parse(INSTANCES.format(r1=40, r2=20, ok1=30, bad1=10, ejected=1))
    table = instance_rows(before, after, seconds=2.0, service="orders")
    assert [row.instance for row in table] == ["orders-1", "orders-2"]  # users-1 is another service
    first, second = table
    assert (first.rps, first.success, first.health, first.ejected) == (20.0, 0.75, "degraded", "yes")
    # an empty error_type (older exporters) counts as a success; the score stands in for the state;
    # never ejected, in a service whose balancer ejects: "no"
    assert (second.rps, second.success, second.health, second.ejected) == (10.0, 1.0, "0.75", "no")
    assert first.p50 == pytest.approx(0.1 * 20 / 30)
    text = render_instances(table, "http://x/metrics", "orders")
    lines = text.splitlines()
    assert lines[0] == "meshmetrics top  http://x/metrics  service=orders"
    assert lines[2].split() == ["INSTANCE", "RPS", "SHARE", "SUCCESS", "P50", "P99", "HEALTH", "EJECTED"]
    assert lines[3].split() == ["orders-1", "20.0", "66.7%", "75.0%", "67ms", "100ms", "degraded", "yes"]
    assert lines[4].split() == ["orders-2", "10.0", "33.3%", "100.0%", "50ms", "99ms", "0.75", "no"]
    (users,) = instance_rows(before, after, seconds=2.0, service="users")
    assert users.ejected == "-"  # no outlier detection reported for users
    assert "(no instances of nope seen yet)" in view(before, after, 2.0, "http://x/metrics", "nope")


def test_per_instance_view_of_a_running_demo():
    def table_of(text: str) -> dict[str, list[str]]:
        lines = text.splitlines()
        assert lines[0].endswith("service=orders")
        return {line.split()[0]: line.split() for line in lines[3:] if line.strip()}

    with running_demo("--duration", "40", "--rate", "150", "--cycle", "4", "--seed", "5") as port:
        url = f"http://127.0.0.1:{port}/metrics"
        # poll until the demo's outlier detection has ejected someone (bounded: 20 views)
        for text in watch(url, interval=1.0, iterations=20, service="orders"):
            table = table_of(text)
            if table and all(cells[7] in {"yes", "no"} for cells in table.values()):
                break
    assert set(table) == {"orders-1", "orders-2", "orders-3"}
    for instance, cells in table.items():
        assert float(cells[1]) >= 0, instance
        assert cells[6] in {"healthy", "degraded", "unhealthy", "unknown"}, cells
        assert cells[7] in {"yes", "no"}, cells  # the demo's balancers eject outliers
    assert table["orders-1"][6] == "degraded"  # the demo's flaky instance
    assert sum(float(cells[2].rstrip("%")) for cells in table.values()) == pytest.approx(100, abs=0.2)
