"""The Prometheus pull side: a reader on a private registry, served over HTTP."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, start_http_server


@dataclass
class PrometheusEndpoint:
    """A running ``/metrics`` endpoint and the reader behind it."""

    reader: PrometheusMetricReader
    registry: CollectorRegistry
    server: WSGIServer
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        """The bound TCP port (useful when 0 asked for any free port)."""
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def make_reader() -> tuple[PrometheusMetricReader, CollectorRegistry]:
    """A Prometheus reader on its own registry (no clash with the global one or a second configure)."""
    registry = CollectorRegistry(auto_describe=True)
    return PrometheusMetricReader(registry=registry), registry


def serve(
    reader: PrometheusMetricReader, registry: CollectorRegistry, host: str, port: int
) -> PrometheusEndpoint:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return PrometheusEndpoint(reader, registry, server, thread, host)
