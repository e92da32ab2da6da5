"""A small mesh: an httpx client balancing round-robin over three upstream instances.

Run it with ``make mesh-client`` (or ``python examples/mesh_client``). The client
makes a fixed number of calls, each retried by tenacity and guarded by a
pybreaker breaker, with one ``MeshTransport`` recording every attempt; then it
prints what the upstreams served next to what its own ``/metrics`` says, and exits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from typing import Any
from urllib.request import urlopen

import httpx
import pybreaker
import tenacity
from prometheus_client.parser import text_string_to_metric_families
from upstream import Upstreams

import meshmetrics
from meshmetrics.integrations import tenacity as mm_tenacity
from meshmetrics.integrations.httpx import MeshTransport
from meshmetrics.integrations.pybreaker import instrument_breaker

SERVICE = "catalog"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mesh_client", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60, help="calls to make, then exit (default 60)")
    parser.add_argument("--port", type=int, default=None, help="port of /metrics (default 9464; 0: any free)")
    parser.add_argument(
        "--linger", type=float, default=0.0, help="seconds to keep /metrics up at the end (Ctrl-C ends it)"
    )
    parser.add_argument("--json", action="store_true", help="also print the counts as one JSON line")
    return parser.parse_args(argv)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of our own /metrics, by sample name."""
    with urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> int:
    return int(
        sum(v for found, v in samples.get(name, []) if all(found.get(k) == w for k, w in labels.items()))
    )


def run(calls: int, upstreams: Upstreams) -> dict[str, Any]:
    addresses = [instance.address for instance in upstreams.instances]
    balancer = itertools.cycle(addresses)  # round robin: each attempt goes to the next instance
    client = httpx.Client(transport=MeshTransport(service=SERVICE, strategy="round_robin"), timeout=5.0)
    breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1, name=SERVICE))

    @mm_tenacity.retry(
        service=SERVICE,
        operation="get_item",
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(0.01),
        retry=tenacity.retry_if_exception_type(httpx.HTTPError),
        reraise=True,
    )
    def get_item(item_id: int) -> dict[str, Any]:
        return breaker.call(fetch, next(balancer), item_id)

    def fetch(address: str, item_id: int) -> dict[str, Any]:
        # raise_for_status: a 503 is an exception, so the breaker and tenacity see it
        return client.get(f"http://{address}/items/{item_id}").raise_for_status().json()

    failures = 0
    with client:
        for item_id in range(calls):
            try:
                get_item(item_id)
            except (httpx.HTTPError, pybreaker.CircuitBreakerError):
                failures += 1
    return {"calls": calls, "failed_calls": failures}


def report(summary: dict[str, Any], upstreams: Upstreams, metrics_url: str) -> dict[str, Any]:
    samples = scrape(metrics_url)
    print(f"{'instance':<8} {'address':<16} {'served':>6} {'503s':>5} {'lb.requests':>11} {'lb.errors':>9}")
    instances = {}
    for instance in upstreams.instances:
        labels = {"mesh_service": SERVICE, "mesh_instance": instance.address}
        counted = total(samples, "mesh_lb_requests_total", **labels)
        errors = total(samples, "mesh_lb_errors_total", **labels)
        row = f"{instance.name:<8} {instance.address:<16} {instance.served:>6} {instance.failed:>5}"
        print(f"{row} {counted:>11} {errors:>9}")
        instances[instance.address] = {
            "name": instance.name,
            "served": instance.served,
            "failed": instance.failed,
        }
    retry = {"mesh_service": SERVICE, "mesh_operation": "get_item"}
    attempts = total(samples, "mesh_retry_attempts_total", **retry)
    outcomes = {
        labels["mesh_retry_outcome"]: int(value)
        for labels, value in samples.get("mesh_retry_calls_total", [])
        if labels.get("mesh_service") == SERVICE
    }
    breaker = {
        labels["mesh_circuit_breaker_call_outcome"]: int(value)
        for labels, value in samples.get("mesh_circuit_breaker_calls_total", [])
        if labels.get("mesh_service") == SERVICE
    }
    print(f"calls: {summary['calls']} ({summary['failed_calls']} failed); retry outcomes {outcomes}")
    print(f"attempts: {attempts}; breaker calls {breaker}")
    return {**summary, "metrics_url": metrics_url, "instances": instances}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options: dict[str, Any] = {"service_name": "mesh-client-example"}
    if args.port is not None:
        options["prometheus_port"] = args.port
    handle = meshmetrics.configure(**options)
    assert handle.prometheus_url is not None, "this example reads its own /metrics"
    with Upstreams() as upstreams:
        summary = report(run(args.calls, upstreams), upstreams, handle.prometheus_url)
    if args.json:
        print(json.dumps(summary), flush=True)
    try:
        time.sleep(args.linger)
    except KeyboardInterrupt:
        pass
    finally:
        handle.shutdown()  # flushes OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
    return 0


if __name__ == "__main__":
    sys.exit(main())
