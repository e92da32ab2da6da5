"""``meshmetrics top URL``: golden signals of any process exposing meshmetrics, like ``linkerd viz stat``.

Scrapes ``/metrics`` twice a second and shows, per destination service: calls
per second, success rate, latency quantiles estimated from the histogram
buckets (as PromQL's ``histogram_quantile`` does), retry ratio, breaker state
and unhealthy instances.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families

from meshmetrics import semconv

Labels = frozenset[tuple[str, str]]
Snapshot = dict[tuple[str, Labels], float]

_M = {name: definition.prometheus_name for name, definition in semconv.METRICS.items()}
CALLS = _M["mesh.call.duration"] + "_count"
CALL_BUCKETS = _M["mesh.call.duration"] + "_bucket"
ATTEMPTS = _M["mesh.retry.attempts"]
BREAKER = _M["mesh.circuit_breaker.state"]
HEALTH = _M["mesh.health.status"]
SERVICE = "mesh_service"
_MILLISECOND = 0.001


def parse(text: str) -> Snapshot:
    """Samples of an exposition keyed by (name, labels)."""
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if v and not k.startswith("otel_scope_")
            )
            snapshot[(sample.name, labels)] = sample.value
    return snapshot


def scrape(url: str, timeout: float = 5.0) -> Snapshot:
    """Fetch and parse ``url``."""
    with urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user gives the URL to watch
        return parse(response.read().decode("utf-8", errors="replace"))


def _by_service(
    snapshot: Snapshot, name: str, where: Callable[[dict[str, str]], bool] = lambda _: True
) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for (sample_name, labels), value in snapshot.items():
        if sample_name != name:
            continue
        label_map = dict(labels)
        if SERVICE in label_map and where(label_map):
            totals[label_map[SERVICE]] += value
    return totals


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    # a counter that went down was reset (a restart): count from zero
    return {
        key: (value - before.get(key, 0.0)) if value >= before.get(key, 0.0) else value
        for key, value in after.items()
    }


def bucket_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float:
    """Estimate a quantile from cumulative (upper bound, count) buckets, like histogram_quantile."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = quantile * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound
            if count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper_bound, count
    return buckets[-1][0]


def _buckets(snapshot: Snapshot) -> dict[str, dict[float, float]]:
    per_service: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (name, labels), value in snapshot.items():
        if name == CALL_BUCKETS:
            label_map = dict(labels)
            per_service[label_map.get(SERVICE, "")][float(label_map["le"])] += value
    return per_service


@dataclass(frozen=True)
class Row:
    """One line of the view."""

    service: str
    rps: float
    success: float
    p50: float
    p90: float
    p99: float
    retry_ratio: float
    breaker: str
    unhealthy: str


def _succeeded(labels: dict[str, str]) -> bool:
    return labels.get("mesh_outcome") == "success"


def _is_retry(labels: dict[str, str]) -> bool:
    return labels.get("mesh_retry_attempt") != "1"


def rows(before: Snapshot, after: Snapshot, seconds: float) -> list[Row]:
    """Golden signals per service between two scrapes ``seconds`` apart."""
    calls = _delta(_by_service(before, CALLS), _by_service(after, CALLS))
    successes = _delta(
        _by_service(before, CALLS, _succeeded),
        _by_service(after, CALLS, _succeeded),
    )
    attempts = _delta(_by_service(before, ATTEMPTS), _by_service(after, ATTEMPTS))
    retries = _delta(
        _by_service(before, ATTEMPTS, _is_retry),
        _by_service(after, ATTEMPTS, _is_retry),
    )
    buckets_before, buckets_after = _buckets(before), _buckets(after)
    breakers = {
        dict(labels)[SERVICE]: dict(labels)["mesh_circuit_breaker_state"]
        for (name, labels), value in after.items()
        if name == BREAKER and value == 1 and SERVICE in dict(labels)
    }
    instances: dict[str, set[str]] = defaultdict(set)
    unhealthy: dict[str, set[str]] = defaultdict(set)
    for (name, labels), value in after.items():
        if name == HEALTH:
            label_map = dict(labels)
            instances[label_map[SERVICE]].add(label_map["mesh_instance"])
            if label_map.get("mesh_health_state") == "unhealthy" and value == 1:
                unhealthy[label_map[SERVICE]].add(label_map["mesh_instance"])
    result = []
    for service in sorted(set(calls) | set(breakers)):
        total = calls.get(service, 0.0)
        delta_buckets = [
            (bound, count - buckets_before.get(service, {}).get(bound, 0.0))
            for bound, count in buckets_after.get(service, {}).items()
        ]
        result.append(
            Row(
                service=service,
                rps=total / seconds if seconds > 0 else math.nan,
                success=successes.get(service, 0.0) / total if total else math.nan,
                p50=bucket_quantile(0.5, delta_buckets),
                p90=bucket_quantile(0.9, delta_buckets),
                p99=bucket_quantile(0.99, delta_buckets),
                retry_ratio=retries.get(service, 0.0) / attempts[service]
                if attempts.get(service)
                else math.nan,
                breaker=breakers.get(service, "-"),
                unhealthy=f"{len(unhealthy[service])}/{len(instances[service])}"
                if instances[service]
                else "-",
            )
        )
    return result


def _number(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def render(table: list[Row], url: str) -> str:
    """The view as text."""
    header = (
        f"{'SERVICE':<12} {'RPS':>8} {'SUCCESS':>8} {'P50':>8} {'P90':>8} {'P99':>8} {'RETRY':>7} "
        f"{'BREAKER':<11} UNHEALTHY"
    )
    lines = [f"meshmetrics top  {url}", "", header]
    lines.extend(
        f"{row.service[:12]:<12} {_number(row.rps, '8.1f')} {_number(row.success * 100, '7.1f')}%"
        f" {_latency(row.p50)} {_latency(row.p90)} {_latency(row.p99)}"
        f" {_number(row.retry_ratio * 100, '6.1f')}% {row.breaker:<11} {row.unhealthy}"
        for row in table
    )
    if not table:
        lines.append("(no meshmetrics calls seen yet)")
    return "\n".join(lines)


def _latency(seconds: float) -> str:
    if math.isnan(seconds):
        return f"{'-':>8}"
    return f"{seconds * 1000:6.0f}ms" if seconds >= _MILLISECOND else f"{seconds * 1e6:6.0f}us"


def watch(url: str, interval: float = 0.5, iterations: int | None = None) -> Iterator[str]:
    """Yield a rendered view every ``interval`` seconds (forever, or ``iterations`` times)."""
    before, started = scrape(url), time.monotonic()
    shown = 0
    while iterations is None or shown < iterations:
        time.sleep(interval)
        after, now = scrape(url), time.monotonic()
        yield render(rows(before, after, now - started), url)
        before, started = after, now
        shown += 1


def run(
    url: str, interval: float, iterations: int | None, out: TextIO = sys.stdout, clear: bool = True
) -> None:
    """Print the view until interrupted."""
    for view in watch(url, interval, iterations):
        if clear:
            out.write("\x1b[2J\x1b[H")
        out.write(view + "\n\n")
        out.flush()
