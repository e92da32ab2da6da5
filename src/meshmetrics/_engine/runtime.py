"""The binding between facades and one MeterProvider: instruments, policy, self-telemetry.

Each registry metric is recorded either in meshmetrics' own cells (the fast
path, for providers meshmetrics built) or on a plain SDK instrument (providers
passed in by the user, an instrument a user View targets, or exponential
histograms asked for OTLP). Both take ``(value, key, attributes)``.
"""

from __future__ import annotations

import fnmatch
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import version
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from meshmetrics import semconv
from meshmetrics._definitions import MetricDefinition
from meshmetrics._engine import merge as _merge
from meshmetrics._engine.series import Cells
from meshmetrics._engine.window import ImbalanceWindow, SnapshotWindow
from meshmetrics._policy.core import Policy
from meshmetrics._policy.profiles import kept_keys
from meshmetrics._setup.settings import Settings

METER_NAME = "meshmetrics"
METER_VERSION = version("meshmetrics")
_OBSERVABLE = frozenset({semconv.METRIC_MESH_LB_LOAD_IMBALANCE})


class _SdkInstrument:
    """An SDK instrument behind the cells' signature: ``(value, key, attributes)``."""

    __slots__ = ("_instrument",)

    def __init__(self, instrument: Any) -> None:
        self._instrument = instrument

    def add(self, amount: float, _key: object, attributes: Mapping[str, Any]) -> None:
        self._instrument.add(amount, attributes)

    def set(self, value: float, _key: object, attributes: Mapping[str, Any]) -> None:
        self._instrument.set(value, attributes)

    def record(self, value: float, _key: object, attributes: Mapping[str, Any]) -> None:
        self._instrument.record(value, attributes)


_WINDOW_KEYS = (semconv.ATTR_MESH_SERVICE, semconv.ATTR_MESH_LB_STRATEGY, semconv.ATTR_MESH_INSTANCE)


class _WindowedRequests(_SdkInstrument):
    """``mesh.lb.requests`` on the SDK path: also feeds the per-request imbalance window.

    (On the fast path the imbalance is read from the request cells at collection.)
    """

    __slots__ = ("_window",)

    def __init__(self, instrument: Any, window: ImbalanceWindow) -> None:
        super().__init__(instrument)
        self._window = window

    def add(self, amount: float, key: object, attributes: Mapping[str, Any]) -> None:
        super().add(amount, key, attributes)
        service, strategy, instance = (attributes.get(k) for k in _WINDOW_KEYS)
        if service is not None and strategy is not None and instance is not None:
            self._window.add((service, strategy), instance)


def _targeted_by(view: View, name: str) -> bool:
    pattern = view._instrument_name  # noqa: SLF001 - a View's selection criteria
    meter = view._meter_name  # noqa: SLF001
    if meter is not None and meter != METER_NAME:
        return False
    return pattern is None or fnmatch.fnmatch(name, pattern)


class Runtime:
    """Everything a facade needs to record on one provider."""

    def __init__(
        self,
        provider: MeterProvider,
        settings: Settings,
        readers: Sequence[MetricReader] | None = None,
        user_views: Sequence[View] = (),
    ) -> None:
        """Create every registry metric, in cells when ``readers`` (of ``provider``) are given."""
        self.provider = provider
        self.settings = settings
        self.meter: Meter = provider.get_meter(METER_NAME, METER_VERSION)
        self.imbalance: ImbalanceWindow | None = None  # per-request window, SDK path only
        self._snapshots = SnapshotWindow()
        self.cells: dict[str, Cells] = {}
        self.instruments: dict[str, Any] = {}
        self.policy = Policy(
            strict=settings.strict,
            max_label_length=settings.max_label_length,
            on_rejected=self._count_rejected,
            on_folded=self._count_folded,
            kept={
                name: frozenset(kept_keys(d.instrument, (u.key for u in d.attributes), settings.detail))
                - settings.dropped()
                for name, d in semconv.METRICS.items()
            },
            overrides=settings.attribute_policies,
            normalizers=settings.normalizers,
        )
        fast = readers is not None and settings.fast_path
        for name, definition in semconv.METRICS.items():
            if name in _OBSERVABLE:
                continue
            if fast and self._fast_path_allowed(definition, user_views):
                self.cells[name] = self.instruments[name] = Cells(
                    definition, on_series_removed=self._series_ended, series_ttl_s=settings.series_ttl_s
                )
            elif name == semconv.METRIC_MESH_LB_REQUESTS:
                self.imbalance = ImbalanceWindow()
                self.instruments[name] = _WindowedRequests(self._create(definition), self.imbalance)
            else:
                self.instruments[name] = _SdkInstrument(self._create(definition))
        imbalance = semconv.METRICS[semconv.METRIC_MESH_LB_LOAD_IMBALANCE]
        self.meter.create_observable_gauge(
            imbalance.name,
            callbacks=[self._observe_imbalance],
            unit=imbalance.unit,
            description=imbalance.brief,
        )
        if fast and readers:
            resource = getattr(getattr(provider, "_sdk_config", None), "resource", None) or Resource({})
            scope = InstrumentationScope(METER_NAME, METER_VERSION)
            for reader in readers:
                _merge.attach(reader, self.cells.values, resource, scope)
        self._overflows = self.instruments[semconv.METRIC_MESHMETRICS_ATTRIBUTE_OVERFLOWS]
        self._rejected = self.instruments[semconv.METRIC_MESHMETRICS_MEASUREMENTS_REJECTED]

    def _fast_path_allowed(self, definition: MetricDefinition, user_views: Sequence[View]) -> bool:
        if any(_targeted_by(view, definition.name) for view in user_views):
            return False  # a user View wants the SDK's aggregation for it: keep the SDK path
        exponential = self.settings.otlp_endpoint and (
            self.settings.otlp_histogram_aggregation == "base2_exponential_bucket_histogram"
        )
        return not (definition.instrument == "histogram" and exponential)

    def _create(self, definition: MetricDefinition) -> Any:
        name, kind = definition.name, definition.instrument
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

    def _series_ended(self, metric: str, attributes: Mapping[str, Any]) -> None:
        """Give bounded values that no live series of ``metric`` uses their budget place back."""
        cells = self.cells[metric]
        for key, value in attributes.items():
            definition = semconv.ATTRIBUTES.get(key)
            if definition is None or definition.policy != "bounded":
                continue
            with cells.lock:
                in_use = any(meta.attributes.get(key) == value for meta in cells.meta.values())
            if not in_use:
                self.policy.release(metric, key, value)

    def remove_series(self, metrics: Iterable[str], attributes: Mapping[str, str]) -> int:
        """Stop exporting the series of ``metrics`` whose attributes include ``attributes``."""
        removed = 0
        for name in metrics:
            cells = self.cells.get(name)
            if cells is not None:
                removed += cells.remove(lambda attrs: all(attrs.get(k) == v for k, v in attributes.items()))
        return removed

    def _count_rejected(self, metric: str, reason: str) -> None:
        self._rejected.add(
            1,
            (metric, reason),
            {semconv.ATTR_MESHMETRICS_METRIC: metric, semconv.ATTR_MESHMETRICS_REASON: reason},
        )

    def _count_folded(self, metric: str, key: str) -> None:
        self._overflows.add(
            1,
            (metric, key),
            {semconv.ATTR_MESHMETRICS_METRIC: metric, semconv.ATTR_MESHMETRICS_ATTRIBUTE: key},
        )

    def _request_counts(self) -> dict[tuple[str, str, str], float]:
        cells = self.cells[semconv.METRIC_MESH_LB_REQUESTS]
        counts: dict[tuple[str, str, str], float] = {}
        for key, value in cells.snapshot().items():
            attributes = cells.attributes_of(key)
            if attributes is not None and all(k in attributes for k in _WINDOW_KEYS):
                service, strategy, instance = (attributes[k] for k in _WINDOW_KEYS)
                counts[(service, strategy, instance)] = value
        return counts

    def _observe_imbalance(self, _options: CallbackOptions) -> Iterable[Observation]:
        ratios = (
            self.imbalance.imbalance()
            if self.imbalance is not None
            else self._snapshots.imbalance(self._request_counts())
        )
        for (service, strategy), ratio in ratios.items():
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


def runtime_for(
    provider: MeterProvider,
    settings: Settings | None = None,
    readers: Sequence[MetricReader] | None = None,
    user_views: Sequence[View] = (),
) -> Runtime:
    """Return the one runtime bound to ``provider``, creating it on first use."""
    with _lock:
        runtime = _by_provider.get(provider)
        if runtime is None:
            runtime = Runtime(provider, settings or Settings(), readers, user_views)
            _by_provider[provider] = runtime
        return runtime
