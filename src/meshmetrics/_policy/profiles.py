"""Detail profiles: which declared attributes each ``configure(detail=...)`` keeps.

The runtime drops the other keys before a series is created (and the Views
wired by ``configure()`` allow the same keys on the SDK path), so they never
reach an exporter. ``tools/gen_conventions.py`` uses the same function for the
reference.
"""

from __future__ import annotations

from collections.abc import Iterable

DETAILS = ("standard", "minimal")
ALIASES = {"full": "standard"}
"""``full`` kept every attribute, as ``standard`` does: one profile, the old name still accepted."""

# A histogram series costs one time series per bucket; per-instance latency
# multiplies that by the number of instances, the most expensive thing we emit.
_MINIMAL_HISTOGRAM_DROPS = frozenset({"mesh.instance"})


def kept_keys(instrument: str, keys: Iterable[str], detail: str) -> tuple[str, ...]:
    """Return the attribute keys of a metric that the ``detail`` profile keeps, in order."""
    detail = ALIASES.get(detail, detail)
    if detail not in DETAILS:
        raise ValueError(f"detail={detail!r} is not one of {', '.join((*DETAILS, *ALIASES))}")
    if detail == "minimal" and instrument == "histogram":
        return tuple(key for key in keys if key not in _MINIMAL_HISTOGRAM_DROPS)
    return tuple(keys)
