"""Three upstream instances of a "catalog" service, each under its own uvicorn server on loopback.

- ``fast``: answers at once;
- ``slow``: answers after ``SLOW_S`` seconds;
- ``flaky``: answers 503 to every 5th request it gets (deterministic, 20%).

Each counts what it served itself, so the client's metrics can be checked against it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

SLOW_S = 0.05
FAIL_EVERY = 5


@dataclass
class Instance:
    """One upstream instance: an ASGI app that counts its responses by status."""

    name: str
    delay_s: float = 0.0
    fail_every: int = 0
    served: int = 0
    failed: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: ARG002 - ASGI
        with self.lock:
            self.served += 1
            fail = self.fail_every > 0 and self.served % self.fail_every == 0
            self.failed += fail
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = 503 if fail else 200
        body = json.dumps({"path": scope["path"], "served_by": self.name}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Upstreams:
    """Start and stop the three instances, each on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.instances = [
            Instance("fast"),
            Instance("slow", delay_s=SLOW_S),
            Instance("flaky", fail_every=FAIL_EVERY),
        ]
        self._running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def __enter__(self) -> Upstreams:
        for instance in self.instances:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            instance.port = sock.getsockname()[1]
            config = uvicorn.Config(instance, lifespan="off", log_level="warning", access_log=False)
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            self._running.append((server, thread, sock))
        deadline = time.monotonic() + 30
        while not all(server.started for server, _, _ in self._running):
            if time.monotonic() > deadline:
                raise TimeoutError("the upstream instances did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        for server, _, _ in self._running:
            server.should_exit = True
        for _, thread, sock in self._running:
            thread.join(timeout=10)
            sock.close()
