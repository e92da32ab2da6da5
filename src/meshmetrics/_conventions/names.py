"""The names a registry's metrics and attributes take in Prometheus and in generated Python."""

from __future__ import annotations

import re

from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_full_name

IMPORTED_NAMES = ("AttributeDefinition", "AttributeUse", "Conventions", "MetricDefinition", "PluginFacade")
"""What every generated plugin module imports from ``meshmetrics.plugins``."""
VALUE_CHECKS = ("duration", "non_negative", "real", "error_type")
"""The value checks a generated method may call (imported as needed)."""
GENERATED_NAMES = frozenset({"ATTRIBUTES", "METRICS", "CONVENTIONS", "Final", *IMPORTED_NAMES, *VALUE_CHECKS})
"""Every module-level name a generated module defines or imports."""


def prometheus_name(name: str, kind: str, unit: str) -> str:
    """The name the Prometheus exposition gives a metric: unit suffix, and ``_total`` on counters."""
    # Mirrors the OpenTelemetry Prometheus exporter's naming, as meshmetrics' exposition does;
    # a test checks it against real exposition output.
    base = sanitize_full_name(name)
    suffix = map_unit(unit)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if kind == "counter":
        base += "_total"
    return base


def prometheus_label(key: str) -> str:
    """Prometheus label name of an attribute key (``mesh.lb.strategy`` -> ``mesh_lb_strategy``)."""
    return str(sanitize_full_name(key))


def enum_member(key: str, value: str) -> str:
    """The constant naming an enum value in generated code (``_OTHER`` -> ``OTHER``, ``1`` -> ``VALUE_1``)."""
    if value == "_OTHER":
        return "OTHER"
    member = python_name(value)
    if member[0].isdigit():
        member = f"{'ATTEMPT' if key == 'mesh.retry.attempt' else 'VALUE'}_{member}"
    return member


def python_name(name: str) -> str:
    """The constant a generated module names ``name`` by (``acme.cache.hits`` -> ``ACME_CACHE_HITS``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()
