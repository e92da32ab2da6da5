"""What every facade shares: finding the runtime, validating, and recording one measurement.

A facade method builds its attribute tuple (in the registry's declared order)
and calls one of these helpers: the metric's table finds the series with one
dict lookup (the policy and the budgets run once per distinct tuple), and the
series records. Everything a helper does with the caller's values runs inside
one guard: nothing raises into the caller except ``InvalidMeasurement`` in
strict mode, and a value that cannot even be classified (its ``__str__`` or
``__bool__`` raises) is rejected like any other invalid value.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from opentelemetry.metrics import MeterProvider

from meshmetrics._definitions import OTHER, MetricDefinition
from meshmetrics._engine.runtime import Runtime, runtime_for, state
from meshmetrics._policy.core import InvalidMeasurement, Policy, Unclassifiable
from meshmetrics._policy.errors import classify_error
from meshmetrics._policy.sanitize import to_label
from meshmetrics._setup.provider import ensure_child_runtime
from meshmetrics._setup.settings import Settings
from meshmetrics.semconv import ATTR_MESH_INSTANCE as ATTR_INSTANCE
from meshmetrics.semconv import ATTR_MESH_SERVICE as ATTR_SERVICE
from meshmetrics.semconv import METRICS

if TYPE_CHECKING:
    from typing_extensions import Self  # a dependency of opentelemetry-api

    from meshmetrics._engine.series import Series, Table

# Every metric with a per-instance series: what ends when an instance goes away.
INSTANCE_METRICS = tuple(name for name, d in METRICS.items() if ATTR_INSTANCE in d.attribute_keys)

Validator = Callable[[Policy, str, str, object], "float | int | None"]
_F = TypeVar("_F", bound=Callable[..., Any])


_INF = float("inf")
FLUSH_INTERVAL_S = 1.0
"""How often, at most, a tracker adds the time spent so far (in a breaker state, ejected) on its
own, when only calls happen: bounds how stale those counters of seconds get."""


def duration(policy: Policy, metric: str, field: str, value: object) -> float | None:
    """Validate a duration in seconds."""
    return policy.duration(metric, field, value)


def ratio(policy: Policy, metric: str, field: str, value: object) -> float | None:
    """Validate a ratio or score within [0, 1]."""
    return policy.ratio(metric, field, value)


def attempts(policy: Policy, metric: str, field: str, value: object) -> int | None:
    """Validate an attempt ordinal or count (integer >= 1)."""
    return policy.count(metric, field, value, minimum=1)


def real(policy: Policy, metric: str, field: str, value: object) -> float | None:
    """Validate a finite real number."""
    return policy.finite(metric, field, value)


def non_negative(policy: Policy, metric: str, field: str, value: object) -> float | None:
    """Validate a finite real number >= 0 (what a counter adds)."""
    return policy.finite(metric, field, value, minimum=0.0)


def count(policy: Policy, metric: str, field: str, value: object) -> int | None:
    """Validate a non-negative integer count."""
    return policy.count(metric, field, value, minimum=0)


def failure_type(error: object) -> str | Unclassifiable:
    """``error.type`` of a failure: its class, or ``_OTHER`` when nothing tells."""
    return error_type(error) or OTHER


def error_type(error: object) -> str | Unclassifiable | None:
    """``error.type`` for an error, None when there is no error (the attribute is then absent)."""
    if type(error) is str:  # already a class name or status: skip the classifier; "" is no error
        return error or None
    if error is None:
        return None
    try:
        return classify_error(error)
    except Exception as cause:
        return Unclassifiable(cause)


def outcome(success: object, yes: str = "success", no: str = "failure") -> str | Unclassifiable:
    """``yes`` if ``success`` is true, else ``no``; a value whose truth raises is rejected later."""
    if success is True:
        return yes
    if success is False:
        return no
    try:
        return yes if success else no
    except Exception as cause:
        return Unclassifiable(cause)


def state_name(state: object) -> object:
    """A state's name: an enum member's value, lower-cased; a hostile value is rejected later."""
    try:
        value = getattr(state, "value", state)  # enum members of users' own state types
        return str.lower(value) if isinstance(value, str) else value
    except Exception as cause:
        return Unclassifiable(cause)


class Facade:
    """Base of the public facades: binds to a provider and records safely."""

    __slots__ = ("_explicit",)

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        """Record to ``meter_provider``, or (default) to the one ``configure()`` installed.

        Before ``configure()``, and after ``shutdown()``, every method is a cheap no-op.
        """
        self._explicit = runtime_for(meter_provider, Settings()) if meter_provider is not None else None

    def _runtime(self) -> Runtime | None:
        return self._explicit or state.current or ensure_child_runtime()

    def _fail(self, runtime: Runtime, metric: str, error: Exception) -> None:
        """The guard's one exit: strict mode raises ``InvalidMeasurement``, production counts."""
        if isinstance(error, InvalidMeasurement):
            raise error
        if runtime.policy.strict:
            rule = "could not be recorded"
            raise InvalidMeasurement(metric, "value", error, rule, "invalid_value") from error
        runtime.policy.internal_error(metric, error)

    def _add(self, metric: MetricDefinition, amount: float, values: tuple[object, ...]) -> None:
        # inlined _runtime(): this is the hot path; a forked child's first measurement builds its provider
        runtime = self._explicit or state.current or ensure_child_runtime()
        if runtime is None:
            return
        try:
            try:
                table = runtime.by_key[metric.key]
            except KeyError:  # a plugin's metric that configure() was not given: adopted on first use
                table = self._adopt(runtime, metric)
            series: Series | None
            try:  # Table.series_of, inlined: counters are the hottest calls
                series = table.cache[values]
            except Exception:  # not cached yet, unhashable or hostile: the policy's way
                series = table.find(values)
            if series is not None:
                series.add(amount)
        except Exception as error:
            self._fail(runtime, metric.name, error)

    def _add_checked(
        self, metric: MetricDefinition, field: str, amount: object, values: tuple[object, ...]
    ) -> None:
        """``_add`` for an amount that is not a plain int in range: validated first (plugins' counters)."""
        checked = self._check(metric, non_negative if metric.instrument == "counter" else real, field, amount)
        if checked is not None:
            self._add(metric, checked, values)

    def _add_seconds(self, metric: MetricDefinition, seconds: object, values: tuple[object, ...]) -> None:
        """Add ``seconds`` (validated as a duration) to a counter of seconds; zero adds no series."""
        checked = self._check(metric, duration, "seconds", seconds)
        if checked:
            self._add(metric, checked, values)

    def _adopt(self, runtime: Runtime, metric: MetricDefinition) -> Table:  # noqa: ARG002 - a plugin uses it
        """The table of a metric the runtime does not know: only a plugin's facade brings one."""
        raise KeyError(metric.name)

    def _measure(
        self,
        metric: MetricDefinition,
        validator: Validator,
        field: str,
        value: object,
        values: tuple[object, ...],
    ) -> None:
        """Validate ``value`` and record it on a histogram (``record``) or gauge (``set``)."""
        runtime = self._explicit or state.current or ensure_child_runtime()  # as in _add
        if runtime is None:
            return
        try:
            # the common case, a finite non-negative float duration, skips the validator call
            if validator is duration and type(value) is float and 0.0 <= value < _INF:
                checked: float = value
            else:
                validated = validator(runtime.policy, metric.name, field, value)
                if validated is None:
                    return
                checked = validated
            try:
                table = runtime.by_key[metric.key]
            except KeyError:  # as in _add
                table = self._adopt(runtime, metric)
            series: Series | None
            try:  # Table.series_of, inlined as in _add
                series = table.cache[values]
            except Exception:  # not cached yet, unhashable or hostile: the policy's way
                series = table.find(values)
            if series is None:
                return
            if metric.instrument == "histogram":
                series.record(checked)
            else:
                series.set(checked)
        except Exception as error:
            self._fail(runtime, metric.name, error)

    def _check(self, metric: MetricDefinition, validator: Validator, field: str, value: object) -> Any:
        """Validate a value that shapes attributes rather than being recorded; None if rejected."""
        runtime = self._runtime()
        if runtime is None:
            return None
        try:
            return validator(runtime.policy, metric.name, field, value)
        except Exception as error:
            self._fail(runtime, metric.name, error)
            return None

    def _remove_instance(self, service: object, instance: object) -> None:
        """End every series of ``instance`` of ``service`` (it is gone)."""
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
            table = runtime.tables[metric.name]
            chosen = table.series_of(values(state_name(current)))
            if chosen is None:
                return
            for name in allowed:
                series = table.series_of(values(name))
                if series is not None:
                    series.set(1 if series.attributes[state_field] == chosen.attributes[state_field] else 0)
        except Exception as error:
            self._fail(runtime, metric.name, error)


class Tracked:
    """Something timed around a block: a context manager (sync and async) and a decorator.

    Subclasses say what happens at the start (``_begin``) and the end
    (``_end``, given the exception the block raised, if any), and how to make
    a fresh one with the same arguments for each call of a decorated function.
    The exception is never swallowed.
    """

    __slots__ = ()

    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self, error: BaseException | None) -> None:
        raise NotImplementedError

    def _fresh(self) -> Self:
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start."""
        self._begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Record; never swallows the exception."""
        self._end(exc)

    async def __aenter__(self) -> Self:
        """Start."""
        self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Record; never swallows the exception."""
        self._end(exc)

    def __call__(self, function: _F) -> _F:
        """Decorate a sync or async function so that every call is tracked on its own."""
        fresh = self._fresh
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with fresh():
                    return await function(*args, **kwargs)

            return cast("_F", async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return function(*args, **kwargs)

        return cast("_F", wrapper)
