"""Mesh metrics for `aiohttp <https://docs.aiohttp.org>`_ client sessions.

One line: add the trace config to the session::

    from meshmetrics.integrations.aiohttp import mesh_trace_config

    session = aiohttp.ClientSession(trace_configs=[mesh_trace_config(service="users")])

Records the same metrics as the httpx integration, with the same options
(``service``, ``strategy``, ``route``, ``failure_status``), from aiohttp's
request tracing: the request starts at ``on_request_start`` and ends when the
response headers arrive (``on_request_end``) or it fails
(``on_request_exception``); each redirect hop is a request of its own. A
refused connection or a connect timeout counts in
``mesh.lb.connection.failures``. Per request, a balancer of your own can
override the client's choices with ``trace_request_ctx={"meshmetrics":
{"strategy": "least_connections"}}`` or the :func:`routing` context manager.
aiohttp's exceptions propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

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

__all__ = ["TRACE_KEY", "mesh_trace_config", "routing"]

TRACE_KEY = "meshmetrics"
"""The key of ``trace_request_ctx`` that overrides ``service``, ``strategy`` or ``operation``."""

_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class _TraceContext:
    """aiohttp's per-request trace context: the attempt in flight."""

    __slots__ = ("attempt", "trace_request_ctx")

    def __init__(self, trace_request_ctx: object = None) -> None:
        self.trace_request_ctx = trace_request_ctx
        self.attempt: Attempt | None = None


def _route_of(trace_request_ctx: object) -> Route | None:
    return route_from(trace_request_ctx.get(TRACE_KEY) if isinstance(trace_request_ctx, Mapping) else None)


class _Tracer:
    """The trace callbacks, bound to one :class:`ClientMetrics`."""

    def __init__(self, metrics: ClientMetrics) -> None:
        self.metrics = metrics

    def begin(self, context: _TraceContext, method: str, url: URL) -> None:
        try:
            instance = instance_name(url.host or "", url.port or 0)
            operation = self.metrics.http_operation(method, url.path)
            route = _route_of(context.trace_request_ctx)
        except Exception:
            instance, operation, route = "unknown:0", None, None
        context.attempt = self.metrics.begin(instance, operation, route)

    async def on_request_start(
        self, session: aiohttp.ClientSession, context: _TraceContext, params: aiohttp.TraceRequestStartParams
    ) -> None:
        self.begin(context, params.method, params.url)

    async def on_request_redirect(
        self,
        session: aiohttp.ClientSession,
        context: _TraceContext,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        if context.attempt is not None:
            context.attempt.end_http(params.response.status)
        try:
            location = params.response.headers.get("Location")
            target = params.url.join(URL(location)) if location else params.url
        except Exception:
            target = params.url
        self.begin(context, params.method, target)

    async def on_request_end(
        self, session: aiohttp.ClientSession, context: _TraceContext, params: aiohttp.TraceRequestEndParams
    ) -> None:
        if context.attempt is not None:
            context.attempt.end_http(params.response.status)

    async def on_request_exception(
        self,
        session: aiohttp.ClientSession,
        context: _TraceContext,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        if context.attempt is not None:
            error = params.exception
            context.attempt.end(error, connect_failure=isinstance(error, _CONNECT_ERRORS))


def mesh_trace_config(**options: Unpack[ClientOptions]) -> aiohttp.TraceConfig:
    """An ``aiohttp.TraceConfig`` recording mesh metrics for every request of the session."""
    tracer = _Tracer(ClientMetrics(**options))
    factory: Any = _TraceContext  # aiohttp types the factory as returning SimpleNamespace
    config = aiohttp.TraceConfig(trace_config_ctx_factory=factory)
    config.on_request_start.append(tracer.on_request_start)  # type: ignore[arg-type]
    config.on_request_redirect.append(tracer.on_request_redirect)  # type: ignore[arg-type]
    config.on_request_end.append(tracer.on_request_end)  # type: ignore[arg-type]
    config.on_request_exception.append(tracer.on_request_exception)  # type: ignore[arg-type]
    return config
