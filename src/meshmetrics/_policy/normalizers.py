"""Value normalisers users can plug in per attribute (``configure(normalizers=...)``).

A normaliser turns a raw label value into a low-cardinality one before the
cardinality policy sees it, e.g. a URL path into its route template.
"""

from __future__ import annotations

import re

_ID_SEGMENT = re.compile(
    r"^(\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,})$"
)


def template_path(value: str) -> str:
    """Replace identifier segments of a path: ``/users/123/orders/9`` -> ``/users/{id}/orders/{id}``.

    Numbers, UUIDs and long hex strings count as identifiers; the query string is dropped.
    """
    path = value.split("?", 1)[0]
    return "/".join("{id}" if _ID_SEGMENT.match(segment) else segment for segment in path.split("/"))


def status_class(value: str) -> str:
    """An HTTP status code to its class: ``503`` -> ``5xx``; anything else unchanged."""
    if len(value) == 3 and value.isdigit() and value[0] in "12345":  # noqa: PLR2004 - HTTP status codes
        return value[0] + "xx"
    return value
