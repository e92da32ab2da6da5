"""What every facade shares: finding the runtime, validating, and recording one measurement.

A facade method builds its attribute tuple (in the registry's declared order)
and calls one of these helpers; the policy does the rest, cached per tuple.
Nothing raises into the caller except ``InvalidMeasurement`` in strict mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import MeterProvider

from meshmetrics._definitions import MetricDefinition
from meshmetrics._engine.runtime import Runtime, runtime_for, state
from meshmetrics._policy.core import InvalidMeasurement, Policy, Prepared
from meshmetrics._policy.errors import classify_error
from meshmetrics._policy.sanitize import to_label
from meshmetrics.semconv import ATTR_MESH_INSTANCE as ATTR_INSTANCE
from meshmetrics.semconv import ATTR_MESH_SERVICE as ATTR_SERVICE
from meshmetrics.semconv import METRICS

# Every metric with a per-instance series: what ends when an instance goes away.
INSTANCE_METRICS = tuple(name for name, d in METRICS.items() if ATTR_INSTANCE in d.attribute_keys)

Validator = Callable[[Policy, str, str, object], "float | int | None"]


_INF = float("inf")


def duration(policy: Policy, metric: str, field: str, value: object) -> float | None:
    """Validate a duration in seconds."""
    return policy.duration(metric, field, value)


def ratio(policy: Policy, metric: str, field: str, value: object) -> float | None:
    """Validate a ratio or score within [0, 1]."""
    return policy.ratio(metric, field, value)


def attempts(policy: Policy, metric: str, field: str, value: object) -> int | None:
    """Validate an attempt ordinal or count (integer >= 1)."""
    return policy.count(metric, field, value, minimum=1)


def count(policy: Policy, metric: str, field: str, value: object) -> int | None:
    """Validate a non-negative integer count."""
    return policy.count(metric, field, value, minimum=0)


def failure_type(error: object) -> str:
    """``error.type`` of a failure: its class, or ``_OTHER`` when nothing tells."""
    return error_type(error) or "_OTHER"


def error_type(error: object) -> str | None:
    """``error.type`` for an error, or None when there is no error."""
    if type(error) is str and error:  # already a class name or status: skip the classifier
        return error
    return None if error is None else classify_error(error)


class Facade:
    """Base of the public facades: binds to a provider and records safely."""

    __slots__ = ("_explicit",)

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        """Record to ``meter_provider``, or (default) to the one ``configure()`` installed.

        Before ``configure()``, and after ``shutdown()``, every method is a cheap no-op.
        """
        self._explicit = runtime_for(meter_provider) if meter_provider is not None else None

    def _runtime(self) -> Runtime | None:
        return self._explicit or state.current

    def _fail(self, runtime: Runtime, metric: str, error: Exception) -> None:
        if isinstance(error, InvalidMeasurement) or runtime.policy.strict:
            raise error
        runtime.policy.internal_error(metric, error)

    def _prepared(
        self, runtime: Runtime, metric: MetricDefinition, values: tuple[object, ...]
    ) -> Prepared | None:
        """The full path: validate, fold (counting folds), and attach the metric's instrument."""
        prepared = runtime.policy.prepare(metric, values)
        if prepared is not None and prepared.instrument is None:
            prepared.instrument = runtime.instruments[metric.name]
        return prepared

    def _add(self, metric: MetricDefinition, amount: int, values: tuple[object, ...]) -> None:
        runtime = self._explicit or state.current  # inlined _runtime(): this is the hot path
        if runtime is None:
            return
        try:
            try:  # the common case: a cached, unfolded attribute set whose instrument is known
                prepared = runtime.policy.cache[metric.name][values]
                if prepared.instrument is None or prepared.folded:
                    raise LookupError  # noqa: TRY301 - take the full path
            except (LookupError, TypeError):  # not cached yet, unhashable, or folded
                full = self._prepared(runtime, metric, values)
                if full is None:
                    return
                prepared = full
            prepared.instrument.add(amount, prepared.key, prepared.attributes)
        except Exception as error:
            self._fail(runtime, metric.name, error)

    def _measure(
        self,
        metric: MetricDefinition,
        validator: Validator,
        field: str,
        value: object,
        values: tuple[object, ...],
    ) -> None:
        """Validate ``value`` and record it on a histogram (``record``) or gauge (``set``)."""
        runtime = self._explicit or state.current  # inlined _runtime(): this is the hot path
        if runtime is None:
            return
        try:
            # the common case, a finite non-negative float duration, skips the validator call
            if validator is duration and type(value) is float and 0.0 <= value < _INF:
                checked: float | int | None = value
            else:
                checked = validator(runtime.policy, metric.name, field, value)
            if checked is None:
                return
            try:  # the common case, as in _add
                prepared = runtime.policy.cache[metric.name][values]
                if prepared.instrument is None or prepared.folded:
                    raise LookupError  # noqa: TRY301 - take the full path
            except (LookupError, TypeError):
                full = self._prepared(runtime, metric, values)
                if full is None:
                    return
                prepared = full
            if metric.instrument == "histogram":
                prepared.instrument.record(checked, prepared.key, prepared.attributes)
            else:
                prepared.instrument.set(checked, prepared.key, prepared.attributes)
        except Exception as error:
            self._fail(runtime, metric.name, error)

    def _remove_instance(self, service: object, instance: object) -> None:
        """Stop exporting every series of ``instance`` of ``service`` (it is gone)."""
        runtime = self._runtime()
        if runtime is None:
            return
        try:
            length = runtime.policy.max_label_length
            where = {ATTR_SERVICE: to_label(service, length), ATTR_INSTANCE: to_label(instance, length)}
            runtime.remove_series(INSTANCE_METRICS, where)
        except Exception as error:
            self._fail(runtime, "remove_instance", error)

    def _one_hot(
        self,
        metric: MetricDefinition,
        state_field: str,
        current: object,
        allowed: Iterable[str],
        values: Callable[[object], tuple[object, ...]],
    ) -> None:
        """Set a one-hot state gauge: 1 for ``current``, 0 for every other allowed state."""
        runtime = self._runtime()
        if runtime is None:
            return
        try:
            chosen = runtime.policy.prepare(metric, values(_state_name(current)))
            if chosen is None:
                return
            instrument = runtime.instruments[metric.name]
            for name in allowed:
                prepared = runtime.policy.prepare(metric, values(name))
                if prepared is not None:
                    instrument.set(
                        1 if name == chosen.attributes[state_field] else 0, prepared.key, prepared.attributes
                    )
        except Exception as error:
            self._fail(runtime, metric.name, error)


def _state_name(state: object) -> object:
    value = getattr(state, "value", state)  # enum members of users' own state types
    return value.lower() if isinstance(value, str) else value
