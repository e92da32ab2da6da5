"""``ServiceMeshMetrics``: calls between services, the service registry, health checks."""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry.metrics import MeterProvider

from meshmetrics import _facade, semconv
from meshmetrics._breaker import CircuitBreakerMetrics

_M = semconv.METRICS
_CALL_DURATION = _M[semconv.METRIC_MESH_CALL_DURATION]
_CALLS_ACTIVE = _M[semconv.METRIC_MESH_CALLS_ACTIVE]
_REGISTRY_OPERATIONS = _M[semconv.METRIC_MESH_REGISTRY_OPERATIONS]
_REGISTRY_INSTANCES = _M[semconv.METRIC_MESH_REGISTRY_INSTANCES]
_HEALTH_STATUS = _M[semconv.METRIC_MESH_HEALTH_STATUS]
_HEALTH_CHECKS = _M[semconv.METRIC_MESH_HEALTH_CHECKS]
_HEALTH_STATES = semconv.ATTRIBUTES[semconv.ATTR_MESH_HEALTH_STATE].allowed_values


class ServiceMeshMetrics(_facade.Facade):
    """Metrics of calls between services, the registry and instance health.

    Example::

        mesh = ServiceMeshMetrics()
        mesh.record_call_success(service="api", operation="get_user", duration=0.2)
        with mesh.track_call("api", "get_user"):
            ...
    """

    __slots__ = ("circuit_breakers",)

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        """Record to ``meter_provider`` or (default) the one ``configure()`` installed."""
        super().__init__(meter_provider=meter_provider)
        self.circuit_breakers = CircuitBreakerMetrics(meter_provider=meter_provider)
        """Circuit-breaker metrics on the same provider."""

    # Calls between services.
    def record_call_success(self, service: str, operation: str, duration: float) -> None:
        """Record a call that succeeded and took ``duration`` seconds."""
        self._measure(
            _CALL_DURATION, _facade.duration, "duration", duration, (service, operation, "success", None)
        )

    def record_call_failure(
        self, service: str, operation: str, duration: float, error: object = None
    ) -> None:
        """Record a call that failed after ``duration`` seconds with ``error``."""
        self._measure(
            _CALL_DURATION,
            _facade.duration,
            "duration",
            duration,
            (service, operation, "failure", _facade.failure_type(error)),
        )

    def call_started(self, service: str, operation: str) -> None:
        """A call is now in flight (``mesh.calls.active`` + 1)."""
        self._add(_CALLS_ACTIVE, 1, (service, operation))

    def call_ended(self, service: str, operation: str) -> None:
        """A call is no longer in flight (``mesh.calls.active`` - 1)."""
        self._add(_CALLS_ACTIVE, -1, (service, operation))

    def track_call(
        self, service: str, operation: str, clock: Callable[[], float] = time.perf_counter
    ) -> CallTracker:
        """Time a call and classify its outcome from the exception, if any.

        A context manager (``with`` and ``async with``) and a decorator (sync
        and async functions). An exception propagates unchanged; it is recorded
        as a failure with its ``error.type``.
        """
        return CallTracker(self, service, operation, clock)

    # The service registry.
    def record_registration(self, service: str, *, success: bool = True, error: object = None) -> None:
        """An instance of ``service`` registered (or failed to)."""
        if self._registry(service, "register", success, error):
            self._add(_REGISTRY_INSTANCES, 1, (service,))

    def record_deregistration(
        self, service: str, *, instance: str | None = None, success: bool = True, error: object = None
    ) -> None:
        """An instance of ``service`` deregistered (or failed to).

        Naming the ``instance`` ends its series (health status, health score,
        connections, ...) at once and frees its place in the ``mesh.instance`` budget.
        """
        if self._registry(service, "deregister", success, error):
            self._add(_REGISTRY_INSTANCES, -1, (service,))
            if instance is not None:
                self._remove_instance(service, instance)

    def record_renewal(self, service: str, *, success: bool = True, error: object = None) -> None:
        """An instance of ``service`` renewed its registration lease (or failed to)."""
        self._registry(service, "renew", success, error)

    def _registry(self, service: str, operation: str, success: object, error: object) -> bool:
        """Count a registry operation; True if it succeeded."""
        outcome = _facade.outcome(success)  # a value whose truth raises is rejected, not raised
        error_class = None if outcome == "success" else _facade.failure_type(error)
        self._add(_REGISTRY_OPERATIONS, 1, (service, operation, outcome, error_class))
        return outcome == "success"

    # Instance health.
    def set_health_status(self, service: str, instance: str, state: str) -> None:
        """Set the one-hot health state of ``instance``: healthy, degraded, unhealthy or unknown."""
        self._one_hot(
            _HEALTH_STATUS,
            semconv.ATTR_MESH_HEALTH_STATE,
            state,
            _HEALTH_STATES,
            lambda name: (service, instance, name),
        )

    def record_health_check(self, service: str, instance: str, *, success: bool) -> None:
        """Count a health check of ``instance`` by outcome."""
        self._add(_HEALTH_CHECKS, 1, (service, instance, _facade.outcome(success)))

    # Circuit breakers, reachable from here too.
    def record_circuit_state_change(self, service: str, previous_state: str, state: str) -> None:
        """Shortcut for ``circuit_breakers.record_state_change``."""
        self.circuit_breakers.record_state_change(service, previous_state, state)

    def record_circuit_rejected(self, service: str) -> None:
        """Shortcut for ``circuit_breakers.record_rejected``."""
        self.circuit_breakers.record_rejected(service)


class CallTracker(_facade.Tracked):
    """Times one call (or each call of a decorated function); see ``track_call``."""

    def __init__(
        self, metrics: ServiceMeshMetrics, service: str, operation: str, clock: Callable[[], float]
    ) -> None:
        """Prepare to time calls to ``service``/``operation``."""
        self._metrics = metrics
        self._service = service
        self._operation = operation
        self._clock = clock
        self._started: list[float] = []

    def _begin(self) -> None:
        self._metrics.call_started(self._service, self._operation)
        self._started.append(self._clock())

    def _end(self, error: BaseException | None) -> None:
        duration = self._clock() - self._started.pop()
        self._metrics.call_ended(self._service, self._operation)
        if error is None:
            self._metrics.record_call_success(self._service, self._operation, duration)
        else:
            self._metrics.record_call_failure(self._service, self._operation, duration, error)

    def _fresh(self) -> CallTracker:
        return CallTracker(self._metrics, self._service, self._operation, self._clock)
