"""Typed shapes of the conventions registry, shared by the generated ``semconv`` module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

InstrumentKind = Literal["counter", "updowncounter", "histogram", "gauge"]
PolicyKind = Literal["enum", "bounded", "unbounded"]
OTHER = "_OTHER"
"""The value every fold of the registry goes to: an enum value outside its set, a value over its budget."""

RequirementLevel = Literal["required", "conditionally_required", "recommended", "opt_in"]


@dataclass(frozen=True)
class AttributeDefinition:
    """One attribute of the registry: its key, type and cardinality policy."""

    key: str
    type: Literal["string", "enum"]
    brief: str
    stability: str
    policy: PolicyKind
    limit: int = 0
    """For ``bounded``: distinct values kept per metric before folding into ``_OTHER``."""
    allowed_values: tuple[str, ...] = ()
    """For enums: every value accepted; others fold into ``_OTHER`` (or are rejected)."""


@dataclass(frozen=True)
class AttributeUse:
    """How a metric uses an attribute."""

    key: str
    requirement_level: RequirementLevel
    condition: str = ""


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """One instrument of the registry, everything needed to create and document it."""

    name: str
    instrument: InstrumentKind
    unit: str
    brief: str
    stability: str
    attributes: tuple[AttributeUse, ...]
    facade: str
    prometheus_name: str
    buckets: tuple[float, ...] = ()
    cardinality_limit: int = 2000
    multiprocess: str = ""
    """Multiprocess mode: how a gauge's values of several workers merge (``sum``, ``max``, ``min``,
    ``last``, ``worker``); counters and histograms are summed, up-down counters summed over live workers."""
    counterparts: tuple[tuple[str, str], ...] = field(default=())

    @property
    def attribute_keys(self) -> frozenset[str]:
        """Every attribute key the metric may carry (its View allow-list)."""
        return frozenset(use.key for use in self.attributes)
