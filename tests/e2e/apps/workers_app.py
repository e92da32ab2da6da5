"""A service as users write it: configure() at start-up, one facade call per request.

Served by gunicorn (``:wsgi``, or ``:asgi`` with a Uvicorn worker) or
``uvicorn --workers`` (``:asgi``); every process calls ``configure()`` as usual.
The environment chooses the port and the multiprocess directory.
"""

from __future__ import annotations

from typing import Any

import meshmetrics

handle = meshmetrics.configure(service_name="e2e-workers")
lb = meshmetrics.LoadBalancerMetrics()


def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    lb.record_request("api", "api-1", "round_robin")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    lb.record_request("api", "api-1", "round_robin")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
