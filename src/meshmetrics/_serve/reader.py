"""The Prometheus pull side's reader, on a private registry."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader, MetricsData
from prometheus_client import CollectorRegistry

from meshmetrics._serve.translate import TranslatingCollector

_KINDS: tuple[type, ...] = (
    Counter,
    UpDownCounter,
    Histogram,
    ObservableCounter,
    ObservableUpDownCounter,
    ObservableGauge,
)


class CumulativeReader(MetricReader):
    """A reader collected on demand, cumulative for every instrument (as Prometheus wants)."""

    def __init__(self) -> None:
        """Ask the SDK for cumulative temporality everywhere."""
        super().__init__(preferred_temporality=dict.fromkeys(_KINDS, AggregationTemporality.CUMULATIVE))
        self._lock = threading.Lock()
        self._latest: MetricsData | None = None

    def pull(self) -> MetricsData | None:
        """Collect now and return what was collected (``None`` before the provider is set up)."""
        with self._lock:  # concurrent callers each get their own collection
            self._latest = None
            self.collect()
            latest, self._latest = self._latest, None
            return latest

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        del timeout_millis, kwargs  # the SDK's signature; storing is instant
        self._latest = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""
        del timeout_millis, kwargs


class PullReader(CumulativeReader):
    """A reader collected at every scrape, whose data our own translation serves.

    Unlike the OpenTelemetry Prometheus reader, exemplars and exponential
    histograms reach the exposition.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register a :class:`TranslatingCollector` for this reader on ``registry``."""
        super().__init__()
        self._registry = registry
        self._collector = TranslatingCollector(self.pull)
        registry.register(self._collector)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop serving: the registry forgets the collector."""
        del timeout_millis, kwargs  # the SDK's signature; unregistering is instant
        self._registry.unregister(self._collector)


def make_translating_reader() -> tuple[PullReader, CollectorRegistry]:
    """A pull reader on its own registry (no clash with the global one or a second configure)."""
    registry = CollectorRegistry(auto_describe=True)
    return PullReader(registry), registry
