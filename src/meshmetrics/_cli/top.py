"""``meshmetrics top URL``: golden signals of any process exposing meshmetrics, like ``linkerd viz stat``.

Scrapes ``/metrics`` twice a second and shows, per destination service: calls
per second, success rate, latency quantiles estimated from the histogram
buckets (as PromQL's ``histogram_quantile`` does), retry ratio, breaker state
and unhealthy instances. With ``service=`` (``--service NAME``) it shows the
instances of one service instead, as its load balancer sees them: requests per
second, share of the service's picks, success rate, latency, health and
whether outlier detection ejected it.
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

_M = semconv.PROMETHEUS_NAMES
_L = semconv.PROMETHEUS_LABELS
CALLS = _M["mesh.call.duration"] + "_count"
CALL_BUCKETS = _M["mesh.call.duration"] + "_bucket"
ATTEMPTS = _M["mesh.retry.attempts"]
BREAKER = _M["mesh.circuit_breaker.state"]
HEALTH = _M["mesh.health.status"]
ENDPOINTS = _M["mesh.lb.endpoints"]
LB_REQUESTS = _M["mesh.lb.requests"]
LB_DURATION_COUNT = _M["mesh.lb.request.duration"] + "_count"
LB_DURATION_BUCKETS = _M["mesh.lb.request.duration"] + "_bucket"
HEALTH_SCORE = _M["mesh.lb.instance.health_score"]
EJECTED = _M["mesh.lb.ejections.active"]
SERVICE = _L["mesh.service"]
INSTANCE = _L["mesh.instance"]
OUTCOME = _L["mesh.outcome"]
ATTEMPT = _L["mesh.retry.attempt"]
BREAKER_STATE = _L["mesh.circuit_breaker.state"]
HEALTH_STATE = _L["mesh.health.state"]
ERROR_TYPE = _L["error.type"]
_MILLISECOND = 0.001


def parse(text: str) -> Snapshot:
    """Samples of an exposition keyed by (name, labels); an empty label is an absent one."""
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


def _sum_by(
    snapshot: Snapshot, name: str, key: str, where: Callable[[dict[str, str]], bool] = lambda _: True
) -> dict[str, float]:
    """Sum the samples of ``name`` per value of label ``key``."""
    totals: dict[str, float] = defaultdict(float)
    for (sample_name, labels), value in snapshot.items():
        if sample_name != name:
            continue
        label_map = dict(labels)
        if key in label_map and where(label_map):
            totals[label_map[key]] += value
    return totals


def _by_service(
    snapshot: Snapshot, name: str, where: Callable[[dict[str, str]], bool] = lambda _: True
) -> dict[str, float]:
    return _sum_by(snapshot, name, SERVICE, where)


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


def _buckets(
    snapshot: Snapshot, name: str, key: str, where: Callable[[dict[str, str]], bool] = lambda _: True
) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of histogram samples ``name``, per value of label ``key``."""
    per_key: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (sample_name, labels), value in snapshot.items():
        if sample_name == name:
            label_map = dict(labels)
            if where(label_map):
                per_key[label_map.get(key, "")][float(label_map["le"])] += value
    return per_key


def _quantiles(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]], key: str
) -> tuple[float, float, float]:
    """p50, p90 and p99 of the observations made between two scrapes."""
    delta = [
        (bound, count - before.get(key, {}).get(bound, 0.0)) for bound, count in after.get(key, {}).items()
    ]
    return bucket_quantile(0.5, delta), bucket_quantile(0.9, delta), bucket_quantile(0.99, delta)


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
    return labels.get(OUTCOME) == "success"


def _is_retry(labels: dict[str, str]) -> bool:
    return labels.get(ATTEMPT) != "1"


def _unhealthy(snapshot: Snapshot) -> dict[str, str]:
    """``unhealthy/known`` instances per service.

    From the per-instance health checks (``mesh.health.status``) where a service
    has them, else from the balancer's endpoint counts (``mesh.lb.endpoints``).
    """
    instances: dict[str, set[str]] = defaultdict(set)
    unhealthy: dict[str, set[str]] = defaultdict(set)
    for (name, labels), value in snapshot.items():
        if name == HEALTH:
            label_map = dict(labels)
            instances[label_map[SERVICE]].add(label_map[INSTANCE])
            if label_map.get(HEALTH_STATE) == "unhealthy" and value == 1:
                unhealthy[label_map[SERVICE]].add(label_map[INSTANCE])
    shown = {service: f"{len(unhealthy[service])}/{len(known)}" for service, known in instances.items()}
    endpoints = _by_service(snapshot, ENDPOINTS)
    bad = _by_service(snapshot, ENDPOINTS, lambda labels: labels.get(HEALTH_STATE) == "unhealthy")
    for service, total in endpoints.items():
        shown.setdefault(service, f"{bad.get(service, 0.0):.0f}/{total:.0f}")
    return shown


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
    buckets_before = _buckets(before, CALL_BUCKETS, SERVICE)
    buckets_after = _buckets(after, CALL_BUCKETS, SERVICE)
    breakers = {
        dict(labels)[SERVICE]: dict(labels)[BREAKER_STATE]
        for (name, labels), value in after.items()
        if name == BREAKER and value == 1 and SERVICE in dict(labels)
    }
    unhealthy = _unhealthy(after)
    result = []
    for service in sorted(set(calls) | set(breakers) | set(unhealthy)):
        total = calls.get(service, 0.0)
        p50, p90, p99 = _quantiles(buckets_before, buckets_after, service)
        result.append(
            Row(
                service=service,
                rps=total / seconds if seconds > 0 and service in calls else math.nan,
                success=successes.get(service, 0.0) / total if total else math.nan,
                p50=p50,
                p90=p90,
                p99=p99,
                retry_ratio=retries.get(service, 0.0) / attempts[service]
                if attempts.get(service)
                else math.nan,
                breaker=breakers.get(service, "-"),
                unhealthy=unhealthy.get(service, "-"),
            )
        )
    return result


@dataclass(frozen=True)
class InstanceRow:
    """One instance of a service, as its load balancer sees it."""

    instance: str
    rps: float
    share: float
    success: float
    p50: float
    p99: float
    health: str
    ejected: str


def _health(snapshot: Snapshot, service: str) -> dict[str, str]:
    """Per instance: its health state (one-hot gauge), else its balancer's score."""
    states: dict[str, str] = {}
    scores: dict[str, str] = {}
    for (name, labels), value in snapshot.items():
        label_map = dict(labels)
        if label_map.get(SERVICE) != service or INSTANCE not in label_map:
            continue
        if name == HEALTH and value == 1:
            states[label_map[INSTANCE]] = label_map.get(HEALTH_STATE, "-")
        elif name == HEALTH_SCORE:
            scores[label_map[INSTANCE]] = f"{value:.2f}"
    return {**scores, **states}


def _ejected(ejected: dict[str, float], instance: str) -> str:
    """yes/no where the service reports outlier ejection at all, else "-"."""
    if not ejected:
        return "-"
    return "yes" if ejected.get(instance, 0.0) > 0 else "no"


def instance_rows(before: Snapshot, after: Snapshot, seconds: float, service: str) -> list[InstanceRow]:
    """Per-instance signals of ``service`` between two scrapes ``seconds`` apart."""

    def of_service(labels: dict[str, str]) -> bool:
        return labels.get(SERVICE) == service

    def succeeded(labels: dict[str, str]) -> bool:
        return of_service(labels) and ERROR_TYPE not in labels

    requests = _delta(
        _sum_by(before, LB_REQUESTS, INSTANCE, of_service), _sum_by(after, LB_REQUESTS, INSTANCE, of_service)
    )
    timed = _delta(
        _sum_by(before, LB_DURATION_COUNT, INSTANCE, of_service),
        _sum_by(after, LB_DURATION_COUNT, INSTANCE, of_service),
    )
    ok = _delta(
        _sum_by(before, LB_DURATION_COUNT, INSTANCE, succeeded),
        _sum_by(after, LB_DURATION_COUNT, INSTANCE, succeeded),
    )
    buckets_before = _buckets(before, LB_DURATION_BUCKETS, INSTANCE, of_service)
    buckets_after = _buckets(after, LB_DURATION_BUCKETS, INSTANCE, of_service)
    ejected = _sum_by(after, EJECTED, INSTANCE, of_service)
    health = _health(after, service)
    picks = sum(requests.values())
    result = []
    for instance in sorted(set(requests) | set(timed) | set(health) | set(ejected)):
        p50, _, p99 = _quantiles(buckets_before, buckets_after, instance)
        total = timed.get(instance, 0.0)
        result.append(
            InstanceRow(
                instance=instance,
                rps=requests.get(instance, 0.0) / seconds if seconds > 0 else math.nan,
                share=requests.get(instance, 0.0) / picks if picks else math.nan,
                success=ok.get(instance, 0.0) / total if total else math.nan,
                p50=p50,
                p99=p99,
                health=health.get(instance, "-"),
                ejected=_ejected(ejected, instance),
            )
        )
    return result


def _number(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def _percent(value: float, width: int = 8) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value * 100:{width - 1}.1f}%"


def render(table: list[Row], url: str) -> str:
    """The view as text."""
    header = (
        f"{'SERVICE':<12} {'RPS':>8} {'SUCCESS':>8} {'P50':>8} {'P90':>8} {'P99':>8} {'RETRY':>7} "
        f"{'BREAKER':<11} UNHEALTHY"
    )
    lines = [f"meshmetrics top  {url}", "", header]
    lines.extend(
        f"{row.service[:12]:<12} {_number(row.rps, '8.1f'):>8} {_percent(row.success)}"
        f" {_latency(row.p50)} {_latency(row.p90)} {_latency(row.p99)}"
        f" {_percent(row.retry_ratio, 7)} {row.breaker:<11} {row.unhealthy}"
        for row in table
    )
    if not table:
        lines.append("(no meshmetrics calls seen yet)")
    return "\n".join(lines)


def render_instances(table: list[InstanceRow], url: str, service: str) -> str:
    """The per-instance view of ``service`` as text."""
    header = (
        f"{'INSTANCE':<16} {'RPS':>8} {'SHARE':>7} {'SUCCESS':>8} {'P50':>8} {'P99':>8} "
        f"{'HEALTH':<10} EJECTED"
    )
    lines = [f"meshmetrics top  {url}  service={service}", "", header]
    lines.extend(
        f"{row.instance[:16]:<16} {_number(row.rps, '8.1f'):>8} {_percent(row.share, 7)}"
        f" {_percent(row.success)}"
        f" {_latency(row.p50)} {_latency(row.p99)} {row.health[:10]:<10} {row.ejected}"
        for row in table
    )
    if not table:
        lines.append(f"(no instances of {service} seen yet)")
    return "\n".join(lines)


def _latency(seconds: float) -> str:
    if math.isnan(seconds):
        return f"{'-':>8}"
    return f"{seconds * 1000:6.0f}ms" if seconds >= _MILLISECOND else f"{seconds * 1e6:6.0f}us"


def view(before: Snapshot, after: Snapshot, seconds: float, url: str, service: str | None = None) -> str:
    """The services view, or with ``service`` the per-instance view of that service."""
    if service is None:
        return render(rows(before, after, seconds), url)
    return render_instances(instance_rows(before, after, seconds, service), url, service)


def watch(
    url: str, interval: float = 0.5, iterations: int | None = None, service: str | None = None
) -> Iterator[str]:
    """Yield a rendered view every ``interval`` seconds (forever, or ``iterations`` times)."""
    before, started = scrape(url), time.monotonic()
    shown = 0
    while iterations is None or shown < iterations:
        time.sleep(interval)
        after, now = scrape(url), time.monotonic()
        yield view(before, after, now - started, url, service)
        before, started = after, now
        shown += 1


def run(
    url: str,
    interval: float,
    iterations: int | None,
    out: TextIO = sys.stdout,
    clear: bool = True,
    *,
    service: str | None = None,
) -> None:
    """Print the view until interrupted; ``service`` switches to its per-instance view."""
    for text in watch(url, interval, iterations, service):
        if clear:
            out.write("\x1b[2J\x1b[H")
        out.write(text + "\n\n")
        out.flush()
