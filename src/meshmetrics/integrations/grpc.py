"""Mesh metrics for `grpcio <https://grpc.io/docs/languages/python/>`_ clients, sync and ``grpc.aio``.

One line: intercept the channel to one instance::

    from meshmetrics.integrations.grpc import aio_interceptors, interceptors

    channel = grpc.intercept_channel(grpc.insecure_channel(target), *interceptors(target, service="users"))
    aio_channel = grpc.aio.insecure_channel(target, interceptors=aio_interceptors(target, service="users"))

Every call of the four kinds (unary-unary, unary-stream, stream-unary,
stream-stream) records ``mesh.lb.requests``, ``mesh.lb.request.duration`` and,
unless its status is ``OK``, ``mesh.lb.errors`` with the status name as
``error.type`` (``UNAVAILABLE``), for the instance ``target``; and
``mesh.call.duration`` and ``mesh.calls.active`` for the service and the full
method name ``package.Service/Method`` (gRFC A66's ``grpc.method``). With
``registered_methods``, any other method is ``other``, as gRPC's own
OpenTelemetry metrics fold methods of generic stubs. A streaming call counts
once, when it ends, with its whole duration. ``UNAVAILABLE`` because no
connection could be made ("failed to connect") also counts in
``mesh.lb.connection.failures``.

With ``grpc.aio``, a unary-unary call is recorded before the caller's ``await``
returns; a streaming call is recorded by a task scheduled when it ends.
gRPC's errors propagate unchanged; meshmetrics never raises into the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypedDict

import grpc
import grpc.aio

from meshmetrics import LoadBalancerMetrics, ServiceMeshMetrics
from meshmetrics.integrations._client import (
    DEFAULT_STRATEGY,
    Attempt,
    ClientMetrics,
    ServiceName,
    grpc_operation,
    method_set,
    routing,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # a dependency of opentelemetry-api

__all__ = [
    "AioMeshInterceptor",
    "MeshInterceptor",
    "aio_interceptors",
    "instance_of",
    "interceptors",
    "routing",
]

_CONNECT_FAILED = "failed to connect"
_TARGET_PREFIXES = ("dns:///", "dns:", "ipv4:", "ipv6:")


def instance_of(target: str) -> str:
    """``mesh.instance`` of a channel target: ``dns:///users-1:50051`` -> ``users-1:50051``."""
    for prefix in _TARGET_PREFIXES:
        if target.startswith(prefix):
            return target.removeprefix(prefix)
    return target


def _method_name(details: grpc.ClientCallDetails | grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class GrpcOptions(TypedDict, total=False):
    """What :func:`interceptors` and :func:`aio_interceptors` take (see :func:`interceptors`)."""

    service: ServiceName
    strategy: str
    registered_methods: Collection[str] | None
    lb_metrics: LoadBalancerMetrics | None
    mesh_metrics: ServiceMeshMetrics | None


class _Calls:
    """What the sync and aio interceptors share: the client, the instance and the method set."""

    def __init__(self, target: str, options: GrpcOptions) -> None:
        self.instance = instance_of(target)
        self.registered = method_set(options.get("registered_methods"))
        self.metrics = ClientMetrics(
            service=options.get("service"),
            strategy=options.get("strategy", DEFAULT_STRATEGY),
            lb_metrics=options.get("lb_metrics"),
            mesh_metrics=options.get("mesh_metrics"),
        )

    def begin(self, details: grpc.ClientCallDetails | grpc.aio.ClientCallDetails) -> Attempt | None:
        try:
            operation = grpc_operation(_method_name(details), self.registered)
        except Exception:
            operation = None
        return self.metrics.begin(self.instance, operation)


def _end(attempt: Attempt | None, code: object, details: object) -> None:
    """End ``attempt`` with a gRPC status (a ``StatusCode``; None or ``OK`` is success)."""
    if attempt is None:
        return
    if code is None or code == grpc.StatusCode.OK:
        attempt.end(None)
        return
    connect = code == grpc.StatusCode.UNAVAILABLE and _CONNECT_FAILED in str(details or "").lower()
    attempt.end(code, connect_failure=connect)


def _sync_done(attempt: Attempt | None) -> Callable[[Any], None]:
    """A done callback for a sync call or future: reads its status and ends ``attempt``."""

    def done(call: Any) -> None:
        try:
            if call.cancelled():
                _end(attempt, grpc.StatusCode.CANCELLED, None)
                return
            # an interceptor's failure outcome says INTERNAL; the RpcError it holds has the real status
            error = call.exception()
            if error is None:
                _end(attempt, grpc.StatusCode.OK, None)
            elif isinstance(error, grpc.Call):
                _end(attempt, error.code(), error.details())
            elif attempt is not None:
                attempt.end(error)
        except Exception as failure:
            if attempt is not None:
                attempt.end(failure)

    return done


class MeshInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A sync client interceptor for all four kinds of call; see :func:`interceptors`."""

    def __init__(self, calls: _Calls) -> None:
        """Record calls for ``calls``' client and instance."""
        self._calls = calls

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        attempt = self._calls.begin(details)
        try:
            call = continuation(details, request)
        except BaseException as error:  # a failure before the call existed
            if attempt is not None:
                attempt.end(error)
            raise
        try:
            call.add_done_callback(_sync_done(attempt))
        except Exception as error:
            if attempt is not None:
                attempt.end(error)
        return call

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Record a unary-unary call."""
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Record a unary-stream call, once, when its stream ends."""
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Record a stream-unary call."""
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Record a stream-stream call, once, when it ends."""
        return self._intercept(continuation, client_call_details, request_iterator)


def interceptors(target: str, **options: Unpack[GrpcOptions]) -> tuple[MeshInterceptor]:
    """Interceptors for ``grpc.intercept_channel(channel, *interceptors(target, ...))``.

    ``target`` is the channel's target, the instance (``host:port``); ``service``
    a name, a mapping or a function of it (default: the host);
    ``registered_methods`` the full method names (``package.Service/Method``)
    kept as ``mesh.operation``, everything else being ``other``.
    """
    calls = _Calls(target, options)
    return (MeshInterceptor(calls),)


# grpc.aio


class AioMeshInterceptor:
    """The shared part of the ``grpc.aio`` interceptors: ends attempts from a call's status."""

    def __init__(self, calls: _Calls) -> None:
        """Record calls for ``calls``' client and instance."""
        self._calls = calls
        self._pending: set[asyncio.Task[None]] = set()

    async def _finish(self, attempt: Attempt | None, call: grpc.aio.Call) -> None:
        try:
            if call.cancelled():
                _end(attempt, grpc.StatusCode.CANCELLED, None)
            else:
                _end(attempt, await call.code(), await call.details())
        except BaseException as failure:
            if attempt is not None:
                attempt.end(failure)
            if not isinstance(failure, Exception):
                raise

    async def _unary(self, continuation: Any, details: Any, request: Any) -> Any:
        attempt = self._calls.begin(details)
        try:
            call = await continuation(details, request)
        except BaseException as error:
            if attempt is not None:
                attempt.end(error)
            raise
        await self._finish(attempt, call)
        return call

    async def _streaming(self, continuation: Any, details: Any, request: Any) -> Any:
        attempt = self._calls.begin(details)
        try:
            call = await continuation(details, request)
        except BaseException as error:
            if attempt is not None:
                attempt.end(error)
            raise

        def done(finished: grpc.aio.Call) -> None:
            try:
                task = asyncio.get_running_loop().create_task(self._finish(attempt, finished))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            except Exception as error:
                if attempt is not None:
                    attempt.end(error)

        try:
            call.add_done_callback(done)
        except Exception as error:
            if attempt is not None:
                attempt.end(error)
        return call


class _AioUnaryUnary(AioMeshInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._unary(continuation, client_call_details, request)


class _AioUnaryStream(AioMeshInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._streaming(continuation, client_call_details, request)


class _AioStreamUnary(AioMeshInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._streaming(continuation, client_call_details, request_iterator)


class _AioStreamStream(AioMeshInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._streaming(continuation, client_call_details, request_iterator)


def aio_interceptors(target: str, **options: Unpack[GrpcOptions]) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(target, interceptors=aio_interceptors(target, ...))``.

    The options are those of :func:`interceptors`. grpc.aio takes one class per
    kind of call, so there are four, sharing one client.
    """
    calls = _Calls(target, options)
    return [_AioUnaryUnary(calls), _AioUnaryStream(calls), _AioStreamUnary(calls), _AioStreamStream(calls)]
