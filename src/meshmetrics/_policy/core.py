"""Validation and cardinality policy: what a facade asks before anything is recorded.

Everything here is decided per distinct label tuple and cached, so the hot
path does one dict lookup. Invalid input is dropped and counted (production)
or raises ``ValueError`` naming the field, value and rule (strict).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshmetrics import semconv
from meshmetrics._definitions import AttributeDefinition, MetricDefinition
from meshmetrics._log import RateLimitedLog
from meshmetrics._policy.sanitize import NotALabelError, to_label

OTHER = "_OTHER"
_CACHE_LIMIT = 8192


class InvalidMeasurement(ValueError):  # noqa: N818 - it *is* a ValueError, named for what it means
    """A measurement broke a rule. Raised to the caller only in strict mode."""

    def __init__(self, metric: str, field: str, value: object, rule: str, reason: str) -> None:
        """Describe the broken rule: which metric, which field, the value, the rule."""
        shown = repr(value)
        if len(shown) > 80:  # noqa: PLR2004 - keep messages readable
            shown = shown[:77] + "..."
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


@dataclass(slots=True)
class Prepared:
    """A validated, sanitised, folded attribute set, and its hashable key."""

    attributes: dict[str, str]
    folded: tuple[str, ...]
    key: tuple[str, ...]
    # the runtime's instrument for the metric, cached by the facade on first use
    # (a Prepared belongs to one runtime's policy, so it is always the same one)
    instrument: Any = None


class Policy:
    """Validates measurements and prepares attribute sets for one configured runtime."""

    def __init__(
        self,
        *,
        strict: bool,
        max_label_length: int,
        on_rejected: Callable[[str, str], None],
        on_folded: Callable[[str, str], None],
        kept: Mapping[str, frozenset[str]] | None = None,
        overrides: Mapping[str, AttributePolicy] | None = None,
        normalizers: Mapping[str, Callable[[str], str]] | None = None,
    ) -> None:
        """Build a policy; ``on_rejected(metric, reason)`` and ``on_folded(metric, key)`` count.

        ``kept`` maps a metric to the attribute keys its detail profile keeps.
        """
        self.strict = strict
        self._kept = kept or {}
        self._overrides = dict(overrides or {})
        self._normalizers = dict(normalizers or {})
        self.max_label_length = max_label_length
        self._on_rejected = on_rejected
        self._on_folded = on_folded
        # metric name -> raw value tuple -> Prepared; facades read it directly on the hot path
        self.cache: dict[str, dict[tuple[object, ...], Prepared]] = {}
        self._seen: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        self._log = RateLimitedLog()

    # Rejection.
    def reject(self, metric: str, field: str, value: object, rule: str, reason: str) -> None:
        """Drop a measurement: raise in strict mode, else count and log (rate-limited)."""
        error = InvalidMeasurement(metric, field, value, rule, reason)
        if self.strict:
            raise error
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
        """An integer count >= ``minimum`` (bools are not counts)."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.reject(metric, field, value, f"must be an integer >= {minimum}", "invalid_value")
            return None
        if value < minimum:
            self.reject(metric, field, value, f"must be an integer >= {minimum}", "invalid_value")
            return None
        return value

    def _real(self, metric: str, field: str, value: object) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.reject(metric, field, value, "must be a real number", "invalid_value")
            return None
        try:
            return float(value)
        except OverflowError:
            self.reject(metric, field, value, "is too large", "invalid_value")
            return None

    # Attribute sets.
    def prepare(self, metric: MetricDefinition, values: tuple[object, ...]) -> Prepared | None:
        """Validate and fold ``values`` (in the metric's declared order); None if rejected.

        ``None`` values of attributes that are not required are left out, and so
        are attributes the detail profile drops. Cached per distinct tuple: the
        hot path is one dict lookup.
        """
        prepared: Prepared | None
        try:
            prepared = self.cache[metric.name][values]
        except (KeyError, TypeError):
            prepared = self._prepare_and_cache(metric, values)
            if prepared is None:
                return None
        if prepared.folded:
            for key in prepared.folded:
                self._on_folded(metric.name, key)
        return prepared

    def _prepare_and_cache(self, metric: MetricDefinition, values: tuple[object, ...]) -> Prepared | None:
        prepared = self._prepare(metric, values)
        if prepared is None:
            return None  # rejections are not cached: each one is counted
        cache = self.cache.setdefault(metric.name, {})
        try:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[values] = prepared
        except TypeError:  # an unhashable value: prepared, not cached
            pass
        return prepared

    def _prepare(self, metric: MetricDefinition, values: tuple[object, ...]) -> Prepared | None:
        attributes: dict[str, str] = {}
        folded: list[str] = []
        kept = self._kept.get(metric.name)
        for use, raw in zip(metric.attributes, values, strict=True):
            if kept is not None and use.key not in kept:
                continue
            if raw is None:
                if use.requirement_level == "required":
                    self.reject(metric.name, use.key, raw, "is required", "invalid_attribute")
                    return None
                continue
            definition = semconv.ATTRIBUTES[use.key]
            try:
                label = to_label(raw, self.max_label_length)
            except NotALabelError:
                self.reject(
                    metric.name, use.key, raw, "must be a string, bytes, int or enum", "invalid_attribute"
                )
                return None
            normalise = self._normalizers.get(use.key)
            if normalise is not None:
                label = to_label(normalise(label), self.max_label_length)
            kept_value = self._apply_policy(metric.name, definition, label, folded)
            if kept_value is None:
                return None
            attributes[use.key] = kept_value
        return Prepared(attributes, tuple(folded), tuple(attributes.values()))

    def _apply_policy(
        self, metric: str, definition: AttributeDefinition, label: str, folded: list[str]
    ) -> str | None:
        if definition.policy == "enum":
            if label in definition.allowed_values:
                return label
            if OTHER in definition.allowed_values:
                folded.append(definition.key)
                return OTHER
            allowed = ", ".join(definition.allowed_values)
            self.reject(metric, definition.key, label, f"must be one of {allowed}", "invalid_attribute")
            return None
        override = self._overrides.get(definition.key)
        kind = override.kind if override else definition.policy
        limit = override.limit if override else definition.limit
        if kind == "bounded":
            return self._bounded(metric, definition.key, limit, label, folded)
        if kind == "hashed":
            return f"h{zlib.crc32(label.encode()) % limit}"
        return label

    def release(self, metric: str, key: str, value: str) -> None:
        """Give ``value`` of ``key`` its place in ``metric``'s budget back."""
        with self._lock:
            seen = self._seen.get((metric, key))
            if seen is not None and value in seen:
                seen.discard(value)
                self.cache.pop(metric, None)  # values folded before may fit now

    def _bounded(self, metric: str, key: str, limit: int, label: str, folded: list[str]) -> str:
        budget_key = (metric, key)
        with self._lock:
            seen = self._seen.setdefault(budget_key, set())
            if label in seen or label == OTHER:
                return label
            if len(seen) < limit:
                seen.add(label)
                return label
        folded.append(key)
        self._log.warning(
            (metric, key, "overflow"),
            "meshmetrics_attribute_budget_exceeded",
            metric=metric,
            attribute=key,
            limit=limit,
            folded_into=OTHER,
        )
        return OTHER
