"""Error classification: one function turns an error into a low-cardinality ``error.type``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket

OTHER = "_OTHER"
TIMEOUT = "timeout"

_TIMEOUT_TYPES: tuple[type[BaseException], ...] = (
    TimeoutError,
    socket.timeout,
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
)
_HTTP_STATUS = range(100, 600)
_GRPC_CODES = frozenset(
    {
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
    }
)


def classify_error(error: object) -> str:  # noqa: PLR0911 - one return per documented case
    """Return the ``error.type`` for an error, following OpenTelemetry's guidance.

    - an exception: ``timeout`` for timeout errors, otherwise its fully qualified
      type name (``builtins.`` omitted), e.g. ``ConnectionRefusedError`` or
      ``httpx.ConnectTimeout``;
    - an exception class: as an instance of it would be;
    - an HTTP status code (int 100-599): the code as a string, e.g. ``"503"``;
    - a gRPC status (``grpc.StatusCode`` or its name or number): its name, e.g. ``"UNAVAILABLE"``;
    - a non-empty string: itself (the cardinality policy bounds it later);
    - anything else: ``_OTHER``.
    """
    if isinstance(error, BaseException):
        return _exception_type(type(error))
    if isinstance(error, type) and issubclass(error, BaseException):
        return _exception_type(error)
    if isinstance(error, bool):
        return OTHER
    if isinstance(error, int):
        return str(error) if error in _HTTP_STATUS else OTHER
    if isinstance(error, str):
        return error or OTHER
    name = getattr(error, "name", None)  # enum members, e.g. grpc.StatusCode.UNAVAILABLE
    if isinstance(name, str) and name in _GRPC_CODES:
        return name
    return OTHER


def _exception_type(kind: type[BaseException]) -> str:
    if issubclass(kind, _TIMEOUT_TYPES):
        return TIMEOUT
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
