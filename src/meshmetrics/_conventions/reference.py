"""The Markdown metric reference of a registry: meshmetrics' own, or a plugin's."""

from __future__ import annotations

from typing import Any

from meshmetrics._conventions.loader import (
    COUNTERPART_SYSTEMS,
    Registry,
    attribute_definition,
    metric_definition,
)
from meshmetrics._policy.profiles import DETAILS, kept_keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _attribute_list(metric: dict[str, Any]) -> str:
    return ", ".join(
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


def render_reference(registry: Registry, title: str, intro: list[str]) -> str:
    """The reference: metrics, buckets, multiprocess rules, counterparts, notes, profiles, attributes."""
    attributes, metrics = registry.attributes, registry.metrics
    out = [f"# {title}", "", *intro, "", "## Metrics", ""]
    out += [
        "| metric | Prometheus name | kind | unit | attributes | facade | description |",
        "|---|---|---|---|---|---|---|",
    ]
    out.extend(
        f"| `{metric['name']}` | `{metric['prometheus_name']}` | {metric['instrument']} | `{metric['unit']}` "
        f"| {_attribute_list(metric)} | {metric['facade']} | {_cell(metric['brief'])} |"
        for metric in metrics
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
    if any(metric["counterparts"] for metric in metrics):
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
    definitions = {key: attribute_definition(attribute) for key, attribute in attributes.items()}
    out += [
        "",
        "## Detail profiles",
        "",
        "`configure(detail=...)` chooses which attributes reach the exporters. Only metrics whose",
        "attributes differ between profiles are listed.",
        "",
        "| metric | " + " | ".join(DETAILS) + " |",
        "|---|" + "---|" * len(DETAILS),
    ]
    for metric in metrics:
        kept = [kept_keys(metric_definition(metric), definitions, profile) for profile in DETAILS]
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
        brief = attribute["brief"] + ("" if attribute["defined_here"] else " (meshmetrics' own)")
        out.append(f"| `{key}` | {attribute['type']} | {policy} | {values} | {_cell(brief)} |")
    out.append("")
    return "\n".join(out)
