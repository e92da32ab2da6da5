"""The pull endpoint's view of every worker at once (multiprocess mode).

The merged state arrives as the SDK's export data and goes through the same
translation as the single-process endpoint (the OpenTelemetry Prometheus
exporter's), so names, units, ``target_info`` and label rules are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.exporter.prometheus import _CustomCollector
from opentelemetry.sdk.metrics.export import MetricsData


class MergedCollector:
    """A ``prometheus_client`` collector that merges the workers' state at every scrape."""

    def __init__(self, merged: Callable[[], MetricsData | None]) -> None:
        """Serve what ``merged()`` returns at each scrape."""
        self._merged = merged

    def describe(self) -> Iterable[Any]:
        """Nothing to describe up front (registering must not run a merge)."""
        return []

    def collect(self) -> Iterable[Any]:
        """The merged families, translated as the single-process endpoint translates its own."""
        data = self._merged()
        translator = _CustomCollector()
        if data is not None:
            translator.add_metrics_data(data)
        yield from translator.collect()
