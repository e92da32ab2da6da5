"""Python generated from a registry: meshmetrics' ``semconv`` module, and a plugin's facades.

Both carry the same constants and definitions (``ATTR_*``, ``METRIC_*``, one
class per enum attribute, ``ATTRIBUTES``, ``METRICS``, ``CONVENTIONS``); a
plugin's module adds one facade class per declared ``facade``, one method
per instrument, with a typed keyword argument per attribute.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from pathlib import Path
from typing import Any

from meshmetrics._conventions.document import ConventionsError
from meshmetrics._conventions.loader import Registry
from meshmetrics._conventions.names import (
    IMPORTED_NAMES,
    VALUE_CHECKS,
    enum_member,
    prometheus_label,
    python_name,
)
from meshmetrics._policy.core import MAX_COUNT

_WIDTH = 110  # the line length of the generated code
_TIME_UNITS = frozenset({"s", "ms", "us", "ns", "min", "h", "d"})


def _literal(text: str) -> str:
    """``text`` as a Python string literal, double-quoted where it can be (the house style)."""
    shown = repr(text)
    if shown.startswith("'") and '"' not in text:
        shown = '"' + shown[1:-1].replace("\\'", "'") + '"'
    return shown


def enum_class(key: str) -> str:
    """``mesh.circuit_breaker.state`` -> ``MeshCircuitBreakerStateValues``."""
    return "".join(part.capitalize() for part in re.split(r"[._]", key)) + "Values"


def _own(registry: Registry) -> dict[str, dict[str, Any]]:
    return {key: a for key, a in registry.attributes.items() if a["defined_here"]}


def definitions(registry: Registry, source: str) -> list[str]:
    """Constants, enum classes and the typed definitions of ``registry`` (declared at ``source``)."""
    attributes = _own(registry)
    metrics = registry.metrics
    out = ["# Attribute keys."]
    out.extend(f'ATTR_{python_name(key)}: Final = "{key}"' for key in attributes)
    out += ["", "# Metric names."]
    out.extend(f'METRIC_{python_name(metric["name"])}: Final = "{metric["name"]}"' for metric in metrics)
    out.append("")
    for key, attribute in attributes.items():
        if attribute["type"] != "enum":
            continue
        out += ["", f"class {enum_class(key)}:", f'    """Allowed values of ``{key}``."""', ""]
        for value in attribute["allowed_values"]:
            member = enum_member(key, value)
            out.append(f"    {member}: Final = {_literal(value)}")
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
            *([f'        minimal="{attribute["minimal"]}",'] if attribute["minimal"] != "keep" else []),
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
            f"        unit={_literal(metric['unit'])},",
            f"        brief={metric['brief']!r},",
            f'        stability="{metric["stability"]}",',
            f"        attributes=({uses}{',' if uses else ''}),",
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
        f"CONVENTIONS: Final = Conventions({source!r}, ATTRIBUTES, METRICS)",
        '"""This registry\'s definitions, as one unit."""',
        "",
    ]
    return out


def prometheus_samples(metric: dict[str, Any]) -> tuple[str, ...]:
    """Sample names a metric exposes: a histogram's _bucket, _sum and _count, else its name."""
    name = metric["prometheus_name"]
    if metric["instrument"] == "histogram":
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)


def render_semconv(registry: Registry) -> str:
    """Meshmetrics' ``semconv`` module."""
    metrics = registry.metrics
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
        "from meshmetrics._definitions import (",
        "    AttributeDefinition,",
        "    AttributeUse,",
        "    Conventions,",
        "    MetricDefinition,",
        ")",
        "",
        *definitions(registry, "meshmetrics"),
        "# Prometheus exposition: the metric's base name, every sample name it exposes,",
        "# and each attribute's label name. Dashboards, rules and `meshmetrics top` use these.",
        "PROMETHEUS_NAMES: Final[dict[str, str]] = {",
    ]
    out.extend(f'    "{metric["name"]}": "{metric["prometheus_name"]}",' for metric in metrics)
    out += ["}", "", "PROMETHEUS_SAMPLES: Final[dict[str, tuple[str, ...]]] = {"]
    for metric in metrics:
        names = prometheus_samples(metric)
        samples = ", ".join(f'"{sample}"' for sample in names)
        comma = "," if len(names) == 1 else ""
        out.append(f'    "{metric["name"]}": ({samples}{comma}),')
    out += ["}", "", "PROMETHEUS_LABELS: Final[dict[str, str]] = {"]
    out.extend(f'    "{key}": "{prometheus_label(key)}",' for key in registry.attributes)
    out += ["}", ""]
    return "\n".join(out)


# A plugin's facades.


def _value_parameter(metric: dict[str, Any]) -> str:
    if metric["instrument"] in ("counter", "updowncounter"):
        return "amount"
    return {"s": "seconds", "ms": "milliseconds", "By": "size"}.get(metric["unit"], "value")


# Names a generated method's body uses: no keyword argument may shadow them.
_BODY_NAMES = frozenset({"self", "type", "int", "float", "str", "object", "id", "format", *VALUE_CHECKS})


def _parameters(metric: dict[str, Any]) -> dict[str, str]:
    """Attribute key -> keyword: its last word, else its whole name, else that with ``_`` added.

    ``error.type`` is ``error`` (it takes the error itself). A keyword never
    shadows a name the method's body uses nor another keyword.
    """
    keys = [use["key"] for use in metric["attributes"]]
    shorts = ["error" if key == "error.type" else key.rsplit(".", 1)[-1] for key in keys]
    taken = {_value_parameter(metric)} | _BODY_NAMES
    names: dict[str, str] = {}
    for key, short in zip(keys, shorts, strict=True):
        name = short if shorts.count(short) == 1 else re.sub(r"\W", "_", key)
        if name in taken or keyword.iskeyword(name):
            name = re.sub(r"\W", "_", key)
        while name in taken or keyword.iskeyword(name):
            name += "_"
        names[key] = name
        taken.add(name)
    return names


def _method(metric: dict[str, Any], attributes: dict[str, dict[str, Any]], variable: str) -> list[str]:
    names = _parameters(metric)
    required = [use for use in metric["attributes"] if use["requirement_level"] == "required"]
    optional = [use for use in metric["attributes"] if use["requirement_level"] != "required"]
    kind = metric["instrument"]
    value = _value_parameter(metric)

    def annotation(key: str) -> str:
        return "object" if key == "error.type" else "str"

    parameters = [f"{names[use['key']]}: {annotation(use['key'])}" for use in required]
    if kind in ("counter", "updowncounter"):
        parameters.append(f"{value}: float = 1")
    else:
        parameters.append(f"{value}: float")
    if optional:
        parameters.append("*")
        parameters += [f"{names[use['key']]}: {annotation(use['key'])} | None = None" for use in optional]
    values = ", ".join(
        f"error_type({names[use['key']]})" if use["key"] == "error.type" else names[use["key"]]
        for use in metric["attributes"]
    )
    values = f"({values}{',' if len(metric['attributes']) == 1 else ''})"
    verb = {
        "counter": "Add ``amount`` to",
        "updowncounter": "Add ``amount`` (negative to subtract) to",
        "histogram": f"Record ``{value}`` on",
        "gauge": f"Set to ``{value}``:",
    }[kind]
    doc = [f'        """{verb} ``{metric["name"]}``.', ""]  # names are checked: nothing to escape
    doc += _wrap(f"{metric['brief']} Unit: ``{metric['unit']}``.", 8)
    doc += ["", "        Args:"]
    for use in (*required, *optional):
        attribute = attributes[use["key"]]
        described = attribute["brief"]
        if attribute["type"] == "enum":
            described += " One of: " + ", ".join(f"``{v}``" for v in attribute["allowed_values"]) + "."
        if use["requirement_level"] != "required":
            described += f" Optional ({use['requirement_level'].replace('_', ' ')}"
            described += f": {use['condition']})." if use["condition"] else ")."
        doc += _wrap(f"{names[use['key']]}: ``{use['key']}``. {described}", 12, hanging=4)
    doc += _wrap(f"{value}: {_value_doc(metric)}", 12, hanging=4)
    doc.append('        """')
    one_line = f"    def {metric['method']}(self, {', '.join(parameters)}) -> None:"
    header = (
        [one_line]
        if len(one_line) <= _WIDTH
        else [
            f"    def {metric['method']}(",
            "        self,",
            *(f"        {parameter}," if parameter != "*" else "        *," for parameter in parameters),
            "    ) -> None:",
        ]
    )
    body: list[str]
    if kind in ("counter", "updowncounter"):
        low = 0 if kind == "counter" else -MAX_COUNT
        body = [
            f"        if {value} is _ONE or type({value}) is int and {low} <= {value} <= {MAX_COUNT}:",
            f"            self._add({variable}, {value}, {values})",
            "        else:",
            f'            self._add_checked({variable}, "{value}", {value}, {values})',
        ]
    else:
        validator = _validator(metric)
        body = [f'        self._measure({variable}, {validator}, "{value}", {value}, {values})']
    return [*header, *doc, *body]


def _validator(metric: dict[str, Any]) -> str:
    """The check of a recorded value: ``duration`` (seconds, with its fast path), >= 0 for time, or finite."""
    if metric["unit"] == "s":
        return "duration"
    return "non_negative" if metric["unit"] in _TIME_UNITS else "real"


def _value_doc(metric: dict[str, Any]) -> str:
    kind, unit = metric["instrument"], metric["unit"]
    if kind == "counter":
        return f"How much to add, in ``{unit}`` (default 1); a finite number >= 0."
    if kind == "updowncounter":
        return f"How much to add, in ``{unit}`` (default 1); a finite number."
    if unit in _TIME_UNITS:
        return f"In ``{unit}``; a finite number >= 0."
    return f"In ``{unit}``; a finite number."


def _docstring_text(text: str) -> str:
    """``text`` safe inside a triple-quoted docstring: a registry's brief cannot end it early."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _wrap(text: str, indent: int, *, first: str = "", hanging: int = 0) -> list[str]:
    """``text`` as docstring lines within the line length, indented, later lines hanging further."""
    return textwrap.wrap(
        _docstring_text(text),
        _WIDTH,
        initial_indent=" " * indent + first,
        subsequent_indent=" " * (indent + hanging),
        break_long_words=False,
        break_on_hyphens=False,
    )


def render_plugin(registry: Registry, source: str, command: str) -> str:
    """A plugin's module: its definitions and one facade class per declared ``facade``.

    ``source`` names the registry as the module records it; ``command`` is
    how to regenerate the module, quoted in its docstring.
    """
    facades: dict[str, list[dict[str, Any]]] = {}
    for metric in registry.metrics:
        facades.setdefault(metric["facade"], []).append(metric)
    uses_error = any(use["key"] == "error.type" for m in registry.metrics for use in m["attributes"])
    helpers = sorted(
        {_validator(m) for m in registry.metrics if m["instrument"] in ("histogram", "gauge")}
        | ({"error_type"} if uses_error else set())
    )
    imported = "".join(f"    {name},\n" for name in (*IMPORTED_NAMES, *helpers))
    out = [
        f'"""Metrics of ``{_docstring_text(Path(source).name)}``: names, definitions and typed facades.',
        "",
        f"Generated by meshmetrics from ``{_docstring_text(source)}``; do not edit by hand.",
        "Regenerate with::",
        "",
        f"    {_docstring_text(command)}",
        "",
        "and check that it is current (in CI) by adding ``--check``.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        f"from meshmetrics.plugins import (\n{imported})",
        "",
        "__all__ = [" + ", ".join(f'"{name}"' for name in ("CONVENTIONS", *facades)) + "]",
        "",
        *definitions(registry, source),
    ]
    variables: dict[str, str] = {}
    if any(metric["instrument"] in ("counter", "updowncounter") for metric in registry.metrics):
        out += ["_ONE: Final = 1  # the default amount: one identity test, then no validator call", ""]
    for metric in registry.metrics:
        variables[metric["name"]] = f"_{python_name(metric['name'])}"
        out.append(f"{variables[metric['name']]} = METRICS[METRIC_{python_name(metric['name'])}]")
    for facade, metrics in facades.items():
        names = ", ".join(f"``{m['name']}``" for m in metrics)
        out += [
            "",
            "",
            f"class {facade}(PluginFacade):",
            *_wrap(f"Records {names}.", 4, first='"""'),
            "",
            "    Like meshmetrics' own facades: cheap, never raises in production mode (an",
            "    invalid measurement is dropped, counted and logged), bounded by the",
            "    registry's cardinality policies, and a no-op before ``configure()``.",
            "    Pass ``meter_provider=`` to record to a provider of your own.",
            '    """',
            "",
            "    __slots__ = ()",
            "    conventions = CONVENTIONS",
        ]
        for metric in metrics:
            out.append("")
            out += _method(metric, registry.attributes, variables[metric["name"]])
    out.append("")
    return _compiled("\n".join(out), source)


def _compiled(text: str, source: str) -> str:
    """``text``, once it is known to compile: a last guard against a registry the checks missed."""
    try:
        compile(text, source, "exec")
    except SyntaxError as error:
        raise ConventionsError(
            f"{source}: the module generated from it does not compile ({error.msg}, generated line "
            f"{error.lineno}); a name in the registry is not usable in Python"
        ) from None
    return text
