"""Validation and cardinality policy: what a facade asks before anything is recorded.

Everything here is decided per distinct label tuple and cached, so the hot
path does one dict lookup. Invalid input is dropped and counted (production)
or raises ``ValueError`` naming the field, value and rule (strict).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from meshmetrics import semconv
from meshmetrics._definitions import OTHER, AttributeDefinition, MetricDefinition
from meshmetrics._log import RateLimitedLog
from meshmetrics._policy.sanitize import NotALabelError, to_label

MAX_COUNT = 2**53
"""The largest integer a count or value may be: exact in a double (Prometheus) and an int64 (OTLP)."""


class InvalidMeasurement(ValueError):  # noqa: N818 - it *is* a ValueError, named for what it means
    """A measurement broke a rule. Raised to the caller only in strict mode."""

    def __init__(self, metric: str, field: str, value: object, rule: str, reason: str) -> None:
        """Describe the broken rule: which metric, which field, the value, the rule."""
        shown = _shown(value)
        super().__init__(f"{metric}: {field}={shown} is invalid: {rule}")
        self.metric = metric
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class AttributePolicy:
    """How an attribute's values are bounded; see :func:`bounded`, :func:`hashed`, :func:`drop`."""

    kind: str
    limit: int = 0


def bounded(limit: int) -> AttributePolicy:
    """Keep the first ``limit`` distinct values per metric; later ones fold into ``_OTHER``."""
    if limit < 1:
        raise ValueError(f"bounded({limit!r}): the limit must be at least 1")
    return AttributePolicy("bounded", limit)


def hashed(buckets: int) -> AttributePolicy:
    """Map values stably into ``buckets`` values (``h0`` ... ``h{buckets-1}``): spread without identity."""
    if buckets < 1:
        raise ValueError(f"hashed({buckets!r}): at least one bucket")
    return AttributePolicy("hashed", buckets)


def drop() -> AttributePolicy:
    """Remove the attribute from every metric (it never reaches an exporter)."""
    return AttributePolicy("drop")


def unbounded() -> AttributePolicy:
    """No bound at all (the per-metric series limit still applies)."""
    return AttributePolicy("unbounded")


class Unclassifiable:
    """A caller's value that could not even be classified (its ``__str__``, ``__bool__`` ... raised).

    Facades put it where the label would go; the policy rejects it, with the
    original exception as the cause in strict mode.
    """

    __slots__ = ("cause",)

    def __init__(self, cause: BaseException) -> None:
        """Remember why classification failed."""
        self.cause = cause

    def __repr__(self) -> str:
        """Name the failure, not the value (which may not print)."""
        return f"<unclassifiable: {type(self.cause).__name__}>"


@dataclass(slots=True, frozen=True)
class Labels:
    """A validated, sanitised attribute set, before the per-metric budgets apply.

    ``values`` are the exported label values of ``keys`` (normalised, enum values
    folded, hashed values mapped); ``bounded`` lists the position and limit of
    every attribute whose distinct values are budgeted; ``folded`` the keys an
    enum folded into ``_OTHER``; ``raw_cacheable`` whether the raw tuple that
    produced it may key the hot-path cache (short plain strings only, so the
    cache costs what the exported labels cost and ``True``, ``1`` and ``1.0``
    never share an entry).
    """

    keys: tuple[str, ...]
    values: tuple[str, ...]
    folded: tuple[str, ...]
    bounded: tuple[tuple[int, int], ...]
    raw_cacheable: bool


class Policy:
    """Validates measurements and turns raw attribute tuples into :class:`Labels`."""

    def __init__(
        self,
        *,
        strict: bool,
        max_label_length: int,
        on_rejected: Callable[[str, str], None],
        on_folded: Callable[[str, str], None],
        attributes: dict[str, AttributeDefinition] | None = None,
        overrides: Mapping[str, AttributePolicy] | None = None,
        normalizers: Mapping[str, Callable[[str], str]] | None = None,
    ) -> None:
        """Build a policy; ``on_rejected(metric, reason)`` and ``on_folded(metric, key)`` count.

        ``attributes`` holds the definition of every attribute a metric may
        use (meshmetrics' own, by default); :meth:`keep` says which keys of a
        metric its detail profile keeps.
        """
        self.strict = strict
        self.attributes = dict(semconv.ATTRIBUTES) if attributes is None else attributes
        self._kept: dict[str, frozenset[str]] = {}
        self._overrides = dict(overrides or {})
        self._normalizers = dict(normalizers or {})
        self.max_label_length = max_label_length
        self._on_rejected = on_rejected
        self._on_folded = on_folded
        self._log = RateLimitedLog()

    def keep(self, metric: str, keys: frozenset[str]) -> None:
        """Keep only ``keys`` of ``metric``'s attributes (its detail profile, less what is dropped)."""
        self._kept[metric] = keys

    # Rejection.
    def reject(
        self,
        metric: str,
        field: str,
        value: object,
        rule: str,
        reason: str,
        *,
        cause: BaseException | None = None,
    ) -> None:
        """Drop a measurement: raise in strict mode, else count and log (rate-limited)."""
        if self.strict:
            raise InvalidMeasurement(metric, field, value, rule, reason) from cause
        self._on_rejected(metric, reason)
        self._log.warning(
            (metric, reason, field),
            "meshmetrics_measurement_rejected",
            metric=metric,
            field=field,
            reason=reason,
            rule=rule,
        )

    def internal_error(self, metric: str, error: BaseException) -> None:
        """Count and log a failure of meshmetrics itself; never raise it into the caller."""
        self._on_rejected(metric, "internal_error")
        self._log.warning(
            (metric, "internal_error"),
            "meshmetrics_internal_error",
            metric=metric,
            error=type(error).__name__,
        )

    def folded(self, metric: str, key: str, limit: int) -> None:
        """Count a value folded into ``_OTHER``; a fold by a budget (``limit`` > 0) is also logged."""
        self._on_folded(metric, key)
        if limit <= 0:
            return  # an enum value outside its set: counted, and the registry documents it
        self._log.warning(
            (metric, key, "overflow"),
            "meshmetrics_attribute_budget_exceeded",
            metric=metric,
            attribute=key,
            limit=limit,
            folded_into=OTHER,
        )

    # Measured values.
    def duration(self, metric: str, field: str, value: object) -> float | None:
        """A duration in seconds: a finite real number >= 0."""
        number = self._real(metric, field, value)
        if number is None:
            return None
        if not math.isfinite(number) or number < 0:
            self.reject(metric, field, value, "must be finite and >= 0 seconds", "invalid_value")
            return None
        return number

    def ratio(self, metric: str, field: str, value: object) -> float | None:
        """A ratio or score: a finite real number within [0, 1]."""
        number = self._real(metric, field, value)
        if number is None:
            return None
        if not 0.0 <= number <= 1.0:  # NaN fails both comparisons
            self.reject(metric, field, value, "must be within [0, 1]", "invalid_value")
            return None
        return number

    def count(self, metric: str, field: str, value: object, minimum: int = 0) -> int | None:
        """An integer count within [``minimum``, 2**53] (exact in a double and an int64; not a bool)."""
        if type(value) is not int or not minimum <= value <= MAX_COUNT:
            rule = f"must be an integer within [{minimum}, 2**53]"
            self.reject(metric, field, value, rule, "invalid_value")
            return None
        return value

    def finite(self, metric: str, field: str, value: object, minimum: float = -math.inf) -> float | None:
        """A finite real number >= ``minimum``."""
        number = self._real(metric, field, value)
        if number is None:
            return None
        if not math.isfinite(number) or number < minimum:
            rule = "must be finite" + (f" and >= {minimum:g}" if minimum > -math.inf else "")
            self.reject(metric, field, value, rule, "invalid_value")
            return None
        return number

    def _real(self, metric: str, field: str, value: object) -> float | None:
        if type(value) is float:
            return value
        rule = "must be a real number (a float, or an int within 2**53)"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.reject(metric, field, value, rule, "invalid_value")
            return None
        if isinstance(value, int) and not -MAX_COUNT <= value <= MAX_COUNT:
            self.reject(metric, field, value, rule, "invalid_value")
            return None
        try:
            return float(value)  # a numpy float is a float subclass; its __float__ may be anything
        except Exception as error:
            self.reject(metric, field, value, rule, "invalid_value", cause=error)
            return None

    # Attribute sets.
    def labels(self, metric: MetricDefinition, values: tuple[object, ...]) -> Labels | None:
        """Validate, sanitise and fold ``values`` (in the metric's declared order); None if rejected.

        ``None`` values of attributes that are not required are left out, and so
        are attributes the detail profile drops. Budgets (``bounded``) are applied
        by the engine, which knows which values live series hold.
        """
        keys: list[str] = []
        labels: list[str] = []
        folded: list[str] = []
        bounded: list[tuple[int, int]] = []
        cacheable = True
        kept = self._kept.get(metric.name)
        for use, raw in zip(metric.attributes, values, strict=True):
            if kept is not None and use.key not in kept:
                continue
            if raw is None:
                if use.requirement_level == "required":
                    self.reject(metric.name, use.key, raw, "is required", "invalid_attribute")
                    return None
                continue
            if type(raw) is not str or len(raw) > self.max_label_length:
                cacheable = False
            label = self._label(metric.name, use.key, raw)
            definition = self.attributes[use.key]
            kind, limit = self._policy_of(definition)
            if label is not None and kind == "enum":
                label = self._enum(metric.name, definition, label, folded)
            if label is None:
                return None
            if kind == "bounded" and label != OTHER:
                bounded.append((len(labels), limit))
            elif kind == "hashed":
                label = f"h{zlib.crc32(label.encode()) % limit}"
            keys.append(use.key)
            labels.append(label)
        return Labels(tuple(keys), tuple(labels), tuple(folded), tuple(bounded), cacheable and not folded)

    def _label(self, metric: str, key: str, raw: object) -> str | None:
        """``raw`` as a safe, normalised label value; None (after rejecting it) if it cannot be one."""
        if type(raw) is Unclassifiable:
            self.reject(metric, key, raw, "could not be classified", "invalid_attribute", cause=raw.cause)
            return None
        try:
            label = to_label(raw, self.max_label_length)
        except NotALabelError as error:
            rule = "must be a string, bytes, int or enum"
            self.reject(metric, key, raw, rule, "invalid_attribute", cause=error)
            return None
        normalise = self._normalizers.get(key)
        return label if normalise is None else to_label(normalise(label), self.max_label_length)

    def _enum(
        self, metric: str, definition: AttributeDefinition, label: str, folded: list[str]
    ) -> str | None:
        """An enum value, ``_OTHER`` (counted as folded) if outside the set and allowed, else rejected."""
        if label in definition.allowed_values:
            return label
        if OTHER in definition.allowed_values:
            folded.append(definition.key)
            return OTHER
        rule = f"must be one of {', '.join(definition.allowed_values)}"
        self.reject(metric, definition.key, label, rule, "invalid_attribute")
        return None

    def _policy_of(self, definition: AttributeDefinition) -> tuple[str, int]:
        if definition.policy == "enum":
            return "enum", 0
        override = self._overrides.get(definition.key)
        if override is not None:
            return override.kind, override.limit
        return definition.policy, definition.limit


def _shown(value: object) -> str:
    """What a rejection may show of ``value``: its repr cut short, computed safely."""
    try:
        shown = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."  # noqa: PLR2004
