"""Is a unit string UCUM? The subset of the Unified Code for Units of Measure that metrics use.

OpenTelemetry's semantic conventions take units in UCUM's case-sensitive form:
``s``, ``ms``, ``By``, ``KiBy``, ``1``, ``%``, ``{request}``, ``By/s``,
``{request}/s``. A unit is terms joined by ``.`` (times) or ``/`` (per); a
term is an annotation in braces, the number 1, or a unit atom with an
optional metric or binary prefix and an optional integer exponent, and may
carry an annotation of its own (``By{compressed}``).
"""

from __future__ import annotations

import re

# Atoms metrics use (UCUM's base units and the common derived ones), case-sensitive.
ATOMS = frozenset(
    {
        "s", "min", "h", "d", "wk", "mo", "a",  # time
        "By", "bit",  # information
        "m", "g", "L", "K", "Cel",  # length, mass, volume, temperature
        "Hz", "J", "W", "A", "V", "Ohm", "C", "N", "Pa", "Bd",  # derived units
        "%", "rad", "sr",  # dimensionless
    }
)  # fmt: skip
# Prefixes that may stand before an atom: metric (u is UCUM's ASCII micro) and binary.
PREFIXES = ("Ki", "Mi", "Gi", "Ti", "Pi", "k", "M", "G", "T", "P", "E", "m", "u", "n", "p", "c", "d")
# Atoms that take no prefix (a "kmin" is not a unit).
_UNPREFIXED = frozenset({"min", "h", "d", "wk", "mo", "a", "%", "Cel"})
_ANNOTATION = r"\{[!-z|~]*\}"  # printable ASCII but braces
_TERM = re.compile(
    rf"^(?:{_ANNOTATION}|1|(?P<unit>[A-Za-z%]+)(?P<exponent>-?[1-9][0-9]*)?(?:{_ANNOTATION})?)$"
)
_HINTS = {
    "seconds": "s",
    "second": "s",
    "sec": "s",
    "secs": "s",
    "milliseconds": "ms",
    "millis": "ms",
    "bytes": "By",
    "byte": "By",
    "B": "By",
    "kb": "kBy",
    "KB": "kBy",
    "MB": "MBy",
    "percent": "%",
    "ratio": "1",
    "count": "1 or {thing}",
    "requests": "{request}",
}


def _atom_ok(unit: str) -> bool:
    if unit in ATOMS:
        return True
    for prefix in PREFIXES:
        rest = unit[len(prefix) :]
        if unit.startswith(prefix) and rest in ATOMS and rest not in _UNPREFIXED:
            return not (prefix in ("Ki", "Mi", "Gi", "Ti", "Pi") and rest not in ("By", "bit"))
    return False


def problem(unit: str) -> str | None:
    """Why ``unit`` is not UCUM, or None when it is."""
    if not unit:
        return "is empty (a dimensionless count is '1', or an annotation such as '{request}')"
    for term in re.split(r"[./](?![^{}]*\})", unit):  # not a . or / inside an annotation
        match = _TERM.fullmatch(term)
        atom = match.group("unit") if match else None
        if match is None or (atom is not None and not _atom_ok(atom)):
            hint = _HINTS.get(unit) or _HINTS.get(term)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            return (
                f"is not UCUM: {term!r} is not a UCUM unit{suggestion}; use e.g. 's', 'ms', 'By', '1', "
                "'{request}', 'By/s'"
            )
    return None
