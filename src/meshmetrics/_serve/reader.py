"""The Prometheus pull side's reader, on a private registry."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry


def make_reader() -> tuple[PrometheusMetricReader, CollectorRegistry]:
    """A Prometheus reader on its own registry (no clash with the global one or a second configure)."""
    registry = CollectorRegistry(auto_describe=True)
    return PrometheusMetricReader(registry=registry), registry
