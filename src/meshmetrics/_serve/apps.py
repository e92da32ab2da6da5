"""``/metrics`` as a WSGI or ASGI app, for services that serve it from their own web server.

Both authenticate exactly like the built-in server (see ``_exposition``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry

from meshmetrics._serve.exposition import EndpointAuth, respond

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


def make_wsgi_app(registry: CollectorRegistry, auth: EndpointAuth) -> WSGIApp:
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
        )
        start_response(f"{status} {_REASONS[status]}", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return app


def make_asgi_app(registry: CollectorRegistry, auth: EndpointAuth) -> ASGIApp:
    """An ASGI (HTTP) app answering ``/metrics``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG001 - the ASGI signature
        if scope["type"] != "http":
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        status, response_headers, body = respond(
            method=scope["method"],
            path=scope["path"][len(scope.get("root_path", "")) :] or "/",
            authorization=headers.get("authorization"),
            accept=headers.get("accept"),
            accept_encoding=headers.get("accept-encoding"),
            registry=registry,
            auth=auth,
        )
        encoded = [(k.lower().encode(), v.encode()) for k, v in response_headers]
        encoded.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": encoded})
        await send({"type": "http.response.body", "body": body})

    return app
