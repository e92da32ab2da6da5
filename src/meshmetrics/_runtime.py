"""The binding between facades and one MeterProvider: instruments, policy, self-telemetry."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from meshmetrics import semconv
from meshmetrics._config import Settings
from meshmetrics._policy import Policy
from meshmetrics._version import __version__
from meshmetrics._window import ImbalanceWindow

METER_NAME = "meshmetrics"
_OBSERVABLE = frozenset({semconv.METRIC_MESH_LB_LOAD_IMBALANCE})


class Runtime:
    """Everything a facade needs to record on one provider."""

    def __init__(self, provider: MeterProvider, settings: Settings) -> None:
        """Create every registry instrument on ``provider`` under the ``meshmetrics`` meter."""
        self.provider = provider
        self.settings = settings
        self.meter: Meter = provider.get_meter(METER_NAME, __version__)
        self.imbalance = ImbalanceWindow()
        self.instruments: dict[str, Any] = {
            name: self._create(name) for name in semconv.METRICS if name not in _OBSERVABLE
        }
        definition = semconv.METRICS[semconv.METRIC_MESH_LB_LOAD_IMBALANCE]
        self.meter.create_observable_gauge(
            definition.name,
            callbacks=[self._observe_imbalance],
            unit=definition.unit,
            description=definition.brief,
        )
        self._overflows = self.instruments[semconv.METRIC_MESHMETRICS_ATTRIBUTE_OVERFLOWS]
        self._rejected = self.instruments[semconv.METRIC_MESHMETRICS_MEASUREMENTS_REJECTED]
        self.policy = Policy(
            strict=settings.strict,
            max_label_length=settings.max_label_length,
            on_rejected=self._count_rejected,
            on_folded=self._count_folded,
        )

    def _create(self, name: str) -> Any:
        definition = semconv.METRICS[name]
        kind = definition.instrument
        if kind == "counter":
            return self.meter.create_counter(name, unit=definition.unit, description=definition.brief)
        if kind == "updowncounter":
            return self.meter.create_up_down_counter(name, unit=definition.unit, description=definition.brief)
        if kind == "histogram":
            return self.meter.create_histogram(
                name,
                unit=definition.unit,
                description=definition.brief,
                explicit_bucket_boundaries_advisory=list(definition.buckets),
            )
        return self.meter.create_gauge(name, unit=definition.unit, description=definition.brief)

    def _count_rejected(self, metric: str, reason: str) -> None:
        self._rejected.add(
            1, {semconv.ATTR_MESHMETRICS_METRIC: metric, semconv.ATTR_MESHMETRICS_REASON: reason}
        )

    def _count_folded(self, metric: str, key: str) -> None:
        self._overflows.add(
            1, {semconv.ATTR_MESHMETRICS_METRIC: metric, semconv.ATTR_MESHMETRICS_ATTRIBUTE: key}
        )

    def _observe_imbalance(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (service, strategy), ratio in self.imbalance.imbalance().items():
            yield Observation(
                ratio, {semconv.ATTR_MESH_SERVICE: service, semconv.ATTR_MESH_LB_STRATEGY: strategy}
            )


class _State:
    """The runtime of the provider ``configure()`` installed, if any."""

    current: Runtime | None = None


state = _State()
_by_provider: weakref.WeakKeyDictionary[MeterProvider, Runtime] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def reset_after_fork() -> None:
    """In a forked child: fresh lock and no runtime bound to the parent's providers."""
    global _lock  # noqa: PLW0603 - module state, reset in the child
    _lock = threading.Lock()
    _by_provider.clear()


def runtime_for(provider: MeterProvider, settings: Settings | None = None) -> Runtime:
    """Return the one runtime bound to ``provider``, creating it on first use."""
    with _lock:
        runtime = _by_provider.get(provider)
        if runtime is None:
            runtime = Runtime(provider, settings or Settings())
            _by_provider[provider] = runtime
        return runtime
