"""``LoadBalancerMetrics``: what a client-side load balancer records per request and instance."""

from __future__ import annotations

from meshmetrics import _facade, semconv

_M = semconv.METRICS
_REQUESTS = _M[semconv.METRIC_MESH_LB_REQUESTS]
_DURATION = _M[semconv.METRIC_MESH_LB_REQUEST_DURATION]
_ERRORS = _M[semconv.METRIC_MESH_LB_ERRORS]
_CONNECTIONS = _M[semconv.METRIC_MESH_LB_CONNECTIONS_ACTIVE]
_CONNECTION_FAILURES = _M[semconv.METRIC_MESH_LB_CONNECTION_FAILURES]
_HEALTH_SCORE = _M[semconv.METRIC_MESH_LB_INSTANCE_HEALTH_SCORE]
_ENDPOINTS = _M[semconv.METRIC_MESH_LB_ENDPOINTS]
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

    def remove_instance(self, service: str, instance: str) -> None:
        """``instance`` left the balancer: its series end and its budget place is freed.

        Its series (health score, connections, requests, latency, errors) stop
        being exported at once, and its place in the ``mesh.instance`` budget goes
        to the instances that replace it.
        """
        self._remove_instance(service, instance)
