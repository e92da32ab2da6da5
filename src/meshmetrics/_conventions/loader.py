"""Read and check a conventions registry: meshmetrics' own, or a plugin of a team's own.

A registry is YAML in the OpenTelemetry semantic-conventions ``groups:`` shape
(attribute groups, and metric groups that reference attributes); meshmetrics'
extras live under ``annotations.meshmetrics``. Every rule broken is a
:class:`ConventionsError` with one line that names the file, the line, the
key and the rule; nothing the YAML holds reaches a traceback.

A plugin (``builtin=`` given) follows the same rules and three more: it may
reference meshmetrics' attributes (``mesh.service``) but not redefine them,
and names under ``mesh.`` and ``meshmetrics.`` are meshmetrics' own.

Reading the YAML is ``document``'s job; the names things take are ``names``'.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, get_args

from meshmetrics._conventions.document import ConventionsError, YamlList, YamlMap, parse
from meshmetrics._conventions.names import (
    GENERATED_NAMES,
    enum_member,
    prometheus_label,
    prometheus_name,
    python_name,
)
from meshmetrics._conventions.ucum import problem as unit_problem
from meshmetrics._definitions import (
    GAUGE_RULES,
    AttributeDefinition,
    AttributeUse,
    Conventions,
    InstrumentKind,
    MetricDefinition,
    MinimalRule,
    PolicyKind,
    RequirementLevel,
)

KINDS: tuple[str, ...] = get_args(InstrumentKind)
POLICIES: tuple[str, ...] = get_args(PolicyKind)
MINIMAL_RULES: tuple[str, ...] = get_args(MinimalRule)
LEVELS: tuple[str, ...] = get_args(RequirementLevel)
STABILITIES = ("development", "alpha", "beta", "release_candidate", "stable", "deprecated")
COUNTERPART_SYSTEMS = ("otel", "envoy", "linkerd", "istio", "resilience4j", "grpc", "stamina")
RESERVED_PREFIXES = ("mesh.", "meshmetrics.")
_RESERVED_EXPOSED = ("mesh_", "meshmetrics_")
DEFAULT_CARDINALITY_LIMIT = 2000
MAX_CARDINALITY_LIMIT = 1_000_000
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_CLASS = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_METHOD = re.compile(r"^[a-z][a-z0-9_]*$")
_VERBS = {"counter": "count", "updowncounter": "add", "histogram": "record", "gauge": "set"}
# A facade or method may not take a name the generated module defines or imports, nor the class attribute.
_TAKEN_NAMES = GENERATED_NAMES | {"conventions"}
_ATTRIBUTE_EXTRAS = ("policy", "limit", "minimal")
_METRIC_EXTRAS = (
    "facade",
    "method",
    "buckets",
    "buckets_reason",
    "cardinality_limit",
    "multiprocess",
    "multiprocess_reason",
    "counterparts",
)


@dataclass(frozen=True)
class Registry:
    """A checked registry, in the shapes its generators read.

    ``attributes`` holds every attribute its metrics use, in declaration
    order; those of another registry (a plugin's ``mesh.service``) have
    ``defined_here`` false. ``metrics`` holds each metric's documentation and
    definition fields.
    """

    source: str
    attributes: dict[str, dict[str, Any]]
    metrics: list[dict[str, Any]]

    def conventions(self) -> Conventions:
        """The typed definitions the runtime and generated code use (own attributes only)."""
        attributes = {
            key: attribute_definition(attribute)
            for key, attribute in self.attributes.items()
            if attribute["defined_here"]
        }
        metrics = {metric["name"]: metric_definition(metric) for metric in self.metrics}
        return Conventions(self.source, attributes, metrics)


def attribute_definition(attribute: dict[str, Any]) -> AttributeDefinition:
    return AttributeDefinition(
        key=attribute["key"],
        type=attribute["type"],
        brief=attribute["brief"],
        stability=attribute["stability"],
        policy=attribute["policy"],
        limit=attribute["limit"],
        allowed_values=tuple(attribute["allowed_values"]),
        minimal=attribute["minimal"],
    )


def metric_definition(metric: dict[str, Any]) -> MetricDefinition:
    return MetricDefinition(
        name=metric["name"],
        instrument=metric["instrument"],
        unit=metric["unit"],
        brief=metric["brief"],
        stability=metric["stability"],
        attributes=tuple(
            AttributeUse(use["key"], use["requirement_level"], use["condition"])
            for use in metric["attributes"]
        ),
        facade=metric["facade"],
        prometheus_name=metric["prometheus_name"],
        buckets=tuple(metric["buckets"]),
        cardinality_limit=metric["cardinality_limit"],
        multiprocess=metric["multiprocess"],
        counterparts=tuple(metric["counterparts"]),
    )


def _documented(definition: AttributeDefinition) -> dict[str, Any]:
    return {
        "key": definition.key,
        "type": definition.type,
        "brief": definition.brief,
        "stability": definition.stability,
        "policy": definition.policy,
        "limit": definition.limit,
        "allowed_values": list(definition.allowed_values),
        "minimal": definition.minimal,
        "defined_here": False,
    }


def load(path: str | PathLike[str], *, builtin: Conventions | None = None) -> Registry:
    """Read and check the registry at ``path``; a plugin when ``builtin`` (meshmetrics' own) is given."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as error:  # ValueError: a NUL in the path
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConventionsError(f"{source}: cannot read the conventions file ({reason})") from None
    return load_text(text, source, builtin=builtin)


def load_text(text: str, source: str, *, builtin: Conventions | None = None) -> Registry:
    """Check registry ``text`` read from ``source`` (named in every error)."""
    return _Checker(source, builtin).registry(parse(text, source))


class _Checker:
    """Walks one document, keeping what it needs to name a broken rule's place."""

    def __init__(self, source: str, builtin: Conventions | None) -> None:
        self.source = source
        self.builtin = builtin

    def fail(self, line: int, where: str, rule: str) -> ConventionsError:
        return ConventionsError(f"{self.source}:{line}: {where}: {rule}")

    def field(self, mapping: YamlMap, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
        """``mapping[key]``, which must be there and of ``kind``."""
        if key not in mapping:
            raise self.fail(mapping.line, where, f"missing key {key!r}")
        value = mapping[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            wanted = " or ".join(_type_name(k) for k in _kinds(kind))
            raise self.fail(self.line_of(mapping, key), f"{where} {key}", f"must be {wanted}, not {value!r}")
        return value

    def line_of(self, mapping: YamlMap, key: str) -> int:
        return mapping.key_lines.get(key, mapping.line)

    def text(self, mapping: YamlMap, key: str, where: str, default: str | None = None) -> str:
        if default is not None and key not in mapping:
            return default
        value = mapping.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and key == "unit" and value == 1:
            return "1"  # `unit: 1` written without quotes
        text = " ".join(self.field(mapping, key, where).split())
        return self.printable(text, mapping, key, where)

    def printable(self, text: str, mapping: YamlMap, key: str, where: str) -> str:
        """``text``, once it is known to hold no control character or lone surrogate."""
        if not text.isprintable():
            rule = "must be printable text (no control characters, valid Unicode)"
            raise self.fail(self.line_of(mapping, key), f"{where} {key}", rule)
        return text

    def extras(self, raw: YamlMap, where: str, allowed: tuple[str, ...]) -> YamlMap:
        """``annotations.meshmetrics`` of ``raw``, whose keys must all be known."""
        annotations = raw.get("annotations")
        absent = YamlMap()  # a missing key in it is named at the line of what lacks it
        absent.line, absent.key_lines = raw.line, {}
        if annotations is None:
            return absent
        if not isinstance(annotations, YamlMap):
            raise self.fail(self.line_of(raw, "annotations"), f"{where} annotations", "must be a mapping")
        extra = annotations.get("meshmetrics")
        if extra is None:
            absent.line = annotations.line
            return absent
        if not isinstance(extra, YamlMap):
            line = self.line_of(annotations, "meshmetrics")
            raise self.fail(line, f"{where} annotations.meshmetrics", "must be a mapping")
        for key in extra:
            if key not in allowed:
                raise self.fail(
                    self.line_of(extra, key),
                    f"{where} annotations.meshmetrics.{key}",
                    f"unknown key; allowed: {', '.join(allowed)}",
                )
        return extra

    def choice(
        self, mapping: YamlMap, key: str, where: str, allowed: tuple[str, ...], default: str = ""
    ) -> str:
        if key not in mapping and default:
            return default
        value = self.field(mapping, key, where)
        if value not in allowed:
            raise self.fail(
                self.line_of(mapping, key), f"{where} {key}", f"{value!r} is not one of {', '.join(allowed)}"
            )
        return str(value)

    # The document.
    def registry(self, document: Any) -> Registry:
        if not isinstance(document, YamlMap):
            raise self.fail(
                getattr(document, "line", 1), "document", "must be a mapping with a 'groups' list"
            )
        groups = self.field(document, "groups", "document", YamlList)
        own: dict[str, dict[str, Any]] = {}
        raw_metrics: list[YamlMap] = []
        for index, group in enumerate(groups):
            where = f"groups[{index}]"
            if not isinstance(group, YamlMap):
                raise self.fail(groups.line, where, "must be a mapping")
            kind = self.choice(group, "type", where, ("attribute_group", "metric"))
            self.field(group, "id", where)
            if kind == "attribute_group":
                self.attribute_group(group, where, own)
            else:
                raw_metrics.append(group)
        used: dict[str, dict[str, Any]] = dict(own)
        metrics: list[dict[str, Any]] = []
        for raw in raw_metrics:
            metric = self.metric(raw, own, used)
            if any(m["name"] == metric["name"] for m in metrics):
                raise self.fail(raw.line, f"metric {metric['name']!r}", "is declared twice")
            metrics.append(metric)
        self.distinct(metrics, raw_metrics, own)
        return Registry(self.source, used, metrics)

    def distinct(
        self, metrics: list[dict[str, Any]], raw_metrics: list[YamlMap], own: dict[str, dict[str, Any]]
    ) -> None:
        """No two names share a Prometheus name or label, a Python name, or a facade method."""
        taken: dict[tuple[str, str], str] = {}

        def claim(what: str, value: str, name: str, line: int, where: str) -> None:
            other = taken.setdefault((what, value), name)
            if other != name:
                raise self.fail(line, where, f"{what} is taken by {other!r}")

        for key, attribute in own.items():
            where = f"attribute {key!r}"
            label, constant = prometheus_label(key), python_name(key)
            claim(f"the Prometheus label {label}", label, key, attribute["line"], where)
            claim(f"the Python name {constant}", constant, key, attribute["line"], where)
        for metric, raw in zip(metrics, raw_metrics, strict=True):
            name, where = metric["name"], f"metric {metric['name']!r}"
            for sample in metric_definition(metric).exposed_names():
                claim(f"the Prometheus name {sample!r}", sample, name, raw.line, where)
            claim(f"the Python name {python_name(name)!r}", python_name(name), name, raw.line, where)
            if metric["method"]:
                method = metric["method"]
                claim(f"the method of {metric['facade']} {method!r}", method, name, raw.line, where)

    def attribute_group(self, group: YamlMap, where: str, own: dict[str, dict[str, Any]]) -> None:
        attributes = self.field(group, "attributes", f"{where} ({group['id']})", YamlList)
        for position, raw in enumerate(attributes):
            if not isinstance(raw, YamlMap):
                raise self.fail(attributes.line, f"{where}.attributes[{position}]", "must be a mapping")
            attribute = self.attribute(raw)
            if attribute["key"] in own:
                raise self.fail(raw.line, f"attribute {attribute['key']!r}", "is defined twice")
            own[attribute["key"]] = attribute

    def attribute(self, raw: YamlMap) -> dict[str, Any]:
        key = self.field(raw, "id", "attribute")
        where = f"attribute {key!r}"
        self.own_name(key, raw, where, "attribute")
        extra = self.extras(raw, where, _ATTRIBUTE_EXTRAS)
        at = f"{where} annotations.meshmetrics"
        policy = self.choice(extra, "policy", at, POLICIES)
        kind, allowed = self.attribute_type(raw, where, key)
        if (kind == "enum") != (policy == "enum"):
            rule = "an enum attribute (members:) takes policy: enum, and only an enum does"
            raise self.fail(self.line_of(extra, "policy"), where, rule)
        limit = 0
        if policy == "bounded":
            limit = self.field(extra, "limit", at, int)
            if not 1 <= limit <= MAX_CARDINALITY_LIMIT:
                rule = f"must be within 1 .. {MAX_CARDINALITY_LIMIT}"
                raise self.fail(self.line_of(extra, "limit"), f"{where} limit", rule)
        return {
            "key": key,
            "type": kind,
            "brief": self.text(raw, "brief", where),
            "stability": self.choice(raw, "stability", where, STABILITIES),
            "policy": policy,
            "limit": limit,
            "allowed_values": allowed,
            "minimal": self.choice(extra, "minimal", at, MINIMAL_RULES, "keep"),
            "defined_here": True,
            "line": raw.line,
        }

    def own_name(self, name: str, raw: YamlMap, where: str, what: str) -> None:
        """Check that ``name`` is well formed and, in a plugin, its own."""
        line = self.line_of(raw, "id" if what == "attribute" else "metric_name")
        if not _NAME.fullmatch(name) and not (self.builtin is None and "." in name):
            raise self.fail(line, where, f"must be dotted lower-case words, e.g. 'acme.cache.{what}'")
        if self.builtin is not None and name in self.builtin.attributes:
            rule = f"is meshmetrics' own attribute; a plugin references it (ref: {name}), never redefines it"
            raise self.fail(line, where, rule)
        exposed = prometheus_label(name)  # a label, or a metric name's start: both must be ours alone
        if self.builtin is not None and (
            name.startswith(RESERVED_PREFIXES) or exposed.startswith(_RESERVED_EXPOSED)
        ):
            rule = (
                f"names under {' and '.join(RESERVED_PREFIXES)} (in Prometheus, "
                f"{' and '.join(_RESERVED_EXPOSED)}) are meshmetrics' own; use your own namespace"
            )
            raise self.fail(line, where, rule)

    def attribute_type(self, raw: YamlMap, where: str, key: str) -> tuple[str, list[str]]:
        """``string`` or ``enum``, and an enum's values."""
        kind = raw.get("type")
        if not isinstance(kind, YamlMap):
            if kind != "string":
                rule = "must be string or an enum (members:)"
                raise self.fail(self.line_of(raw, "type"), f"{where} type", rule)
            return "string", []
        members = self.field(kind, "members", f"{where} type", YamlList)
        allowed: list[str] = []
        for member in members:
            if not isinstance(member, YamlMap) or "value" not in member:
                raise self.fail(members.line, f"{where} type.members", "each member needs a 'value'")
            value = member["value"]
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # `value: 1` written without quotes
            if not isinstance(value, str) or not value or not value.isprintable():
                raise self.fail(
                    members.line, f"{where} type.members", f"{value!r}: a value is printable, not empty"
                )
            allowed.append(value)
        if len(set(allowed)) != len(allowed):
            raise self.fail(members.line, f"{where} type.members", "a value is listed twice")
        constants = [enum_member(key, value) for value in allowed]
        for value, name in zip(allowed, constants, strict=True):
            if constants.count(name) > 1:
                rule = f"two values are the one Python constant {name} ({value!r} and another)"
                raise self.fail(members.line, f"{where} type.members", rule)
        return "enum", allowed

    def metric(
        self, raw: YamlMap, own: dict[str, dict[str, Any]], used: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        name = self.field(raw, "metric_name", f"metric group {raw.get('id')!r}")
        where = f"metric {name!r}"
        self.own_name(name, raw, where, "metric")
        if raw["id"] != f"metric.{name}":
            raise self.fail(self.line_of(raw, "id"), f"{where} id", f"must be 'metric.{name}'")
        kind = self.choice(raw, "instrument", where, KINDS)
        unit = self.text(raw, "unit", where)
        broken = unit_problem(unit)
        if broken:
            raise self.fail(self.line_of(raw, "unit"), f"{where} unit {unit!r}", broken)
        extra = self.extras(raw, where, _METRIC_EXTRAS)
        at = f"{where} annotations.meshmetrics"
        return {
            "name": name,
            "instrument": kind,
            "unit": unit,
            "brief": self.text(raw, "brief", where),
            "note": self.text(raw, "note", where, default=""),
            "stability": self.choice(raw, "stability", where, STABILITIES),
            "attributes": self.uses(raw, where, own, used),
            **self.facade(extra, at, name, kind),
            "buckets": self.buckets(extra, at, kind),
            "buckets_reason": self.text(extra, "buckets_reason", at, default=""),
            "cardinality_limit": self.cardinality_limit(extra, at),
            "multiprocess": self.multiprocess(extra, at, kind),
            "multiprocess_reason": self.text(extra, "multiprocess_reason", at, default=""),
            "counterparts": self.counterparts(extra, at),
            "prometheus_name": prometheus_name(name, kind, unit),
        }

    def facade(self, extra: YamlMap, at: str, name: str, kind: str) -> dict[str, str]:
        """The facade class that records the metric, and (a plugin's) the method's name."""
        facade = self.text(extra, "facade", at, default="" if self.builtin is None else None)
        if self.builtin is not None and (not _CLASS.fullmatch(facade) or facade in _TAKEN_NAMES):
            rule = "must be a class name of your own, e.g. CacheMetrics"
            raise self.fail(self.line_of(extra, "facade"), f"{at}.facade", rule)
        method = self.text(extra, "method", at, default="")
        if method and (not _METHOD.fullmatch(method) or keyword.iskeyword(method) or method in _TAKEN_NAMES):
            rule = "must be a lower-case method name that is not a Python keyword"
            raise self.fail(self.line_of(extra, "method"), f"{at}.method", rule)
        if not method and self.builtin is not None:
            method = f"{_VERBS[kind]}_{name.split('.', 1)[1].replace('.', '_')}"
        return {"facade": facade, "method": method}

    def cardinality_limit(self, extra: YamlMap, at: str) -> int:
        limit = extra.get("cardinality_limit", DEFAULT_CARDINALITY_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CARDINALITY_LIMIT:
            rule = f"must be an integer within 1 .. {MAX_CARDINALITY_LIMIT}"
            raise self.fail(self.line_of(extra, "cardinality_limit"), f"{at}.cardinality_limit", rule)
        return limit

    def multiprocess(self, extra: YamlMap, at: str, kind: str) -> str:
        if kind == "gauge":
            if "multiprocess" not in extra:
                rule = f"a gauge needs multiprocess: one of {', '.join(GAUGE_RULES)} (how workers merge)"
                raise self.fail(extra.line, at, rule)
            return self.choice(extra, "multiprocess", at, GAUGE_RULES)
        if "multiprocess" in extra:
            rule = "only gauges take a multiprocess rule (sums add up)"
            raise self.fail(self.line_of(extra, "multiprocess"), at, rule)
        return ""

    def counterparts(self, extra: YamlMap, at: str) -> list[tuple[str, str]]:
        counterparts = extra.get("counterparts") or YamlMap()
        if not isinstance(counterparts, YamlMap):
            raise self.fail(self.line_of(extra, "counterparts"), f"{at}.counterparts", "must be a mapping")
        for system in counterparts:
            if system not in COUNTERPART_SYSTEMS:
                rule = f"unknown system {system!r}; allowed: {', '.join(COUNTERPART_SYSTEMS)}"
                raise self.fail(self.line_of(counterparts, system), f"{at}.counterparts", rule)
        return [
            (system, self.text(counterparts, system, f"{at}.counterparts"))
            for system in COUNTERPART_SYSTEMS
            if system in counterparts
        ]

    def buckets(self, extra: YamlMap, where: str, kind: str) -> list[float]:
        if "buckets" not in extra:
            if kind == "histogram":
                raise self.fail(extra.line, where, "a histogram needs bucket advice (buckets: [...])")
            return []
        line = self.line_of(extra, "buckets")
        if kind != "histogram":
            raise self.fail(line, f"{where}.buckets", "only histograms take buckets")
        raw = extra["buckets"]
        if not isinstance(raw, list) or not raw:
            raise self.fail(line, f"{where}.buckets", "must be a non-empty list of numbers")
        buckets: list[float] = []
        for raw_bound in raw:
            bound = _finite(raw_bound)
            if bound is None:
                raise self.fail(
                    line, f"{where}.buckets", f"{raw_bound!r} is not a finite number (+Inf is implied)"
                )
            if buckets and bound <= buckets[-1]:
                rule = f"must be strictly increasing ({bound:g} after {buckets[-1]:g})"
                raise self.fail(line, f"{where}.buckets", rule)
            buckets.append(bound)
        return buckets

    def uses(
        self, raw: YamlMap, where: str, own: dict[str, dict[str, Any]], used: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        listed = raw.get("attributes") or YamlList()
        if not isinstance(listed, YamlList):
            raise self.fail(self.line_of(raw, "attributes"), f"{where} attributes", "must be a list")
        uses: list[dict[str, Any]] = []
        for use in listed:
            if not isinstance(use, YamlMap):
                raise self.fail(
                    listed.line, f"{where} attributes", "each entry is {ref: ..., requirement_level: ...}"
                )
            key = self.field(use, "ref", f"{where} attributes")
            if key not in own:
                known = self.builtin.attributes.get(key) if self.builtin is not None else None
                if known is None:
                    raise self.fail(use.line, f"{where} attributes", f"attribute {key!r} is not defined")
                used.setdefault(key, _documented(known))
            if any(u["key"] == key for u in uses):
                raise self.fail(use.line, f"{where} attributes", f"attribute {key!r} is listed twice")
            level, condition = self.requirement(use, f"{where} attribute {key}")
            uses.append({"key": key, "requirement_level": level, "condition": condition})
        return uses

    def requirement(self, use: YamlMap, where: str) -> tuple[str, str]:
        """A use's requirement level, and its condition (``conditionally_required: if it failed``)."""
        level = self.field(use, "requirement_level", where, (str, dict))
        condition = ""
        if isinstance(level, dict):
            if len(level) != 1:
                raise self.fail(use.line, where, "one requirement level, with its condition")
            ((level, condition),) = level.items()
        if not isinstance(condition, str) or not condition.isprintable():
            raise self.fail(use.line, where, "a condition is printable text")
        if level not in LEVELS:
            raise self.fail(use.line, where, f"requirement level {level!r} is not one of {', '.join(LEVELS)}")
        return level, " ".join(condition.split())


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (not a number, a bool, NaN, infinite, beyond a double)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        dict: "a mapping",
        YamlMap: "a mapping",
        YamlList: "a list",
    }.get(kind, kind.__name__)
