"""A simulated service mesh that exercises every meshmetrics instrument (``make demo``).

Three upstream services with three instances each, behind client-side load
balancers using three strategies. Faults are injected: two slow instances (one
behind round-robin, which keeps sending it a third of the requests; one behind
power of two choices, which learns its latency and sends it few), one flaky
instance, and one that goes down and comes back every minute. Calls are
retried with exponential backoff behind a circuit breaker per upstream; outlier
detection ejects an instance after consecutive failures (the flaky one, the
one that is down) and lets it back after a while; a retry budget caps retries
at a fifth of the requests; a registry sees
registrations, renewals and deregistrations; health checks run. Latency is
simulated (no real sleeping), traffic is paced in real time.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from meshmetrics._breaker import CircuitBreakerTracker
from meshmetrics._lb import LoadBalancerMetrics, OutlierTracker
from meshmetrics._mesh import ServiceMeshMetrics
from meshmetrics._retry import RetryCallTracker, RetryMetrics

MAX_ATTEMPTS = 3
BREAKER_WINDOW = 20
BREAKER_MIN_CALLS = 10
BREAKER_THRESHOLD = 0.5
BREAKER_TRIALS = 3
SUMMARY_EVERY_S = 5.0
# An instance's typical latency is drawn from this range; a slow one takes
# SLOW_FACTOR times its top.
BASE_LATENCY_S = (0.01, 0.04)
SLOW_FACTOR = 6.0
DEFAULT_CYCLE_S = 60.0
# Fault windows, as fractions of the cycle: payments-3 is down for the middle
# third; orders has an incident that trips its breaker near the end.
OUTAGE = (1 / 3, 2 / 3)
INCIDENT = (0.75, 0.87)
BREAKER_OPEN_FRACTION = 1 / 12
HEALTH_CHECK_FRACTION = 1 / 30  # every 2 s in a 60 s cycle
RENEW_FRACTION = 1 / 6
INCIDENT_FAILURE_RATE = 0.8
# Outlier detection, Envoy-style: eject after this many consecutive failures,
# for a twentieth of the cycle (3 s of 60 s), at most one instance per service.
EJECT_AFTER_FAILURES = 3
EJECTION_FRACTION = 1 / 20
# The latency-aware balancer's estimate, a peak EWMA like Linkerd's (tower's
# peak_ewma): a response slower than the estimate replaces it, a faster one is
# blended in with this weight, and the estimate decays while the instance is not
# picked (over a sixth of the cycle, 10 s of 60 s), so that a slow instance is
# still probed now and then instead of being written off for good.
EWMA_WEIGHT = 0.2
LATENCY_DECAY_FRACTION = 1 / 6
FLUSH_EVERY_S = 1.0
# A Linkerd-style retry budget per service: retries may add 20% to the requests
# of the last sixth of the cycle (10 s of 60 s), plus a small floor.
BUDGET_RATIO = 0.2
BUDGET_MIN_PER_S = 0.5
BUDGET_WINDOW_FRACTION = 1 / 6
# A few clients of an older build misbehave, as real fleets do: one reports a
# strategy name the conventions do not know (folded into _OTHER and counted in
# meshmetrics.attribute.overflows), one measures latency across a clock step
# (negative durations: dropped and counted in meshmetrics.measurements.rejected).
LEGACY_STRATEGY = "sticky_session"
LEGACY_SHARE = 0.02
CLOCK_SKEW_SHARE = 0.005


class UpstreamError(Exception):
    """A simulated failure of an upstream instance."""


@dataclass
class Instance:
    """One simulated instance: its latency, its failure rate and whether it is up."""

    name: str
    base_latency: float
    failure_rate: float = 0.01
    slow_factor: float = 1.0
    flapping: bool = False
    up: bool = True
    registered: bool = True
    active: int = 0
    requests: int = 0
    ewma_latency: float = 0.0
    estimated_at: float = 0.0
    consecutive_failures: int = 0
    ejected_until: float | None = None


@dataclass
class Breaker:
    """A failure-rate circuit breaker over the last ``BREAKER_WINDOW`` calls."""

    tracker: CircuitBreakerTracker
    open_s: float
    results: deque[bool] = field(default_factory=lambda: deque(maxlen=BREAKER_WINDOW))
    opened_at: float = 0.0
    trials: int = 0

    def allow(self, now: float) -> bool:
        if self.tracker.state == "open" and now - self.opened_at >= self.open_s:
            self.tracker.transition("half_open")
            self.trials = 0
        if self.tracker.state == "open":
            self.tracker.record_call("rejected")
            return False
        return True

    def record(self, ok: bool, now: float) -> None:
        self.tracker.record_call("success" if ok else "failure")
        self.results.append(ok)
        rate = self.results.count(False) / len(self.results)
        self.tracker.set_failure_rate(rate)
        if self.tracker.state == "half_open":
            if not ok:
                self._open(now)
                return
            self.trials += 1
            if self.trials >= BREAKER_TRIALS:
                self.tracker.transition("closed")
                self.results.clear()
        elif len(self.results) >= BREAKER_MIN_CALLS and rate >= BREAKER_THRESHOLD:
            self._open(now)

    def _open(self, now: float) -> None:
        self.tracker.transition("open")
        self.opened_at = now


@dataclass
class RetryBudget:
    """Retries allowed: ``ratio`` of the requests in the last ``window_s``, plus a floor."""

    window_s: float
    requests: deque[float] = field(default_factory=deque)
    retries: deque[float] = field(default_factory=deque)

    def remaining(self, now: float) -> int:
        for times in (self.requests, self.retries):
            while times and times[0] <= now - self.window_s:
                times.popleft()
        allowed = BUDGET_MIN_PER_S * self.window_s + BUDGET_RATIO * len(self.requests)
        return max(0, int(allowed) - len(self.retries))

    def request(self, now: float) -> None:
        self.requests.append(now)

    def withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False if it is spent."""
        if self.remaining(now) <= 0:
            return False
        self.retries.append(now)
        return True


@dataclass
class Service:
    """An upstream service, its instances, balancing strategy and breaker."""

    name: str
    strategy: str
    operations: tuple[str, ...]
    instances: list[Instance]
    breaker: Breaker
    outliers: OutlierTracker
    budget: RetryBudget
    incident: bool = False
    cursor: int = 0
    stats: dict[str, list[float]] = field(default_factory=dict)
    ejections: list[str] = field(default_factory=list)


class Mesh:
    """The simulation: builds the services and drives traffic and background jobs."""

    def __init__(
        self, seed: int | None, cycle_s: float = DEFAULT_CYCLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Build three services with injected faults repeating every ``cycle_s`` seconds."""
        self.cycle_s = cycle_s
        self.random = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        self.clock = clock
        self.lb = LoadBalancerMetrics()
        self.mesh = ServiceMeshMetrics()
        self.retry = RetryMetrics()
        self.started = clock()
        self.latency_decay_s = cycle_s * LATENCY_DECAY_FRACTION
        # Every ejection the demo made, by (service, instance, reason): its own
        # count, to check mesh.lb.ejections against.
        self.ejections: Counter[tuple[str, str, str]] = Counter()
        self.services = [
            self._service("users", "round_robin", ("get_user", "list_users"), slow="users-2"),
            self._service("orders", "least_connections", ("create_order", "get_order"), flaky="orders-1"),
            self._service(
                "payments", "power_of_two_choices", ("charge",), slow="payments-2", flapping="payments-3"
            ),
        ]
        self._reset_stats()
        for service in self.services:
            for instance in service.instances:
                self.mesh.record_registration(service.name)
                self.lb.connection_opened(service.name, instance.name)
        self.last_health = self.last_renew = self.last_summary = self.last_flush = self.started
        self._health_checks()  # instances start in a known state

    def _service(
        self,
        name: str,
        strategy: str,
        operations: tuple[str, ...],
        *,
        slow: str = "",
        flaky: str = "",
        flapping: str = "",
    ) -> Service:
        instances = []
        for index in range(1, 4):
            instance = Instance(f"{name}-{index}", base_latency=self.random.uniform(*BASE_LATENCY_S))
            if instance.name == slow:
                instance.base_latency, instance.slow_factor = BASE_LATENCY_S[1], SLOW_FACTOR
            if instance.name == flaky:
                instance.failure_rate = 0.35
            if instance.name == flapping:
                instance.flapping = True
            instances.append(instance)
        tracker = self.mesh.circuit_breakers.tracker(name, clock=self.clock)
        breaker = Breaker(tracker, self.cycle_s * BREAKER_OPEN_FRACTION)
        outliers = self.lb.outlier_tracker(name, clock=self.clock)
        budget = RetryBudget(self.cycle_s * BUDGET_WINDOW_FRACTION)
        return Service(name, strategy, operations, instances, breaker, outliers, budget)

    def _reset_stats(self) -> None:
        for service in self.services:
            service.stats = {"ok": [], "failed": [], "latency": [], "attempts": [], "calls": []}
            service.ejections = []

    # Traffic.
    def _pick(self, service: Service) -> Instance:
        # The balancer only learns of an outage from health checks, so it keeps
        # sending to a dead instance for a moment, as real ones do.
        candidates = [
            i for i in service.instances if i.registered and i.ejected_until is None
        ] or service.instances
        if service.strategy == "round_robin":
            service.cursor += 1
            return candidates[service.cursor % len(candidates)]
        if service.strategy == "least_connections":
            return min(candidates, key=lambda i: (i.active + self.random.random(), i.name))
        first, second = self.random.sample(candidates, 2) if len(candidates) > 1 else candidates * 2
        now = self.clock()
        return first if self._latency_estimate(first, now) <= self._latency_estimate(second, now) else second

    def _latency_estimate(self, instance: Instance, now: float) -> float:
        """The balancer's latency estimate for ``instance``, decayed since its last response."""
        return instance.ewma_latency * math.exp((instance.estimated_at - now) / self.latency_decay_s)

    def _learn_latency(self, service: Service, instance: Instance, latency: float) -> None:
        """Fold a response's latency into the instance's peak EWMA and export it."""
        now = self.clock()
        estimate = self._latency_estimate(instance, now)
        if latency > estimate:
            instance.ewma_latency = latency
        else:
            instance.ewma_latency = (1 - EWMA_WEIGHT) * estimate + EWMA_WEIGHT * latency
        instance.estimated_at = now
        self.lb.set_latency_estimate(service.name, instance.name, instance.ewma_latency)

    def _attempt(self, service: Service, instance: Instance) -> float:
        """One request to an instance; returns its simulated latency or raises."""
        instance.active += 1
        instance.requests += 1
        legacy = self.random.random() < LEGACY_SHARE
        self.lb.record_request(service.name, instance.name, LEGACY_STRATEGY if legacy else service.strategy)
        latency = self.random.lognormvariate(0, 0.5) * instance.base_latency * instance.slow_factor
        try:
            if not instance.up:
                latency = 0.001
                error: Exception = ConnectionRefusedError("instance down")
                self.lb.record_connection_failure(service.name, instance.name, error)
                raise error
            failure_rate = INCIDENT_FAILURE_RATE if service.incident else instance.failure_rate
            if self.random.random() < failure_rate:
                error = UpstreamError("503") if self.random.random() < 0.7 else TimeoutError()
                latency = 1.0 if isinstance(error, TimeoutError) else latency
                raise error
        except Exception as failure:
            self.lb.observe_request_duration(service.name, instance.name, latency, error=failure)
            self.lb.record_error(service.name, instance.name, failure)
            self._detect_outlier(service, instance, failure)
            raise
        finally:
            instance.active -= 1
        instance.consecutive_failures = 0
        # Only responses teach the balancer latency: a fast refusal from an
        # instance that is down must not make it look like the fastest.
        self._learn_latency(service, instance, latency)
        skewed = self.random.random() < CLOCK_SKEW_SHARE
        self.lb.observe_request_duration(service.name, instance.name, -latency if skewed else latency)
        return latency

    def _detect_outlier(self, service: Service, instance: Instance, failure: Exception) -> None:
        instance.consecutive_failures += 1
        if instance.consecutive_failures < EJECT_AFTER_FAILURES:
            return
        if any(other.ejected_until is not None for other in service.instances):
            return  # this one already, or another: at most one per service (Envoy's max_ejection_percent)
        reason = (
            "consecutive_5xx" if isinstance(failure, UpstreamError) else "consecutive_local_origin_failure"
        )
        if service.outliers.eject(instance.name, reason):
            instance.ejected_until = self.clock() + self.cycle_s * EJECTION_FRACTION
            instance.consecutive_failures = 0
            service.ejections.append(instance.name)
            self.ejections[service.name, instance.name, reason] += 1

    def call(self, service: Service) -> None:
        """One logical call: breaker, retries with backoff, LB picks, outcome."""
        operation = self.random.choice(service.operations)
        now = self.clock()
        service.stats["calls"].append(1)
        if not service.breaker.allow(now):
            self.retry.record_exhausted(service.name, operation, "circuit_open")
            self.mesh.record_call_failure(service.name, operation, 0.0, error="circuit_open")
            service.stats["failed"].append(1)
            return
        self.mesh.call_started(service.name, operation)
        service.budget.request(now)
        tracker = self.retry.track_call(service.name, operation, clock=lambda: 0.0)
        elapsed, error, stopped_by = self._attempts(service, tracker, now)
        self.retry.record_call(
            service.name, operation, succeeded=error is None, attempts=tracker.attempts, duration=elapsed
        )
        tracker.finished = True
        if error is not None:
            self.retry.record_exhausted(service.name, operation, stopped_by)
            self.mesh.record_call_failure(service.name, operation, elapsed, error)
            service.stats["failed"].append(1)
        else:
            self.mesh.record_call_success(service.name, operation, elapsed)
            service.stats["ok"].append(1)
        service.stats["latency"].append(elapsed)
        service.stats["attempts"].append(tracker.attempts)
        self.mesh.call_ended(service.name, operation)

    def _attempts(
        self, service: Service, tracker: RetryCallTracker, now: float
    ) -> tuple[float, Exception | None, str]:
        """Attempts until success or a stop: (time taken, last error, what stopped the retries)."""
        elapsed = 0.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            tracker.attempt()
            try:
                elapsed += self._attempt(service, self._pick(service))
            except Exception as failure:  # every simulated failure is retried
                tracker.failed(failure)
                service.breaker.record(ok=False, now=now)
                if attempt == MAX_ATTEMPTS:
                    return elapsed, failure, "max_attempts"
                if not service.breaker.allow(now):
                    return elapsed, failure, "circuit_open"
                if not service.budget.withdraw(now):
                    return elapsed, failure, "budget"
                delay = 0.05 * 2 ** (attempt - 1) * self.random.uniform(0.5, 1.5)
                tracker.backoff(delay)
                elapsed += delay
            else:
                service.breaker.record(ok=True, now=now)
                return elapsed, None, ""
        return elapsed, None, ""  # not reached: the last attempt returns above

    # Background jobs.
    def housekeeping(self) -> None:
        """Outages, registry renewals and health checks, when they are due."""
        now = self.clock()
        phase = (now - self.started) % self.cycle_s / self.cycle_s
        for service in self.services:
            service.incident = service.name == "orders" and INCIDENT[0] <= phase < INCIDENT[1]
            for instance in service.instances:
                if instance.flapping:
                    instance.up = not OUTAGE[0] <= phase < OUTAGE[1]
        if now - self.last_renew >= self.cycle_s * RENEW_FRACTION:
            self.last_renew = now
            for service in self.services:
                for instance in service.instances:
                    if instance.up:
                        failed = self.random.random() < 0.02
                        self.mesh.record_renewal(
                            service.name, success=not failed, error="timeout" if failed else None
                        )
        self._outlier_detection(now)
        if now - self.last_health >= self.cycle_s * HEALTH_CHECK_FRACTION:
            self.last_health = now
            self._health_checks()

    def _outlier_detection(self, now: float) -> None:
        """Let ejected instances back when their time is up; bring the time counters up to date."""
        for service in self.services:
            for instance in service.instances:
                if instance.ejected_until is not None and now >= instance.ejected_until:
                    instance.ejected_until = None
                    service.outliers.uneject(instance.name)
        if now - self.last_flush >= FLUSH_EVERY_S:  # time in state and time ejected, up to now
            self.last_flush = now
            for service in self.services:
                service.breaker.tracker.flush()
                service.outliers.flush()
                self.retry.set_budget_remaining(service.name, service.budget.remaining(now))

    def _health_checks(self) -> None:
        for service in self.services:
            counts = {"healthy": 0, "degraded": 0, "unhealthy": 0, "unknown": 0}
            for instance in service.instances:
                if instance.up != instance.registered:
                    instance.registered = instance.up
                    if instance.up:
                        self.mesh.record_registration(service.name)
                        self.lb.connection_opened(service.name, instance.name)
                    else:
                        self.mesh.record_deregistration(service.name)
                        self.lb.connection_closed(service.name, instance.name)
                if not instance.up:
                    state, score = "unhealthy", 0.0
                    self.lb.record_connection_failure(service.name, instance.name, ConnectionRefusedError())
                elif instance.slow_factor > 1 or instance.failure_rate > 0.1:
                    state, score = "degraded", 0.5
                else:
                    state, score = "healthy", 1.0
                counts[state] += 1
                self.mesh.record_health_check(service.name, instance.name, success=state != "unhealthy")
                self.mesh.set_health_status(service.name, instance.name, state)
                self.lb.set_instance_health(service.name, instance.name, score)
            self.lb.set_endpoints(service.name, **counts)

    def summary(self, elapsed: float) -> str:
        """A compact table of the last interval, one row per service."""
        header = (
            f"{'service':<10} {'rps':>7} {'success':>8} {'p50 ms':>8} {'p99 ms':>8} {'retry':>6}  "
            f"{'breaker':<10} ejected"
        )
        rows = [header]
        for service in self.services:
            stats = service.stats
            calls = len(stats["calls"])
            ok = len(stats["ok"])
            latencies = sorted(stats["latency"]) or [0.0]
            p50 = latencies[len(latencies) // 2] * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            attempts = sum(stats["attempts"])
            retry_ratio = (attempts - len(stats["attempts"])) / attempts if attempts else 0.0
            success = ok / calls if calls else 1.0
            # instances ejected during the interval, with how many times
            ejected = ",".join(
                f"{name}x{service.ejections.count(name)}" for name in sorted(set(service.ejections))
            )
            ejected = ejected or "-"
            rows.append(
                f"{service.name:<10} {calls / elapsed:>7.1f} {success:>8.1%} {p50:>8.1f} {p99:>8.1f} "
                f"{retry_ratio:>6.1%}  {service.breaker.tracker.state:<10} {ejected}"
            )
        self._reset_stats()
        return "\n".join(rows)


def run(
    *,
    duration: float | None,
    rate: float,
    seed: int | None,
    out: TextIO,
    cycle_s: float = DEFAULT_CYCLE_S,
    summary_every_s: float = SUMMARY_EVERY_S,
    stop: threading.Event | None = None,
) -> Mesh:
    """Drive the mesh at ``rate`` calls/s until ``duration`` passes or ``stop`` is set."""
    mesh = Mesh(seed, cycle_s)
    stop = stop or threading.Event()
    tick = 0.05
    deadline = None if duration is None else time.monotonic() + duration
    carry = 0.0
    last_summary = time.monotonic()
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        carry += rate * tick
        calls, carry = int(carry), carry - int(carry)
        for _ in range(calls):
            mesh.call(mesh.random.choice(mesh.services))
        mesh.housekeeping()
        now = time.monotonic()
        if now - last_summary >= summary_every_s:
            print(mesh.summary(now - last_summary), file=out, flush=True)
            print(file=out, flush=True)
            last_summary = now
        stop.wait(tick)
    return mesh


def install_signal_handlers(stop: threading.Event) -> None:
    """Make Ctrl-C and SIGTERM end the run cleanly."""

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
