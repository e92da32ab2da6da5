"""What the client integrations share: one request attempt in, mesh metrics out.

Each integration (httpx, aiohttp, requests, grpc) finds the instance it
connects to and the operation, calls :meth:`ClientMetrics.begin`, and ends the
returned :class:`Attempt` once with a status or an exception. Everything here
is guarded: a failure of meshmetrics is logged (rate-limited) and swallowed,
never raised into the request.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypedDict

from meshmetrics import LoadBalancerMetrics, ServiceMeshMetrics, classify_error, template_path
from meshmetrics._log import RateLimitedLog

__all__ = [
    "DEFAULT_STRATEGY",
    "OTHER_METHOD",
    "Attempt",
    "ClientMetrics",
    "Route",
    "ServiceName",
    "current_route",
    "grpc_operation",
    "http_operation",
    "instance_name",
    "method_set",
    "routing",
    "server_errors",
]

DEFAULT_STRATEGY = "round_robin"
"""``mesh.lb.strategy`` when neither the client nor the request names one: Envoy's default policy."""

OTHER_METHOD = "other"
"""``mesh.operation`` of a gRPC method outside the registered set, as gRFC A66 names it."""

ServiceName = str | Mapping[str, str] | Callable[[str], str] | None


class ClientOptions(TypedDict, total=False):
    """What every HTTP client integration takes (see :class:`ClientMetrics`)."""

    service: ServiceName
    strategy: str
    route: Callable[[str], str] | None
    failure_status: Callable[[int], bool]
    lb_metrics: LoadBalancerMetrics | None
    mesh_metrics: ServiceMeshMetrics | None


CLIENT_OPTIONS: tuple[str, ...] = tuple(ClientOptions.__annotations__)
"""How ``mesh.service`` is found from the instance (``host:port``): a fixed name, a
mapping (``host:port`` first, then ``host``), a function of ``host:port``, or None (the host)."""

_CACHE_LIMIT = 4096
_log = RateLimitedLog()


@dataclass(frozen=True, slots=True)
class Route:
    """Per-request choices that override the client's: set by the caller's own balancer."""

    service: str | None = None
    strategy: str | None = None
    operation: str | None = None


def route_from(override: object) -> Route | None:
    """A per-request override as a :class:`Route`: a Route, or a mapping of its fields; else None."""
    if override is None or isinstance(override, Route):
        return override
    if isinstance(override, Mapping):
        return Route(override.get("service"), override.get("strategy"), override.get("operation"))
    return None


_route: contextvars.ContextVar[Route | None] = contextvars.ContextVar(
    "meshmetrics_client_route", default=None
)


def current_route() -> Route | None:
    """The :class:`Route` set by the innermost :func:`routing` block, if any."""
    return _route.get()


@contextmanager
def routing(
    *, service: str | None = None, strategy: str | None = None, operation: str | None = None
) -> Iterator[Route]:
    """Within the block, requests made through any client integration use these values.

    For a balancer of your own that picks the instance::

        with routing(strategy="least_connections"):
            client.get(f"http://{balancer.pick()}/users/1")
    """
    route = Route(service, strategy, operation)
    token = _route.set(route)
    try:
        yield route
    finally:
        _route.reset(token)


def server_errors(status: int) -> bool:
    """The default failure rule: 5xx responses failed, as Envoy, Linkerd and Istio count them.

    A 4xx is the caller's mistake, not the instance's: it does not count against
    the instance (``mesh.lb.errors``) nor as a failed call. Pass
    ``failure_status=lambda status: status >= 400`` to count 4xx as well.
    """
    return status >= 500  # noqa: PLR2004 - the 5xx class


def http_operation(method: str, template: str) -> str:
    """``mesh.operation`` of an HTTP request: method and route template, ``GET /users/{id}``."""
    return f"{method} {template}"


def grpc_operation(method: str, registered: frozenset[str] | None) -> str:
    """``mesh.operation`` of a gRPC call: ``package.Service/Method`` (gRFC A66's ``grpc.method``).

    With a ``registered`` set, any other method is ``other``, so a client of a
    generic stub cannot grow the label without bound.
    """
    name = method.removeprefix("/")
    if registered is not None and name not in registered:
        return OTHER_METHOD
    return name


def method_set(methods: Collection[str] | None) -> frozenset[str] | None:
    """A registered-method set in A66's form (no leading slash)."""
    return None if methods is None else frozenset(m.removeprefix("/") for m in methods)


def instance_name(host: str, port: int) -> str:
    """``mesh.instance`` of an address: ``host:port`` (``[v6]:port`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClientMetrics:
    """The mesh metrics of one instrumented client (shared by every request it makes)."""

    __slots__ = (
        "_operations",
        "_route",
        "_service",
        "_services",
        "failure_status",
        "lb_metrics",
        "mesh_metrics",
        "strategy",
    )

    def __init__(
        self,
        *,
        service: ServiceName = None,
        strategy: str = DEFAULT_STRATEGY,
        route: Callable[[str], str] | None = None,
        failure_status: Callable[[int], bool] = server_errors,
        lb_metrics: LoadBalancerMetrics | None = None,
        mesh_metrics: ServiceMeshMetrics | None = None,
    ) -> None:
        """Record requests with these choices; ``route`` turns a path into its template."""
        self._service = service
        self.strategy = strategy
        self._route = route or template_path
        self.failure_status = failure_status
        self.lb_metrics = lb_metrics or LoadBalancerMetrics()
        self.mesh_metrics = mesh_metrics or ServiceMeshMetrics()
        self._services: dict[str, str] = {}
        self._operations: dict[tuple[str, str], str] = {}

    def service_of(self, instance: str) -> str:
        """``mesh.service`` for a request to ``instance`` (cached per instance)."""
        found = self._services.get(instance)
        if found is None:
            found = self._resolve_service(instance)
            if len(self._services) < _CACHE_LIMIT:
                self._services[instance] = found
        return found

    def _resolve_service(self, instance: str) -> str:
        host = instance.rsplit(":", 1)[0].strip("[]")
        service = self._service
        if service is None:
            return host
        if isinstance(service, str):
            return service
        if isinstance(service, Mapping):
            return service.get(instance) or service.get(host) or host
        return service(instance)

    def http_operation(self, method: str, path: str) -> str:
        """``METHOD /route/{id}`` for a request (cached per method and path, up to a limit)."""
        key = (method, path)
        found = self._operations.get(key)
        if found is None:
            found = http_operation(method, self._route(path))
            if len(self._operations) < _CACHE_LIMIT:
                self._operations[key] = found
        return found

    def begin(self, instance: str, operation: str | None, route: Route | None = None) -> Attempt | None:
        """Start one request to ``instance``; None if meshmetrics itself failed (then record nothing).

        ``route`` (else the :func:`routing` context) overrides the client's
        service, strategy and ``operation``.
        """
        try:
            route = route or _route.get()
            service = (route and route.service) or self.service_of(instance)
            strategy = (route and route.strategy) or self.strategy
            operation = (route and route.operation) or operation or OTHER_METHOD
            attempt = Attempt(self, service, instance, operation)
            self.lb_metrics.record_request(service, instance, strategy)
            self.mesh_metrics.call_started(service, operation)
        except Exception as error:
            _failed(error)
            return None
        return attempt

    def status_failed(self, status: int) -> bool:
        """Whether an HTTP response with ``status`` counts as a failure (never raises)."""
        try:
            return bool(self.failure_status(status))
        except Exception as error:
            _failed(error)
            return server_errors(status)


class Attempt:
    """One request to one instance, ended once by :meth:`end`."""

    __slots__ = ("_metrics", "_started", "instance", "operation", "service")

    def __init__(self, metrics: ClientMetrics, service: str, instance: str, operation: str) -> None:
        """Start the clock for a request of ``operation`` to ``instance`` of ``service``."""
        self._metrics = metrics
        self.service = service
        self.instance = instance
        self.operation = operation
        self._started: float | None = time.perf_counter()

    def end(self, error: object = None, *, connect_failure: bool = False) -> None:
        """The request ended: ``error`` is None on success, else a status or an exception.

        ``connect_failure`` also counts ``mesh.lb.connection.failures``. A second
        call does nothing, so a request is recorded once whichever path ends it.
        """
        started = self._started
        if started is None:
            return
        self._started = None
        try:
            duration = time.perf_counter() - started
            metrics = self._metrics
            lb, mesh = metrics.lb_metrics, metrics.mesh_metrics
            service, instance, operation = self.service, self.instance, self.operation
            mesh.call_ended(service, operation)
            if error is None:
                lb.observe_request_duration(service, instance, duration)
                mesh.record_call_success(service, operation, duration)
                return
            kind = classify_error(error)
            lb.observe_request_duration(service, instance, duration, error=kind)
            lb.record_error(service, instance, kind)
            if connect_failure:
                lb.record_connection_failure(service, instance, kind)
            mesh.record_call_failure(service, operation, duration, error=kind)
        except Exception as failure:
            _failed(failure)

    def end_http(self, status: int) -> None:
        """The response arrived with ``status``: a failure if the client's rule says so."""
        self.end(status if self._metrics.status_failed(status) else None)


def _failed(error: BaseException) -> None:
    _log.warning(
        ("client_integration", type(error).__name__),
        "meshmetrics_client_integration_failed",
        error=repr(error),
    )
