"""Error classification: one function turns an error into a low-cardinality ``error.type``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket

from meshmetrics._definitions import OTHER

TIMEOUT = "timeout"

_TIMEOUT_TYPES: tuple[type[BaseException], ...] = (
    TimeoutError,
    socket.timeout,
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
)
_HTTP_STATUS = range(100, 600)
# gRPC status names in numeric order: the index is the code (grpc/include/grpc/status.h).
_GRPC_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
_GRPC_CODES = frozenset(_GRPC_NAMES)


def classify_error(error: object) -> str:  # noqa: PLR0911 - one return per documented case
    """Return the ``error.type`` for an error, following OpenTelemetry's guidance.

    - an exception: ``timeout`` for timeout errors, otherwise its fully qualified
      type name (``builtins.`` omitted), e.g. ``ConnectionRefusedError`` or
      ``httpx.ConnectTimeout``;
    - an exception class: as an instance of it would be;
    - an HTTP status code (int 100-599): the code as a string, e.g. ``"503"``;
    - a gRPC status (``grpc.StatusCode``, its name, or its number 0-16): its name,
      e.g. ``"UNAVAILABLE"`` for ``grpc.StatusCode.UNAVAILABLE`` or ``14``;
    - a ``grpc.RpcError`` (sync or ``grpc.aio``) carrying a status: the status name;
    - a non-empty string: itself (the cardinality policy bounds it later);
    - anything else: ``_OTHER``.
    """
    if isinstance(error, BaseException):
        return _rpc_status(error) or _exception_type(type(error))
    if isinstance(error, type) and issubclass(error, BaseException):
        return _exception_type(error)
    if isinstance(error, bool):
        return OTHER
    if isinstance(error, int):
        if error in _HTTP_STATUS:
            return str(error)
        return _GRPC_NAMES[error] if 0 <= error < len(_GRPC_NAMES) else OTHER
    if isinstance(error, str):
        return error or OTHER
    name = getattr(error, "name", None)  # enum members, e.g. grpc.StatusCode.UNAVAILABLE
    if isinstance(name, str) and name in _GRPC_CODES:
        return name
    return OTHER


def _rpc_status(error: BaseException) -> str | None:
    """The status name of a gRPC ``RpcError``; found by duck typing so that grpc is never imported."""
    if not type(error).__module__.startswith("grpc"):
        return None
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    try:
        name = getattr(code(), "name", None)
    except Exception:  # a bare grpc.RpcError() has no status to report
        return None
    return name if isinstance(name, str) and name in _GRPC_CODES else None


def _exception_type(kind: type[BaseException]) -> str:
    if issubclass(kind, _TIMEOUT_TYPES):
        return TIMEOUT
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
