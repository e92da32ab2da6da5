"""The binding between facades and one MeterProvider: a table per metric, the policy, self-telemetry.

Each registry metric is a :class:`~meshmetrics._engine.series.Table`. Its
series record in meshmetrics' own cells (the fast path, for providers
meshmetrics built) or on a plain SDK instrument (providers passed in by the
user, or an instrument a user View targets); the facades cannot tell the
difference. On the fast path, counters and histograms keep exemplars as the
exemplar filter says (the ``exemplar_filter`` setting),
and histograms keep base-2 exponential buckets too when a reader asks for
them (``histogram_kinds``, or the reader's preferred aggregation).
"""

from __future__ import annotations

import fnmatch
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from meshmetrics import semconv
from meshmetrics._definitions import Conventions, ConventionsConflictError, MetricDefinition, combine
from meshmetrics._engine import merge, series
from meshmetrics._engine.window import SnapshotWindow
from meshmetrics._log import RateLimitedLog
from meshmetrics._policy.core import Policy
from meshmetrics._policy.profiles import kept_keys
from meshmetrics._version import VERSION

if TYPE_CHECKING:
    from meshmetrics._setup.settings import Settings

METER_NAME = "meshmetrics"
REMOVALS_KEPT = 1000
METER_VERSION = VERSION
_OBSERVABLE = frozenset({semconv.METRIC_MESH_LB_LOAD_IMBALANCE})
_SELF_METRICS = frozenset(name for name in semconv.METRICS if name.startswith("meshmetrics."))
_WINDOW_KEYS = (semconv.ATTR_MESH_SERVICE, semconv.ATTR_MESH_LB_STRATEGY, semconv.ATTR_MESH_INSTANCE)


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
        histogram_kinds: Mapping[MetricReader, merge.HistogramKind] | None = None,
    ) -> None:
        """Create every registry metric, on the fast path when ``readers`` (of ``provider``) are given.

        ``histogram_kinds`` chooses explicit or exponential histograms per
        reader; a reader not in it gets what its preferred aggregation asks.
        """
        self.provider = provider
        self.settings = settings
        self.meter: Meter = provider.get_meter(METER_NAME, METER_VERSION)
        self._snapshots = SnapshotWindow()
        self._removal_log: deque[tuple[float, list[str], dict[str, str]]] = deque(maxlen=REMOVALS_KEPT)
        self._log = RateLimitedLog()
        self.conventions = combine((semconv.CONVENTIONS, *settings.conventions))
        self.merge_rules: dict[str, str] = {}
        """Each gauge's multiprocess merge rule, as its registry declares it."""
        self.policy = Policy(
            strict=settings.strict,
            max_label_length=settings.max_label_length,
            on_rejected=self._count_rejected,
            on_folded=self._count_folded,
            attributes=dict(self.conventions.attributes),
            overrides=settings.attribute_policies,
            normalizers=settings.normalizers,
        )
        self._fast = readers is not None and settings.fast_path
        self._user_views = tuple(user_views)
        kinds = {
            reader: (histogram_kinds or {}).get(reader) or merge.reader_histogram_kind(reader)
            for reader in readers or ()
        }
        self.exemplar_filter = settings.exemplar_filter
        self._exponential = any(kind != "explicit" for kind in kinds.values())
        self._adopt_lock = threading.Lock()
        self.tables: dict[str, series.Table] = {}
        self.by_key: dict[str, series.Table] = {}
        """The tables by :attr:`MetricDefinition.key`: what the facades look up."""
        self._refused: dict[int, Exception] = {}
        self._fast_tables: list[series.Table] = []
        for definition in self.conventions.metrics.values():
            self._add_table(definition)
        imbalance = semconv.METRICS[semconv.METRIC_MESH_LB_LOAD_IMBALANCE]
        self.meter.create_observable_gauge(
            imbalance.name,
            callbacks=[self._observe_imbalance],
            unit=imbalance.unit,
            description=imbalance.brief,
        )
        if settings.series_ttl_s > 0 and len(self._fast_tables) < len(self.tables):
            self._log.warning(
                ("series_ttl", "sdk_path"),
                "meshmetrics_series_ttl_not_applied",
                metrics=sorted(name for name, t in self.tables.items() if t.sdk_instrument is not None),
                reason="recorded by the OpenTelemetry SDK, which keeps every series it has seen",
            )
        if self._fast and readers:
            resource = getattr(getattr(provider, "_sdk_config", None), "resource", None) or Resource({})
            scope = InstrumentationScope(METER_NAME, METER_VERSION)
            for reader in readers:
                merge.attach(
                    reader,
                    lambda: self._fast_tables,
                    resource,
                    scope,
                    self._count_unexportable,
                    histogram_kind=kinds[reader],
                )
        self._overflows = self.tables[semconv.METRIC_MESHMETRICS_ATTRIBUTE_OVERFLOWS]
        self._rejected = self.tables[semconv.METRIC_MESHMETRICS_MEASUREMENTS_REJECTED]

    def _add_table(self, definition: MetricDefinition) -> None:
        """Create the table of one metric: on the fast path unless a user View targets it."""
        name = definition.name
        kept = kept_keys(definition, self.conventions.attributes, self.settings.detail)
        self.policy.keep(name, frozenset(kept) - self.settings.dropped())
        if definition.instrument == "gauge":
            self.merge_rules[name] = definition.multiprocess or "last"
        if name in _OBSERVABLE:
            return  # its callback observes it
        on_fast_path = self._fast and self._fast_path_allowed(definition, self._user_views)
        table = series.Table(
            definition,
            self.policy,
            sdk_instrument=None if on_fast_path else self._create(definition),
            series_ttl_s=self.settings.series_ttl_s,
            count_folds=name not in _SELF_METRICS,
            exemplar_filter=self.exemplar_filter,
            exponential=self._exponential,
        )
        table.on_first_end = self._cannot_end
        self.tables[name] = table
        self.by_key[definition.key] = table
        if on_fast_path:
            self._fast_tables = [*self._fast_tables, table]  # a new list: a collection may be iterating

    def adopt(self, conventions: Conventions) -> None:
        """Add a plugin's metrics that ``configure()`` was not given (its generated facade's first call).

        Raises :class:`~meshmetrics._definitions.ConventionsConflictError` when
        one of its names is already defined differently (a stale generated module).
        """
        refused = self._refused.get(id(conventions))
        if refused is not None:
            raise refused
        with self._adopt_lock:
            try:
                combined = combine((self.conventions, conventions))
            except ConventionsConflictError as conflict:
                self._refused[id(conventions)] = conflict  # the module stays in memory: its id too
                raise
            self.policy.attributes.update(combined.attributes)
            self.conventions = combined
            for name, definition in conventions.metrics.items():
                if name not in self.tables:
                    self._add_table(definition)

    def _fast_path_allowed(self, definition: MetricDefinition, user_views: Sequence[View]) -> bool:
        # a user View wants the SDK's aggregation for it: keep the SDK path
        return not any(_targeted_by(view, definition.name) for view in user_views)

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

    def _cannot_end(self, metric: str) -> None:
        """A series of an SDK-path metric was asked to end: say once that it cannot."""
        self._log.warning(
            (metric, "cannot_end"),
            "meshmetrics_series_cannot_end",
            metric=metric,
            reason="recorded by the OpenTelemetry SDK (a user View, meter_provider= or fast_path=False); "
            "the SDK keeps every series it has seen",
            fix="let meshmetrics aggregate this metric (the fast path) for remove_instance and series_ttl",
        )

    def remove_series(self, metrics: Iterable[str], attributes: Mapping[str, str]) -> int:
        """End the series of ``metrics`` whose attributes include ``attributes``."""
        metrics = tuple(metrics)
        self._removal_log.append((time.time(), list(metrics), dict(attributes)))
        removed = 0
        for name in metrics:
            table = self.tables.get(name)
            if table is not None:
                removed += table.remove(lambda attrs: all(attrs.get(k) == v for k, v in attributes.items()))
        return removed

    def removals(self) -> list[tuple[float, list[str], dict[str, str]]]:
        """The latest series removals (time, metrics, attributes), for the multiprocess accumulator."""
        return list(self._removal_log)

    def count_unreadable_file(self) -> None:
        """A multiprocess file that could not be read: counted in the self-metrics, never failing a scrape."""
        self._count_rejected("meshmetrics.multiprocess", "unreadable_worker_file")

    def _self_metric(self, table: series.Table, values: tuple[str, str]) -> None:
        found = table.series_of(values)
        if found is not None:
            found.add(1)

    def _count_rejected(self, metric: str, reason: str) -> None:
        self._self_metric(self._rejected, (metric, reason))

    def _count_folded(self, metric: str, key: str) -> None:
        self._self_metric(self._overflows, (metric, key))

    def _count_unexportable(self, metric: str) -> None:
        self._count_rejected(metric, "unexportable_value")
        self._log.warning(
            (metric, "unexportable"),
            "meshmetrics_point_dropped",
            metric=metric,
            reason="a value no exporter can carry (not finite, or beyond an int64)",
        )

    def _request_counts(self) -> dict[tuple[str, str, str], float]:
        counts: dict[tuple[str, str, str], float] = {}
        for attributes, value in self.tables[semconv.METRIC_MESH_LB_REQUESTS].totals():
            if all(k in attributes for k in _WINDOW_KEYS):
                service, strategy, instance = (attributes[k] for k in _WINDOW_KEYS)
                counts[(service, strategy, instance)] = value
        return counts

    def _observe_imbalance(self, _options: CallbackOptions) -> Iterable[Observation]:
        for (service, strategy), ratio in self._snapshots.imbalance(self._request_counts()).items():
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
    series.reset_after_fork()


def runtime_for(
    provider: MeterProvider,
    settings: Settings,
    readers: Sequence[MetricReader] | None = None,
    user_views: Sequence[View] = (),
    histogram_kinds: Mapping[MetricReader, merge.HistogramKind] | None = None,
) -> Runtime:
    """Return the one runtime bound to ``provider``, creating it on first use."""
    with _lock:
        runtime = _by_provider.get(provider)
        if runtime is None:
            runtime = Runtime(provider, settings, readers, user_views, histogram_kinds)
            _by_provider[provider] = runtime
        return runtime
