"""Grafana dashboards of a registry: meshmetrics' curated overview, or one derived from a plugin.

A dashboard is rows of panels; a panel is ``(title, type, unit, description,
[(PromQL, legend), ...])``. ``tools/gen_dashboard.py`` writes meshmetrics' rows
by hand; :func:`render_plugin_dashboard` derives a plugin's, one row per facade
and, per metric, grouped by the labels of its *required* attributes:

- counter: ``sum by (labels) (rate(x[$__rate_interval]))``;
- up-down counter: ``sum by (labels) (x)``: it adds up across processes;
- gauge: the aggregation its multiprocess rule names (``sum``, ``max``,
  ``min``; ``max`` for ``last`` and ``worker``), since the rule that merges
  workers' values is also the one that merges replicas';
- histogram: p50 and p99 ``histogram_quantile`` (with exemplars, as the
  built-in latency panels), and the rate of its ``_count``.

Units map from the metric's UCUM unit: times and ``By`` to Grafana's, ``1``
to ``percentunit``, ``{thing}`` to ``short``; rates of ``{request}`` to
``reqps``, of ``By`` to ``Bps``, of seconds to ``percentunit`` (seconds per
second), of anything else to ``ops``. Every metric carrying ``mesh.service``
follows the ``$service`` variable. Names are the registry's Prometheus names
and labels only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshmetrics._conventions.loader import Registry
from meshmetrics._conventions.names import prometheus_label

Query = tuple[str, str]
"""A PromQL expression and its legend."""
Panel = tuple[str, str, str, str, list[Query]]
"""Title, Grafana panel type, unit, description, queries."""
Row = tuple[str, list[Panel]]
"""Row title and its panels."""

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
RATE_INTERVAL = "$__rate_interval"
SERVICE_ATTRIBUTE = "mesh.service"
SERVICE_LABEL = prometheus_label(SERVICE_ATTRIBUTE)
SERVICE_MATCHER = f'{SERVICE_LABEL}=~"$service"'
QUANTILES = (("0.5", "p50"), ("0.99", "p99"))
PANELS_PER_LINE = 3
PANEL_WIDTH = 8
PANEL_HEIGHT = 8
_VALUE_UNITS = {
    "s": "s",
    "ms": "ms",
    "us": "µs",
    "ns": "ns",
    "min": "m",
    "h": "h",
    "d": "d",
    "By": "bytes",
    "1": "percentunit",
    "%": "percent",
}
_RATE_UNITS = {"{request}": "reqps", "By": "Bps", "s": "percentunit"}
_GAUGE_AGGREGATIONS = frozenset({"sum", "max", "min"})  # the merge rules PromQL has an operator for


# PromQL.
def selector(*matchers: str) -> str:
    """``{a,b}`` of the matchers given, empty ones left out; ``""`` when none is left."""
    present = [matcher for matcher in matchers if matcher]
    return "{" + ",".join(present) + "}" if present else ""


def aggregate(operator: str, by: str, inner: str) -> str:
    """``operator by (by) (inner)``, or ``operator (inner)`` when ``by`` is empty."""
    return f"{operator} by ({by}) ({inner})" if by else f"{operator} ({inner})"


def rate(metric: str, by: str, matchers: str = "", service: str = SERVICE_MATCHER) -> str:
    """Per-second rate of ``metric`` summed by the labels ``by``, for the selected services."""
    return aggregate("sum", by, f"rate({metric}{selector(service, matchers)}[{RATE_INTERVAL}])")


def quantile(q: str, histogram: str, by: str, service: str = SERVICE_MATCHER) -> str:
    """Quantile ``q`` of ``histogram`` (its base name) by the labels ``by``, for the selected services."""
    buckets = f"rate({histogram}_bucket{selector(service)}[{RATE_INTERVAL}])"
    return f"histogram_quantile({q}, {aggregate('sum', f'{by}, le' if by else 'le', buckets)})"


def ratio(numerator: str, denominator: str) -> str:
    """One expression over another, each on its own line."""
    return f"{numerator}\n/\n{denominator}"


# Dashboard JSON.
def _row_panel(panel_id: int, title: str, y: int) -> dict[str, object]:
    return {
        "type": "row",
        "title": title,
        "id": panel_id,
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        "panels": [],
    }


def _target(n: int, expr: str, legend: str) -> dict[str, object]:
    return {
        "refId": chr(ord("A") + n),
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        # latency quantiles link to traces: Grafana shows the buckets' exemplars
        **({"exemplar": True} if "histogram_quantile" in expr else {}),
    }


def _panel(panel_id: int, index: int, y: int, panel: Panel) -> dict[str, object]:
    title, kind, unit, description, queries = panel
    return {
        "id": panel_id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {
            "h": PANEL_HEIGHT,
            "w": PANEL_WIDTH,
            "x": (index % PANELS_PER_LINE) * PANEL_WIDTH,
            "y": y + (index // PANELS_PER_LINE) * PANEL_HEIGHT,
        },
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [_target(n, expr, legend) for n, (expr, legend) in enumerate(queries)],
    }


def panels(rows: Sequence[Row]) -> list[dict[str, object]]:
    """Every row and panel, numbered and laid out three panels to a line."""
    out: list[dict[str, object]] = []
    y = 0
    for row_title, row_panels in rows:
        out.append(_row_panel(len(out) + 1, row_title, y))
        y += 1
        for index, panel in enumerate(row_panels):
            out.append(_panel(len(out) + 1, index, y, panel))
        y += PANEL_HEIGHT * ((len(row_panels) + PANELS_PER_LINE - 1) // PANELS_PER_LINE)
    return out


def _datasource_variable() -> dict[str, object]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }


def _service_variable(series: str) -> dict[str, object]:
    values = f"label_values({series}, {SERVICE_LABEL})"
    return {
        "name": "service",
        "label": "Service",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": values, "refId": "service"},
        "definition": values,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
    }


def build(
    rows: Sequence[Row],
    *,
    title: str,
    uid: str,
    description: str,
    tags: Sequence[str],
    service_series: str | None,
) -> dict[str, object]:
    """The dashboard of ``rows``, with a data source variable.

    A ``$service`` variable, when ``service_series`` is given, lists the values
    of its ``mesh_service`` label.
    """
    variables = [_datasource_variable()]
    if service_series is not None:
        variables.append(_service_variable(service_series))
    return {
        "title": title,
        "uid": uid,
        "description": description,
        "tags": list(tags),
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": variables},
        "panels": panels(rows),
    }


def render(dashboard: Mapping[str, object]) -> str:
    """The dashboard as the JSON text Grafana imports."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


# A plugin's dashboard, derived.
def required_labels(metric: Mapping[str, Any]) -> list[str]:
    """Prometheus labels of the metric's required attributes, in declaration order."""
    return [
        prometheus_label(use["key"]) for use in metric["attributes"] if use["requirement_level"] == "required"
    ]


def aggregation(metric: Mapping[str, Any]) -> str:
    """How series of a gauge or up-down counter combine: its multiprocess rule where PromQL has it."""
    if metric["instrument"] == "gauge":
        rule = str(metric["multiprocess"])
        return rule if rule in _GAUGE_AGGREGATIONS else "max"
    return "sum"


def _service_level(metric: Mapping[str, Any]) -> str:
    """The requirement level of ``mesh.service`` on the metric; ``""`` when it does not carry it."""
    return next(
        (use["requirement_level"] for use in metric["attributes"] if use["key"] == SERVICE_ATTRIBUTE), ""
    )


def _series(metric: Mapping[str, Any]) -> str:
    """A sample name every series of the metric has: a histogram's ``_count``, else its name."""
    name = str(metric["prometheus_name"])
    return f"{name}_count" if metric["instrument"] == "histogram" else name


def service_series(registry: Registry) -> str | None:
    """The series the ``$service`` variable lists values of: one where ``mesh.service`` is required."""
    using = [metric for metric in registry.metrics if _service_level(metric)]
    required = [metric for metric in using if _service_level(metric) == "required"]
    chosen = required or using
    return _series(chosen[0]) if chosen else None


def value_unit(unit: str) -> str:
    """Grafana's unit for a value in UCUM ``unit``."""
    return _VALUE_UNITS.get(unit, "short")


def rate_unit(unit: str) -> str:
    """Grafana's unit for a per-second rate of a counter in UCUM ``unit``."""
    return _RATE_UNITS.get(unit, "ops")


def _counter_panels(metric: Mapping[str, Any], by: str, legend: str, service: str) -> list[Panel]:
    query = (rate(metric["prometheus_name"], by, "", service), legend)
    return [
        (f"{metric['name']} per second", "timeseries", rate_unit(metric["unit"]), metric["brief"], [query])
    ]


def _histogram_panels(metric: Mapping[str, Any], by: str, legend: str, service: str) -> list[Panel]:
    name = metric["prometheus_name"]
    quantiles = [(quantile(q, name, by, service), f"{tag} {legend}") for q, tag in QUANTILES]
    count = (rate(f"{name}_count", by, "", service), legend)
    return [
        (f"{metric['name']} p50 / p99", "timeseries", value_unit(metric["unit"]), metric["brief"], quantiles),
        (f"{metric['name']} per second", "timeseries", "ops", f"Observations of {metric['name']}.", [count]),
    ]


def _value_panels(metric: Mapping[str, Any], by: str, legend: str, service: str) -> list[Panel]:
    query = (aggregate(aggregation(metric), by, f"{metric['prometheus_name']}{selector(service)}"), legend)
    return [(metric["name"], "timeseries", value_unit(metric["unit"]), metric["brief"], [query])]


def metric_panels(metric: Mapping[str, Any]) -> list[Panel]:
    """The panels of one metric (see the module docstring for the rules)."""
    labels = required_labels(metric)
    legend = " ".join(f"{{{{{label}}}}}" for label in labels) or metric["name"]
    service = SERVICE_MATCHER if _service_level(metric) else ""
    panels_of = {"counter": _counter_panels, "histogram": _histogram_panels}.get(
        metric["instrument"], _value_panels
    )
    return panels_of(metric, ", ".join(labels), legend, service)


def plugin_rows(registry: Registry) -> list[Row]:
    """One row per facade, in declaration order, with the panels of its metrics."""
    facades: dict[str, list[Panel]] = {}
    for metric in registry.metrics:
        facades.setdefault(metric["facade"] or "Metrics", []).extend(metric_panels(metric))
    return list(facades.items())


def render_plugin_dashboard(registry: Registry) -> str:
    """A plugin's Grafana dashboard (JSON text), derived from its registry."""
    name = Path(registry.source).stem
    dashboard = build(
        plugin_rows(registry),
        title=f"meshmetrics plugin: {name}",
        uid=re.sub(r"[^A-Za-z0-9_-]", "-", f"meshmetrics-{name}")[:40],  # Grafana's uid: 40 of these at most
        description=f"Derived from {Path(registry.source).name} by meshmetrics; regenerate it, do not edit.",
        tags=["meshmetrics", "meshmetrics-plugin", name],
        service_series=service_series(registry),
    )
    return render(dashboard)
