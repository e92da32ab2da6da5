"""Generate ``src/meshmetrics/semconv.py`` and ``conventions/README.md`` from the registry.

Usage::

    python tools/gen_conventions.py          # write the generated files
    python tools/gen_conventions.py --check  # exit 1 if they are out of date

The registry (``conventions/registry.yaml``) is the single source of truth.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_full_name

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "conventions" / "registry.yaml"
SEMCONV = ROOT / "src" / "meshmetrics" / "semconv.py"
REFERENCE = ROOT / "conventions" / "README.md"

KINDS = {"counter", "updowncounter", "histogram", "gauge"}
MULTIPROCESS_RULES = ("sum", "max", "min", "last", "worker")  # as meshmetrics._engine.workers.GAUGE_RULES
POLICIES = {"enum", "bounded", "unbounded"}
LEVELS = {"required", "conditionally_required", "recommended", "opt_in"}
COUNTERPART_SYSTEMS = ("otel", "envoy", "linkerd", "istio", "resilience4j", "grpc", "stamina")
UCUM_ANNOTATION = re.compile(r"^\{[a-z_]+\}$")
UCUM_UNITS = {"s", "1", "By"}


class RegistryError(Exception):
    """The registry breaks one of its own rules."""


def load(path: Path = REGISTRY) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Read and validate the registry; return (attributes by key, metrics in order)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    attributes: dict[str, dict[str, Any]] = {}
    metrics: list[dict[str, Any]] = []
    for group in document["groups"]:
        if group["type"] == "attribute_group":
            for attribute in group["attributes"]:
                attributes[attribute["id"]] = _attribute(attribute)
        elif group["type"] == "metric":
            metrics.append(group)
        else:
            raise RegistryError(f"group {group['id']}: unknown type {group['type']!r}")
    parsed = [_metric(metric, attributes) for metric in metrics]
    names = [metric["name"] for metric in parsed]
    if len(set(names)) != len(names):
        raise RegistryError("a metric name is declared twice")
    return attributes, parsed


def _attribute(raw: dict[str, Any]) -> dict[str, Any]:
    key = raw["id"]
    extra = raw.get("annotations", {}).get("meshmetrics", {})
    policy = extra.get("policy")
    if policy not in POLICIES:
        raise RegistryError(f"attribute {key}: policy must be one of {sorted(POLICIES)}")
    kind = raw["type"]
    allowed: list[str] = []
    if isinstance(kind, dict):
        allowed = [str(member["value"]) for member in kind["members"]]
        kind = "enum"
        if policy != "enum":
            raise RegistryError(f"attribute {key}: an enum attribute takes the enum policy")
    elif kind != "string":
        raise RegistryError(f"attribute {key}: type must be string or an enum")
    limit = int(extra.get("limit", 0))
    if policy == "bounded" and limit < 1:
        raise RegistryError(f"attribute {key}: bounded policy needs a positive limit")
    return {
        "key": key,
        "type": kind,
        "brief": " ".join(str(raw["brief"]).split()),
        "stability": raw["stability"],
        "policy": policy,
        "limit": limit,
        "allowed_values": allowed,
    }


def _prometheus_name(name: str, kind: str, unit: str) -> str:
    # Mirrors the OpenTelemetry Prometheus exporter + prometheus_client naming;
    # a test checks it against real exposition output.
    base = sanitize_full_name(name)
    suffix = map_unit(unit)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if kind == "counter":
        base += "_total"
    return base


def _metric(raw: dict[str, Any], attributes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    name = raw["metric_name"]
    if raw["id"] != f"metric.{name}":
        raise RegistryError(f"metric {name}: id must be 'metric.{name}'")
    kind = raw["instrument"]
    if kind not in KINDS:
        raise RegistryError(f"metric {name}: instrument must be one of {sorted(KINDS)}")
    unit = str(raw["unit"])
    if unit not in UCUM_UNITS and not UCUM_ANNOTATION.match(unit):
        raise RegistryError(f"metric {name}: unit {unit!r} is not a UCUM unit used here")
    extra = raw.get("annotations", {}).get("meshmetrics", {})
    buckets = [float(b) for b in extra.get("buckets", [])]
    if kind == "histogram" and not buckets:
        raise RegistryError(f"metric {name}: a histogram needs bucket advice")
    if kind != "histogram" and buckets:
        raise RegistryError(f"metric {name}: only histograms take buckets")
    if buckets != sorted(set(buckets)):
        raise RegistryError(f"metric {name}: buckets must be strictly increasing")
    uses = []
    for use in raw.get("attributes", []):
        key = use["ref"]
        if key not in attributes:
            raise RegistryError(f"metric {name}: attribute {key} is not defined")
        level = use["requirement_level"]
        condition = ""
        if isinstance(level, dict):
            ((level, condition),) = level.items()
        if level not in LEVELS:
            raise RegistryError(f"metric {name}: requirement level {level!r} is unknown")
        uses.append({"key": key, "requirement_level": level, "condition": condition})
    multiprocess = str(extra.get("multiprocess", ""))
    if kind == "gauge" and multiprocess not in MULTIPROCESS_RULES:
        raise RegistryError(
            f"metric {name}: a gauge needs multiprocess: one of {', '.join(MULTIPROCESS_RULES)}"
        )
    if kind != "gauge" and multiprocess:
        raise RegistryError(f"metric {name}: only gauges take a multiprocess rule (sums always add up)")
    counterparts = extra.get("counterparts") or {}
    unknown = set(counterparts) - set(COUNTERPART_SYSTEMS)
    if unknown:
        raise RegistryError(f"metric {name}: unknown counterpart systems {sorted(unknown)}")
    return {
        "name": name,
        "instrument": kind,
        "unit": unit,
        "brief": " ".join(str(raw["brief"]).split()),
        "note": " ".join(str(raw.get("note", "")).split()),
        "stability": raw["stability"],
        "attributes": uses,
        "facade": extra.get("facade", ""),
        "buckets": buckets,
        "buckets_reason": extra.get("buckets_reason", ""),
        "cardinality_limit": int(extra.get("cardinality_limit", 2000)),
        "multiprocess": multiprocess,
        "multiprocess_reason": extra.get("multiprocess_reason", ""),
        "counterparts": [
            (system, counterparts[system]) for system in COUNTERPART_SYSTEMS if system in counterparts
        ],
        "prometheus_name": _prometheus_name(name, kind, unit),
    }


def constant(name: str) -> str:
    """``mesh.lb.request.duration`` -> ``MESH_LB_REQUEST_DURATION``."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def enum_class(key: str) -> str:
    """``mesh.circuit_breaker.state`` -> ``MeshCircuitBreakerStateValues``."""
    return "".join(part.capitalize() for part in re.split(r"[._]", key)) + "Values"


def render_semconv(attributes: dict[str, dict[str, Any]], metrics: list[dict[str, Any]]) -> str:
    """Render the Python module."""
    out = [
        '"""Semantic conventions of meshmetrics: metric and attribute names, generated.',
        "",
        "Generated by ``tools/gen_conventions.py`` from ``conventions/registry.yaml``.",
        "Do not edit by hand: run ``make conventions``.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "from meshmetrics._definitions import AttributeDefinition, AttributeUse, MetricDefinition",
        "",
        "# Attribute keys.",
    ]
    out.extend(f'ATTR_{constant(key)}: Final = "{key}"' for key in attributes)
    out += ["", "# Metric names."]
    out.extend(f'METRIC_{constant(metric["name"])}: Final = "{metric["name"]}"' for metric in metrics)
    out.append("")
    for key, attribute in attributes.items():
        if attribute["type"] != "enum":
            continue
        out += ["", f"class {enum_class(key)}:", f'    """Allowed values of ``{key}``."""', ""]
        for value in attribute["allowed_values"]:
            member = "OTHER" if value == "_OTHER" else constant(value)
            if member[0].isdigit():
                member = f"ATTEMPT_{member}"
            out.append(f'    {member}: Final = "{value}"')
        out.append("")
    out += ["", "ATTRIBUTES: Final[dict[str, AttributeDefinition]] = {"]
    for key, attribute in attributes.items():
        out += [
            f'    "{key}": AttributeDefinition(',
            f'        key="{key}",',
            f'        type="{attribute["type"]}",',
            f"        brief={attribute['brief']!r},",
            f'        stability="{attribute["stability"]}",',
            f'        policy="{attribute["policy"]}",',
            f"        limit={attribute['limit']},",
            f"        allowed_values={tuple(attribute['allowed_values'])!r},",
            "    ),",
        ]
    out += ["}", "", "METRICS: Final[dict[str, MetricDefinition]] = {"]
    for metric in metrics:
        uses = ", ".join(
            f'AttributeUse("{use["key"]}", "{use["requirement_level"]}", {use["condition"]!r})'
            for use in metric["attributes"]
        )
        out += [
            f'    "{metric["name"]}": MetricDefinition(',
            f'        name="{metric["name"]}",',
            f'        instrument="{metric["instrument"]}",',
            f'        unit="{metric["unit"]}",',
            f"        brief={metric['brief']!r},",
            f'        stability="{metric["stability"]}",',
            f"        attributes=({uses},),",
            f'        facade="{metric["facade"]}",',
            f'        prometheus_name="{metric["prometheus_name"]}",',
            f"        buckets={tuple(metric['buckets'])!r},",
            f"        cardinality_limit={metric['cardinality_limit']},",
            *([f'        multiprocess="{metric["multiprocess"]}",'] if metric["multiprocess"] else []),
            f"        counterparts={tuple(metric['counterparts'])!r},",
            "    ),",
        ]
    out += [
        "}",
        "",
        "# Prometheus exposition: the metric's base name, every sample name it exposes,",
        "# and each attribute's label name. Dashboards, rules and `meshmetrics top` use these.",
        "PROMETHEUS_NAMES: Final[dict[str, str]] = {",
    ]
    out.extend(f'    "{metric["name"]}": "{metric["prometheus_name"]}",' for metric in metrics)
    out += ["}", "", "PROMETHEUS_SAMPLES: Final[dict[str, tuple[str, ...]]] = {"]
    for metric in metrics:
        samples = ", ".join(f'"{sample}"' for sample in prometheus_samples(metric))
        comma = "," if len(prometheus_samples(metric)) == 1 else ""
        out.append(f'    "{metric["name"]}": ({samples}{comma}),')
    out += ["}", "", "PROMETHEUS_LABELS: Final[dict[str, str]] = {"]
    out.extend(f'    "{key}": "{prometheus_label(key)}",' for key in attributes)
    out += ["}", ""]
    return "\n".join(out)


def prometheus_samples(metric: dict[str, Any]) -> tuple[str, ...]:
    """Sample names a metric exposes: a histogram's _bucket, _sum and _count, else its name."""
    name = metric["prometheus_name"]
    if metric["instrument"] == "histogram":
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)


def prometheus_label(key: str) -> str:
    """Prometheus label name of an attribute key (``mesh.lb.strategy`` -> ``mesh_lb_strategy``)."""
    return sanitize_full_name(key)


def _load_profiles() -> Any:
    # Load meshmetrics/_policy/profiles.py on its own: importing the package would import
    # the semconv module this script generates (and may be regenerating).
    spec = importlib.util.spec_from_file_location(
        "_meshmetrics_profiles", ROOT / "src" / "meshmetrics" / "_policy" / "profiles.py"
    )
    if spec is None or spec.loader is None:
        raise RegistryError("cannot load src/meshmetrics/_policy/profiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_profiles = _load_profiles()
PROFILES = _profiles.DETAILS


def profile_keys(metric: dict[str, Any], profile: str) -> list[str]:
    """Attribute keys a detail profile keeps for a metric: the runtime's own rule."""
    return list(
        _profiles.kept_keys(metric["instrument"], (use["key"] for use in metric["attributes"]), profile)
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_reference(attributes: dict[str, dict[str, Any]], metrics: list[dict[str, Any]]) -> str:
    """Render the Markdown metric reference."""
    out = [
        "# meshmetrics metric reference",
        "",
        "<!-- Generated by tools/gen_conventions.py from registry.yaml; run `make conventions`. -->",
        "",
        "Every instrument meshmetrics emits, from [`registry.yaml`](registry.yaml). Prometheus",
        "names are what the OpenTelemetry Prometheus exporter produces (`_total` on counters,",
        "unit suffixes, dots to underscores).",
        "",
        "## Metrics",
        "",
        "| metric | Prometheus name | kind | unit | attributes | facade | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric in metrics:
        attrs = ", ".join(
            f"`{use['key']}`"
            + (
                ""
                if use["requirement_level"] == "required"
                else f" ({use['requirement_level']}: {use['condition']})"
                if use["condition"]
                else f" ({use['requirement_level']})"
            )
            for use in metric["attributes"]
        )
        out.append(
            f"| `{metric['name']}` | `{metric['prometheus_name']}` | {metric['instrument']} | `{metric['unit']}` "
            f"| {attrs} | {metric['facade']} | {_cell(metric['brief'])} |"
        )
    out += ["", "## Histogram buckets", "", "| metric | bucket boundaries | why |", "|---|---|---|"]
    for metric in metrics:
        if metric["buckets"]:
            bounds = ", ".join(f"{b:g}" for b in metric["buckets"])
            out.append(f"| `{metric['name']}` | {bounds} | {_cell(metric['buckets_reason'])} |")
    out += [
        "",
        "## Several worker processes",
        "",
        "In multiprocess mode (see the README's Deployment section) counters and histograms are summed over",
        "every worker, live or exited; up-down counters over the live workers; each gauge by its rule",
        "(`worker`: one series per live worker, with a `worker` label).",
        "",
        "| gauge | rule | why |",
        "|---|---|---|",
    ]
    out.extend(
        f"| `{metric['name']}` | `{metric['multiprocess']}` | {_cell(metric['multiprocess_reason'])} |"
        for metric in metrics
        if metric["multiprocess"]
    )
    out += [
        "",
        "## Counterparts in other systems",
        "",
        "The nearest metric in each system, for users migrating from it (blank: none).",
        "",
        "| metric | " + " | ".join(COUNTERPART_SYSTEMS) + " |",
        "|---|" + "---|" * len(COUNTERPART_SYSTEMS),
    ]
    for metric in metrics:
        found = dict(metric["counterparts"])
        cells = " | ".join(_cell(f"`{found[s]}`") if s in found else "" for s in COUNTERPART_SYSTEMS)
        out.append(f"| `{metric['name']}` | {cells} |")
    notes = [metric for metric in metrics if metric["note"]]
    if notes:
        out += ["", "## Notes", ""]
        out.extend(f"- `{metric['name']}`: {metric['note']}" for metric in notes)
    out += [
        "",
        "## Detail profiles",
        "",
        "`configure(detail=...)` chooses which attributes reach the exporters. Only metrics whose",
        "attributes differ between profiles are listed.",
        "",
        "| metric | " + " | ".join(PROFILES) + " |",
        "|---|---|---|---|",
    ]
    for metric in metrics:
        kept = [profile_keys(metric, profile) for profile in PROFILES]
        if any(keys != kept[0] for keys in kept):
            cells = " | ".join(", ".join(f"`{k}`" for k in keys) for keys in kept)
            out.append(f"| `{metric['name']}` | {cells} |")
    out += [
        "",
        "## Attributes",
        "",
        "| attribute | type | cardinality policy | values | description |",
        "|---|---|---|---|---|",
    ]
    for key, attribute in attributes.items():
        policy = attribute["policy"] + (f"({attribute['limit']})" if attribute["policy"] == "bounded" else "")
        values = ", ".join(f"`{v}`" for v in attribute["allowed_values"])
        out.append(f"| `{key}` | {attribute['type']} | {policy} | {values} | {_cell(attribute['brief'])} |")
    out.append("")
    return "\n".join(out)


def outputs() -> dict[Path, str]:
    """Every generated file and its expected content."""
    attributes, metrics = load()
    return {SEMCONV: render_semconv(attributes, metrics), REFERENCE: render_reference(attributes, metrics)}


def main() -> int:
    """Write or check the generated files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated files are stale")
    args = parser.parse_args()
    stale = []
    for path, content in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == content:
            continue
        if args.check:
            stale.append(path)
            diff = difflib.unified_diff(
                current.splitlines(), content.splitlines(), str(path), "generated", lineterm=""
            )
            print("\n".join(list(diff)[:40]), file=sys.stderr)
        else:
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("generated files are stale; run `make conventions`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
