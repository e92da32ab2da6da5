"""Detail profiles: which declared attributes each ``configure(detail=...)`` keeps.

The runtime drops the other keys before a series is created (and the Views
wired by ``configure()`` allow the same keys on the SDK path), so they never
reach an exporter. The metric reference is generated with the same function.
Each attribute declares its own rule for ``minimal`` in its registry
(``annotations.meshmetrics.minimal``): ``keep`` (the default), ``drop``, or
``drop_on_histograms`` (a histogram series costs one time series per bucket,
so per-instance latency is the most expensive thing a mesh emits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshmetrics._definitions import AttributeDefinition, MetricDefinition

DETAILS = ("standard", "minimal")
ALIASES = {"full": "standard"}
"""``full`` kept every attribute, as ``standard`` does: one profile, the old name still accepted."""


def kept_keys(
    metric: MetricDefinition, attributes: Mapping[str, AttributeDefinition], detail: str
) -> tuple[str, ...]:
    """Return the attribute keys of ``metric`` that the ``detail`` profile keeps, in order."""
    detail = ALIASES.get(detail, detail)
    if detail not in DETAILS:
        raise ValueError(f"detail={detail!r} is not one of {', '.join((*DETAILS, *ALIASES))}")
    keys: Iterable[str] = (use.key for use in metric.attributes)
    if detail == "standard":
        return tuple(keys)
    histogram = metric.instrument == "histogram"
    return tuple(
        key
        for key in keys
        if (rule := attributes[key].minimal) == "keep" or (rule == "drop_on_histograms" and not histogram)
    )
