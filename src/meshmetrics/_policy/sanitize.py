"""Make any label value safe for every exporter: bounded length, printable, valid UTF-8."""

from __future__ import annotations

import enum
import re

EMPTY = "_EMPTY"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# Trimmed from both ends: whitespace and control characters (a trailing "\n\x00" is noise).
_TRIM = "".join(chr(c) for c in (*range(0x21), *range(0x7F, 0xA1))) + "\u2028\u2029"


class NotALabelError(TypeError):
    """The value cannot be turned into a label value."""


def to_label(value: object, max_length: int) -> str:
    """Return ``value`` as a safe label string.

    Strings are trimmed, control characters and lone surrogates replaced by
    U+FFFD, and cut to ``max_length`` characters; bytes are decoded as UTF-8
    with invalid sequences replaced; integers (below 10**18) and enum members are converted;
    an empty result becomes ``_EMPTY``. Anything else raises :class:`NotALabelError`.
    """
    if type(value) is str:
        text = value[: max_length * 4]
    elif isinstance(value, str):  # a subclass: take the characters, bypassing its methods
        text = str.__getitem__(value, slice(0, max_length * 4))
    elif isinstance(value, enum.Enum):
        return to_label(value.value, max_length)
    elif isinstance(value, (bytes, bytearray)):
        text = bytes(value[: max_length * 4]).decode("utf-8", errors="replace")
    elif isinstance(value, int) and not isinstance(value, bool) and -(10**18) < value < 10**18:
        text = int.__repr__(value)
    else:
        raise NotALabelError(type(value).__name__)
    text = text.strip(_TRIM)
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(REPLACEMENT, text)
    if len(text) > max_length:
        text = text[:max_length]
    return text or EMPTY
