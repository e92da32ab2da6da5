"""The mesh_client example, run for real: its /metrics and OTLP agree with what the upstreams served."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.request import urlopen

import pytest

from tests.conftest import parse_samples, sample
from tests.e2e.servers import rotel_receiver

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mesh_client"
CALLS = 90
SERVICE = "catalog"


def summary_line(process: subprocess.Popen[str], timeout: float = 90.0) -> dict:
    """The example's JSON summary, read from its stdout without blocking past ``timeout``."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the example printed no summary within {timeout}s: {seen}")
        seen.append(line)
        if line.startswith("{"):
            return json.loads(line)


def test_example_counts_match_the_upstreams_on_metrics_and_otlp():
    with rotel_receiver() as rotel:
        env = {
            **os.environ,
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rotel.grpc_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the flush at exit
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-u",
                str(EXAMPLE),
                "--calls",
                str(CALLS),
                "--port",
                "0",
                "--json",
                "--linger",
                "120",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            summary = summary_line(process)
            with urlopen(summary["metrics_url"], timeout=10) as response:
                samples = parse_samples(response.read().decode())
        finally:
            process.send_signal(signal.SIGINT)  # ends the linger; the example flushes OTLP and exits
            assert process.wait(timeout=60) == 0

        instances = summary["instances"]
        served = sum(i["served"] for i in instances.values())
        failed = sum(i["failed"] for i in instances.values())
        assert summary["calls"] == CALLS
        assert summary["failed_calls"] == 0
        assert served == CALLS + failed  # every 503 was retried once, on the next instance
        assert failed == instances_by_name(instances)["flaky"]["failed"] > 0

        # /metrics, per instance, against what each upstream counted itself
        for address, upstream in instances.items():
            where = {"mesh_service": SERVICE, "mesh_instance": address}
            assert (
                sample(samples, "mesh_lb_requests_total", **where, mesh_lb_strategy="round_robin")
                == upstream["served"]
            )
            assert (
                sample(samples, "mesh_lb_request_duration_seconds_count", **where)
                == upstream["served"] - upstream["failed"]
            )
            errors = samples.get(
                ("mesh_lb_errors_total", frozenset({**where, "error_type": "503"}.items())), 0
            )
            assert errors == upstream["failed"]
        calls = {"mesh_service": SERVICE, "mesh_operation": "GET /items/{id}"}
        assert sample(samples, "mesh_call_duration_seconds_count", **calls, mesh_outcome="success") == CALLS
        assert (
            sample(
                samples, "mesh_call_duration_seconds_count", **calls, mesh_outcome="failure", error_type="503"
            )
            == failed
        )
        assert sample(samples, "mesh_calls_active", **calls) == 0
        # tenacity: one call each, one extra attempt per 503
        retry = {"mesh_service": SERVICE, "mesh_operation": "get_item"}
        attempts = sum(
            value
            for (name, labels), value in samples.items()
            if name == "mesh_retry_attempts_total" and set(retry.items()) <= labels
        )
        assert attempts == served
        assert (
            sample(samples, "mesh_retry_calls_total", **retry, mesh_retry_outcome="successful_with_retry")
            == failed
        )
        assert (
            sample(samples, "mesh_retry_calls_total", **retry, mesh_retry_outcome="successful_without_retry")
            == CALLS - failed
        )
        # pybreaker: every attempt went through the breaker
        breaker = {"mesh_service": SERVICE}
        assert (
            sample(
                samples,
                "mesh_circuit_breaker_calls_total",
                **breaker,
                mesh_circuit_breaker_call_outcome="success",
            )
            == CALLS
        )
        assert (
            sample(
                samples,
                "mesh_circuit_breaker_calls_total",
                **breaker,
                mesh_circuit_breaker_call_outcome="failure",
            )
            == failed
        )

        # the same numbers at the OTLP receiver, flushed at exit
        for address, upstream in instances.items():
            attributes = {
                "mesh.service": SERVICE,
                "mesh.instance": address,
                "mesh.lb.strategy": "round_robin",
            }
            assert (
                rotel.wait_for("mesh.lb.requests", value=upstream["served"], **attributes)["value"]
                == upstream["served"]
            )
        flaky = next(a for a, i in instances.items() if i["name"] == "flaky")
        point = rotel.wait_for(
            "mesh.lb.errors", **{"mesh.service": SERVICE, "mesh.instance": flaky, "error.type": "503"}
        )
        assert point["value"] == failed


def instances_by_name(instances: dict) -> dict:
    return {i["name"]: i for i in instances.values()}
