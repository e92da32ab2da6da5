"""``/metrics`` as a WSGI or ASGI app, for services that serve it from their own web server.

Both answer through :func:`~meshmetrics._serve.exposition.respond`, so they
authenticate, negotiate and refuse methods exactly like the built-in server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry

from meshmetrics._serve.exposition import EndpointAuth, respond

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_wsgi_app(
    registry: CollectorRegistry, auth: EndpointAuth, *, native_histograms: bool = False
) -> WSGIApp:
    """A WSGI app answering ``/metrics`` (relative to where it is mounted)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        status, headers, body = respond(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=path,
            authorization=environ.get("HTTP_AUTHORIZATION"),
            accept=environ.get("HTTP_ACCEPT"),
            accept_encoding=environ.get("HTTP_ACCEPT_ENCODING"),
            registry=registry,
            auth=auth,
            native_histograms=native_histograms,
        )
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    return app


def make_asgi_app(
    registry: CollectorRegistry, auth: EndpointAuth, *, native_histograms: bool = False
) -> ASGIApp:
    """An ASGI (HTTP) app answering ``/metrics``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG001 - the ASGI signature
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {}
        for raw_key, raw_value in scope["headers"]:
            key, value = raw_key.decode("latin-1").lower(), raw_value.decode("latin-1")
            # repeated fields combine (RFC 9110 5.3): two Authorization headers then match no secret
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        status, response_headers, body = respond(
            method=scope["method"],
            path=scope["path"][len(scope.get("root_path", "")) :] or "/",
            authorization=headers.get("authorization"),
            accept=headers.get("accept"),
            accept_encoding=headers.get("accept-encoding"),
            registry=registry,
            auth=auth,
            native_histograms=native_histograms,
        )
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response_headers]
        await send({"type": "http.response.start", "status": status, "headers": encoded})
        await send({"type": "http.response.body", "body": body})

    return app
