"""Typed shapes of a conventions registry: meshmetrics' own (``semconv``) and a plugin's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

InstrumentKind = Literal["counter", "updowncounter", "histogram", "gauge"]
PolicyKind = Literal["enum", "bounded", "unbounded"]
MinimalRule = Literal["keep", "drop", "drop_on_histograms"]
OTHER = "_OTHER"
"""The value every fold of the registry goes to: an enum value outside its set, a value over its budget."""

RequirementLevel = Literal["required", "conditionally_required", "recommended", "opt_in"]
GAUGE_RULES = ("sum", "max", "min", "last", "worker")
"""How a gauge's values of several worker processes merge (``worker``: one series per live worker)."""


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
    minimal: MinimalRule = "keep"
    """What ``detail="minimal"`` does with it: keep it, drop it, or drop it from histograms only."""


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
    key: str = field(default="", init=False, compare=False, repr=False)
    """The name and a digest of the whole definition: how a runtime finds the metric's table, so a
    generated module older than the registry ``configure()`` loaded finds none (and is refused)."""

    def __post_init__(self) -> None:
        """Derive :attr:`key` (in this process: the digest is ``hash``, salted per process)."""
        object.__setattr__(self, "key", f"{self.name}#{hash(self) & 0xFFFFFFFFFFFF:012x}")

    def exposed_names(self) -> tuple[str, ...]:
        """Every name the Prometheus exposition may give its family and samples (OpenMetrics too)."""
        name = self.prometheus_name
        if self.instrument == "counter":
            base = name.removesuffix("_total")
            return (base, name, f"{base}_created")
        if self.instrument == "histogram":
            return (name, *(f"{name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")))
        return (name,)

    @property
    def attribute_keys(self) -> frozenset[str]:
        """Every attribute key the metric may carry (its View allow-list)."""
        return frozenset(use.key for use in self.attributes)


@dataclass(frozen=True, eq=False)
class Conventions:
    """One registry's attributes and metrics: meshmetrics' own, or a plugin's.

    A plugin's metrics may use meshmetrics' attributes (``mesh.service``);
    only the attributes it defines itself are in its ``attributes``.
    """

    source: str
    """Where it was declared: ``meshmetrics`` for the built-in registry, else the plugin's file."""
    attributes: Mapping[str, AttributeDefinition]
    metrics: Mapping[str, MetricDefinition]


class ConventionsConflictError(ValueError):
    """Two registries declare the same name differently."""


def combine(registries: Iterable[Conventions]) -> Conventions:
    """Every attribute and metric of ``registries``, after checking that no two disagree.

    The same definition given twice (a plugin's file and its generated module)
    is one definition; the same name defined two ways, or two metrics exposed
    under one Prometheus name, is a :class:`ConventionsConflictError` naming
    both sources.
    """
    registries = tuple(registries)
    attributes: dict[str, AttributeDefinition] = {}
    metrics: dict[str, MetricDefinition] = {}
    owners: dict[str, str] = {}  # "attribute x" / "metric y" / "Prometheus name z" -> source
    exposed: dict[str, str] = {}  # Prometheus name -> metric

    def claim(what: str, same: bool, source: str) -> None:
        owner = owners.setdefault(what, source)
        if not same:
            raise ConventionsConflictError(
                f"{source}: {what} is already defined differently by {owner}; a name has one definition"
            )

    for registry in registries:
        source = registry.source
        for key, attribute in registry.attributes.items():
            claim(f"attribute {key!r}", attributes.setdefault(key, attribute) == attribute, source)
        for name, metric in registry.metrics.items():
            claim(f"metric {name!r}", metrics.setdefault(name, metric) == metric, source)
            for prometheus in metric.exposed_names():
                claim(f"Prometheus name {prometheus!r}", exposed.setdefault(prometheus, name) == name, source)
    return Conventions(" + ".join(dict.fromkeys(r.source for r in registries)), attributes, metrics)
