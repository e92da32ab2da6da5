"""``LoadBalancerMetrics``: what a client-side load balancer records per request and instance."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from meshmetrics import _facade, semconv

_M = semconv.METRICS
_REQUESTS = _M[semconv.METRIC_MESH_LB_REQUESTS]
_DURATION = _M[semconv.METRIC_MESH_LB_REQUEST_DURATION]
_ERRORS = _M[semconv.METRIC_MESH_LB_ERRORS]
_CONNECTIONS = _M[semconv.METRIC_MESH_LB_CONNECTIONS_ACTIVE]
_CONNECTION_FAILURES = _M[semconv.METRIC_MESH_LB_CONNECTION_FAILURES]
_HEALTH_SCORE = _M[semconv.METRIC_MESH_LB_INSTANCE_HEALTH_SCORE]
_ENDPOINTS = _M[semconv.METRIC_MESH_LB_ENDPOINTS]
_LATENCY_ESTIMATE = _M[semconv.METRIC_MESH_LB_INSTANCE_LATENCY_ESTIMATE]
_EJECTIONS = _M[semconv.METRIC_MESH_LB_EJECTIONS]
_EJECTIONS_ACTIVE = _M[semconv.METRIC_MESH_LB_EJECTIONS_ACTIVE]
_EJECTION_TIME = _M[semconv.METRIC_MESH_LB_EJECTION_TIME]
_HEALTH_STATES = semconv.ATTRIBUTES[semconv.ATTR_MESH_HEALTH_STATE].allowed_values


class LoadBalancerMetrics(_facade.Facade):
    """Metrics of a client-side load balancer: picks, latency, errors, connections, health.

    Example::

        lb = LoadBalancerMetrics()
        lb.record_request(service="api", instance="api-1", strategy="round_robin")
        lb.observe_request_duration(service="api", instance="api-1", duration=0.15)
    """

    __slots__ = ()

    def record_request(self, service: str, instance: str, strategy: str) -> None:
        """Count one request routed to ``instance`` by ``strategy`` (``mesh.lb.requests``).

        Also feeds ``mesh.lb.load_imbalance`` for (service, strategy).
        """
        self._add(_REQUESTS, 1, (service, instance, strategy))

    def observe_request_duration(
        self, service: str, instance: str, duration: float, error: object = None
    ) -> None:
        """Record how long a request to ``instance`` took, in seconds.

        Pass ``error`` (an exception, status code or error class) when it failed;
        it becomes ``error.type``.
        """
        self._measure(
            _DURATION,
            _facade.duration,
            "duration",
            duration,
            (service, instance, _facade.error_type(error)),
        )

    def record_error(self, service: str, instance: str, error: object) -> None:
        """Count a failed request to ``instance`` by ``error.type`` (``mesh.lb.errors``)."""
        # a non-empty string is already an error class: no call on the common path
        kind = error if type(error) is str and error else _facade.failure_type(error)
        self._add(_ERRORS, 1, (service, instance, kind))

    def connection_opened(self, service: str, instance: str) -> None:
        """A connection to ``instance`` opened (``mesh.lb.connections.active`` + 1)."""
        self._add(_CONNECTIONS, 1, (service, instance))

    def connection_closed(self, service: str, instance: str) -> None:
        """A connection to ``instance`` closed (``mesh.lb.connections.active`` - 1)."""
        self._add(_CONNECTIONS, -1, (service, instance))

    def record_connection_failure(self, service: str, instance: str, error: object) -> None:
        """Count a failed attempt to connect to ``instance`` (``mesh.lb.connection.failures``)."""
        self._add(_CONNECTION_FAILURES, 1, (service, instance, _facade.failure_type(error)))

    def set_instance_health(self, service: str, instance: str, score: float) -> None:
        """Set the health score of ``instance``, from 0 (unusable) to 1 (fully healthy)."""
        self._measure(_HEALTH_SCORE, _facade.ratio, "score", score, (service, instance))

    def set_latency_estimate(self, service: str, instance: str, seconds: float) -> None:
        """Set the balancer's latency estimate for ``instance``, in seconds (e.g. its EWMA).

        What a latency-aware strategy (least latency, power of two choices on
        EWMA, as Linkerd's balancer) picks by: exported, an operator sees why
        an instance gets fewer picks (``mesh.lb.instance.latency_estimate``).
        """
        self._measure(_LATENCY_ESTIMATE, _facade.duration, "seconds", seconds, (service, instance))

    def set_endpoints(
        self,
        service: str,
        *,
        healthy: int = 0,
        degraded: int = 0,
        unhealthy: int = 0,
        unknown: int = 0,
    ) -> None:
        """Set how many endpoints of ``service`` the balancer knows, per health state.

        Every state is set, so a state that drops to zero reads 0, not its old value.
        """
        counts = {"healthy": healthy, "degraded": degraded, "unhealthy": unhealthy, "unknown": unknown}
        for state in _HEALTH_STATES:
            self._measure(_ENDPOINTS, _facade.count, state, counts[state], (service, state))

    def track_request(
        self,
        service: str,
        instance: str,
        strategy: str,
        clock: Callable[[], float] = time.perf_counter,
    ) -> RequestTracker:
        """Track one request to ``instance``: the pick, the open connection, duration and error.

        A context manager (``with`` and ``async with``) and a decorator (sync and
        async functions). Entering counts the pick (``mesh.lb.requests``) and
        opens a connection (``mesh.lb.connections.active`` + 1); leaving closes
        it and records the duration, with ``error.type`` and ``mesh.lb.errors``
        when the request failed: because the block raised, or because it called
        ``attempt.failed(status)``. The exception propagates unchanged.

        Example::

            with lb.track_request("api", "api-1", "round_robin") as attempt:
                response = send(request)
                if response.status >= 500:
                    attempt.failed(response.status)
        """
        return RequestTracker(self, service, instance, strategy, clock)

    def record_ejection(self, service: str, instance: str, reason: str) -> None:
        """Outlier detection ejected ``instance``; ``reason`` as Envoy names it.

        Counts the ejection (``mesh.lb.ejections``) and the ejected endpoint
        (``mesh.lb.ejections.active`` + 1). Pair it with :meth:`record_unejection`,
        or let :meth:`outlier_tracker` pair them and time the ejection.
        """
        self._add(_EJECTIONS, 1, (service, instance, reason))
        self._add(_EJECTIONS_ACTIVE, 1, (service, instance))

    def record_unejection(self, service: str, instance: str) -> None:
        """``instance`` is back in rotation (``mesh.lb.ejections.active`` - 1)."""
        self._add(_EJECTIONS_ACTIVE, -1, (service, instance))

    def record_ejection_time(self, service: str, instance: str, seconds: float) -> None:
        """Add ``seconds`` spent ejected by ``instance`` (``mesh.lb.ejection.time``)."""
        self._add_seconds(_EJECTION_TIME, seconds, (service, instance))

    def outlier_tracker(self, service: str, clock: Callable[[], float] = time.monotonic) -> OutlierTracker:
        """A tracker for one service's outlier detection: it pairs ejections and times them."""
        return OutlierTracker(self, service, clock)

    def remove_instance(self, service: str, instance: str) -> None:
        """``instance`` left the balancer: its series end and its budget place is freed.

        Its series (health score, connections, requests, latency, errors) stop
        being exported at once, and its place in the ``mesh.instance`` budget goes
        to the instances that replace it.
        """
        self._remove_instance(service, instance)


class RequestTracker(_facade.Tracked):
    """One request to one instance, recorded in one step; see ``LoadBalancerMetrics.track_request``."""

    __slots__ = ("_clock", "_error", "_instance", "_metrics", "_service", "_started", "_strategy")

    def __init__(
        self,
        metrics: LoadBalancerMetrics,
        service: str,
        instance: str,
        strategy: str,
        clock: Callable[[], float],
    ) -> None:
        """Prepare to track a request to ``instance`` of ``service`` picked by ``strategy``."""
        self._metrics = metrics
        self._service = service
        self._instance = instance
        self._strategy = strategy
        self._clock = clock
        self._started = 0.0
        self._error: object = None

    def failed(self, error: object) -> None:
        """The request failed with ``error`` (a status code, exception or error class).

        For failures that do not raise, such as a 503 response. The first error
        given wins over an exception raised later in the block.
        """
        if self._error is None:
            self._error = error

    def _begin(self) -> None:
        self._error = None
        self._metrics.record_request(self._service, self._instance, self._strategy)
        self._metrics.connection_opened(self._service, self._instance)
        self._started = self._clock()

    def _end(self, raised: BaseException | None) -> None:
        duration = self._clock() - self._started
        error = self._error if self._error is not None else raised
        metrics, service, instance = self._metrics, self._service, self._instance
        metrics.connection_closed(service, instance)
        metrics.observe_request_duration(service, instance, duration, error)
        if error is not None:
            metrics.record_error(service, instance, error)

    def _fresh(self) -> RequestTracker:
        return RequestTracker(self._metrics, self._service, self._instance, self._strategy, self._clock)


class OutlierTracker:
    """Follows outlier detection for one service: which instances are ejected, and for how long.

    :meth:`eject` and :meth:`uneject` are idempotent per instance. Time spent
    ejected (``mesh.lb.ejection.time``) is added when an instance comes back,
    on :meth:`flush`, and at most once per ``FLUSH_INTERVAL_S`` on other
    ejections and unejections; call :meth:`flush` periodically for a long
    ejection to show while it lasts.
    """

    def __init__(self, metrics: LoadBalancerMetrics, service: str, clock: Callable[[], float]) -> None:
        """Start with no instance ejected."""
        self._metrics = metrics
        self._service = service
        self._clock = clock
        self._lock = threading.Lock()
        self._accounted: dict[str, float] = {}  # ejected instance -> time accounted up to
        self._last_flush = clock()

    @property
    def ejected(self) -> frozenset[str]:
        """Instances currently ejected."""
        return frozenset(self._accounted)

    def eject(self, instance: str, reason: str) -> bool:
        """Eject ``instance`` for ``reason``; False (nothing recorded) if it already is."""
        try:
            with self._lock:
                if instance in self._accounted:
                    return False
                self._accounted[instance] = self._clock()
        except Exception:  # an instance that cannot be a key (its hash or eq raises)
            self._metrics.record_ejection(self._service, instance, reason)  # rejected there
            return False
        self._metrics.record_ejection(self._service, instance, reason)
        self._maybe_flush()
        return True

    def uneject(self, instance: str) -> bool:
        """``instance`` is back in rotation; False (nothing recorded) if it was not ejected."""
        try:
            with self._lock:
                since = self._accounted.pop(instance, None)
                if since is None:
                    return False
                elapsed = self._clock() - since
        except Exception:  # an instance that cannot be a key: it was never ejected here
            self._metrics.record_unejection(self._service, instance)  # rejected there
            return False
        self._metrics.record_ejection_time(self._service, instance, elapsed)
        self._metrics.record_unejection(self._service, instance)
        self._maybe_flush()
        return True

    def flush(self) -> None:
        """Add the time every ejected instance has spent ejected since it was last added."""
        with self._lock:
            now = self._clock()
            self._last_flush = now
            elapsed = {instance: now - since for instance, since in self._accounted.items()}
            for instance in elapsed:
                self._accounted[instance] = now
        for instance, seconds in elapsed.items():
            self._metrics.record_ejection_time(self._service, instance, seconds)

    def _maybe_flush(self) -> None:
        if self._clock() - self._last_flush >= _facade.FLUSH_INTERVAL_S:
            self.flush()
