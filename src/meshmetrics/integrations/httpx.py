"""Mesh metrics for `httpx <https://www.python-httpx.org>`_ clients, sync and async.

One line: wrap the transport::

    from meshmetrics.integrations.httpx import AsyncMeshTransport, MeshTransport

    client = httpx.Client(transport=MeshTransport(service="users"))
    async_client = httpx.AsyncClient(transport=AsyncMeshTransport(service="users"))

Every request (each attempt, when something retries it) records
``mesh.lb.requests``, ``mesh.lb.request.duration`` and, when it failed,
``mesh.lb.errors`` for the instance it went to (the URL's ``host:port``), and
``mesh.call.duration`` and ``mesh.calls.active`` for the service and the
operation ``METHOD /route/{id}``. A connect error or connect timeout also counts
in ``mesh.lb.connection.failures``. The duration runs until the response
headers arrive, as OpenTelemetry's httpx instrumentation measures it.

- ``transport``: the transport to wrap (default: a new ``httpx.HTTPTransport()``).
- ``service``: a name, a mapping of ``host:port`` or host to names, a function of
  ``host:port``, or None (the host).
- ``strategy``: ``mesh.lb.strategy`` (default ``round_robin``). A balancer of
  your own can say per request, with ``extensions={"meshmetrics": {"strategy":
  "least_connections"}}`` or the :func:`routing` context manager.
- ``route``: path to route template (default :func:`meshmetrics.template_path`);
  the raw URL is never a label.
- ``failure_status``: which statuses are failures. Default: 5xx, as Envoy,
  Linkerd and Istio count them; a 4xx is the caller's mistake, not the
  instance's. ``failure_status=lambda status: status >= 400`` counts 4xx too.

httpx's own exceptions propagate unchanged; meshmetrics never raises into the request.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from meshmetrics.integrations._client import (
    Attempt,
    ClientMetrics,
    ClientOptions,
    Route,
    instance_name,
    route_from,
    routing,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # a dependency of opentelemetry-api

__all__ = ["EXTENSION", "AsyncMeshTransport", "MeshTransport", "routing"]

EXTENSION = "meshmetrics"
"""The request extension that overrides ``service``, ``strategy`` or ``operation`` per request."""

_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
_DEFAULT_PORTS = {"https": 443, "wss": 443}


def _route_of(request: httpx.Request) -> Route | None:
    return route_from(request.extensions.get(EXTENSION))


def _begin(metrics: ClientMetrics, request: httpx.Request) -> Attempt | None:
    url = request.url
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 80)
    try:
        operation = metrics.http_operation(request.method, url.path)
        route = _route_of(request)
    except Exception:
        operation, route = None, None
    return metrics.begin(instance_name(url.host, port), operation, route)


def _failed(attempt: Attempt | None, error: BaseException) -> None:
    if attempt is not None:
        attempt.end(error, connect_failure=isinstance(error, _CONNECT_ERRORS))


def _answered(attempt: Attempt | None, response: httpx.Response) -> httpx.Response:
    if attempt is not None:
        attempt.end_http(response.status_code)
    return response


class MeshTransport(httpx.BaseTransport):
    """An ``httpx`` transport recording mesh metrics for every request it sends."""

    def __init__(
        self, transport: httpx.BaseTransport | None = None, **options: Unpack[ClientOptions]
    ) -> None:
        """Wrap ``transport`` (default ``httpx.HTTPTransport()``); see the module for the options."""
        self.transport = transport or httpx.HTTPTransport()
        self.metrics = ClientMetrics(**options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the wrapped transport, recording the attempt."""
        attempt = _begin(self.metrics, request)
        try:
            response = self.transport.handle_request(request)
        except BaseException as error:  # an interrupted call ended too: it must leave calls.active
            _failed(attempt, error)
            raise
        return _answered(attempt, response)

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()

    def __enter__(self) -> MeshTransport:
        """Enter the wrapped transport too."""
        self.transport.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Exit the wrapped transport."""
        self.transport.__exit__(exc_type, exc_value, traceback)


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """An async ``httpx`` transport recording mesh metrics for every request it sends."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport | None = None, **options: Unpack[ClientOptions]
    ) -> None:
        """Wrap ``transport`` (default ``httpx.AsyncHTTPTransport()``); see the module for the options."""
        self.transport = transport or httpx.AsyncHTTPTransport()
        self.metrics = ClientMetrics(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the wrapped transport, recording the attempt."""
        attempt = _begin(self.metrics, request)
        try:
            response = await self.transport.handle_async_request(request)
        except BaseException as error:  # a cancelled call ended too: it must leave calls.active
            _failed(attempt, error)
            raise
        return _answered(attempt, response)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncMeshTransport:
        """Enter the wrapped transport too."""
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Exit the wrapped transport."""
        await self.transport.__aexit__(exc_type, exc_value, traceback)
