"""Serving ``/metrics`` safely: authentication and the response, shared by every server.

The built-in HTTP server, the WSGI app and the ASGI app all answer through
:func:`respond`, so they authenticate and behave the same: any method but
``GET`` or ``HEAD`` gets ``405`` with ``Allow``, any path but ``/metrics``
``404``, a missing or wrong credential ``401`` with ``WWW-Authenticate``.
``HEAD`` gets exactly the headers ``GET`` would (``Content-Length`` included).

The format follows ``Accept``: Prometheus text 0.0.4 by default, OpenMetrics
(with exemplars) when asked for, and, only when ``native_histograms`` is on
and the scraper ranks it first, the delimited protobuf that carries native
histograms. The text formats never show native-histogram samples.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from meshmetrics._log import RateLimitedLog
from meshmetrics._serve import protobuf
from meshmetrics._serve.translate import without_native

METRICS_PATH = "/metrics"
REALM = "meshmetrics"
ALLOWED_METHODS = ("GET", "HEAD")
ALLOW = ", ".join(ALLOWED_METHODS)
# the response depends on both: Accept picks the format, Accept-Encoding the compression
VARY = "Accept, Accept-Encoding"

Headers = list[tuple[str, str]]

_failures = RateLimitedLog()


@dataclass(frozen=True)
class EndpointAuth:
    """Credentials a scrape must present: a bearer token, HTTP basic auth, or either.

    An empty or whitespace-only secret is refused here, so no configuration
    path can turn "a credential is required" into "an empty one will do".
    """

    bearer_token: str | None = field(default=None, repr=False)
    basic_username: str | None = field(default=None, repr=False)
    basic_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """Refuse blank secrets, naming the field (never its value)."""
        for name in ("bearer_token", "basic_username", "basic_password"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"EndpointAuth: {name} must not be empty or whitespace")
        if (self.basic_username is None) != (self.basic_password is None):
            raise ValueError("EndpointAuth: basic_username and basic_password go together")
        if self.basic_username is not None and ":" in self.basic_username:
            raise ValueError("EndpointAuth: basic_username must not contain ':' (RFC 7617)")

    @property
    def required(self) -> bool:
        """True when some credential is configured."""
        return self.bearer_token is not None or self.basic_username is not None

    def allows(self, authorization: str | None) -> bool:
        """Check an ``Authorization`` header, comparing secrets in constant time."""
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if not credentials:
            return False
        scheme = scheme.lower()
        if scheme == "bearer" and self.bearer_token is not None:
            return _same(credentials, self.bearer_token)
        if scheme == "basic" and self.basic_username is not None:
            return self._basic_matches(credentials)
        return False

    def _basic_matches(self, credentials: str) -> bool:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, sep, password = decoded.partition(":")
        # compare the whole pair at once so timing reveals neither part
        return bool(sep) and _same(f"{username}:{password}", f"{self.basic_username}:{self.basic_password}")

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value for a 401."""
        if self.bearer_token is not None:
            return f'Bearer realm="{REALM}"'
        return f'Basic realm="{REALM}", charset="UTF-8"'


def _same(given: str, expected: str) -> bool:
    # digests first: equal lengths, so the comparison's timing tells nothing, not even the length
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip: its own q (or else ``*``'s) above 0."""
    if not accept_encoding:
        return False
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0  # unreadable: identity is always safe
        if coding:
            weights.setdefault(coding.lower(), weight)
    for coding in ("gzip", "x-gzip", "*"):
        if coding in weights:
            return 0.0 < weights[coding] <= 1.0
    return False


def respond(
    *,
    method: str,
    path: str,
    authorization: str | None,
    accept: str | None,
    accept_encoding: str | None,
    registry: CollectorRegistry,
    auth: EndpointAuth,
    native_histograms: bool = False,
) -> tuple[int, Headers, bytes]:
    """Answer one request: (status, headers including ``Content-Length``, body).

    ``native_histograms`` allows the protobuf format (off: text formats only).

    Every response carries ``Vary: Accept, Accept-Encoding``. For ``HEAD`` the
    body is empty and every header, ``Content-Length`` too, is the one ``GET``
    would send.
    """
    head = method == "HEAD"
    if method not in ALLOWED_METHODS:
        return _plain(405, "Method Not Allowed", head, [("Allow", ALLOW)])
    if path.split("?", 1)[0] != METRICS_PATH:
        return _plain(404, "Not Found", head)
    if not auth.allows(authorization):
        return _plain(401, "Unauthorized", head, [("WWW-Authenticate", auth.challenge())])
    encoder, content_type = _encoder(accept, native_histograms)
    try:
        body = encoder(registry)
    except Exception as error:
        _failures.warning("exposition", "metrics_exposition_failed", error=type(error).__qualname__)
        return _plain(500, "Internal Server Error", head)
    headers = [("Content-Type", content_type), ("Vary", VARY)]
    if accepts_gzip(accept_encoding):
        body = gzip.compress(body, mtime=0)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    return 200, headers, b"" if head else body


class _TextView:
    """A registry's families without native-histogram samples, which the text formats cannot show."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return without_native(self._registry.collect())


def _encoder(accept: str | None, native_histograms: bool) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    if native_histograms and prefers_protobuf(accept):
        return (lambda registry: protobuf.encode(registry.collect())), protobuf.CONTENT_TYPE
    text_encoder, content_type = choose_encoder(accept or "")
    return (lambda registry: text_encoder(_TextView(registry))), content_type


def prefers_protobuf(accept: str | None) -> bool:
    """Whether ``Accept`` offers the delimited ``MetricFamily`` protobuf with the highest weight."""
    best_other = 0.0
    protobuf_weight = 0.0
    for item in (accept or "").split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        options: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            options[key.strip().lower()] = value.strip().strip('"')
        try:
            weight = float(options.get("q", "1"))
        except ValueError:
            weight = 0.0
        if (
            media_type.lower() == "application/vnd.google.protobuf"
            and options.get("proto") == "io.prometheus.client.MetricFamily"
            and options.get("encoding") == "delimited"
        ):
            protobuf_weight = max(protobuf_weight, weight)
        elif media_type:
            best_other = max(best_other, weight)
    return 0.0 < protobuf_weight <= 1.0 and protobuf_weight >= best_other


def _plain(status: int, text: str, head: bool, extra: Headers | None = None) -> tuple[int, Headers, bytes]:
    body = f"{text}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        *(extra or []),
        ("Vary", VARY),
        ("Content-Length", str(len(body))),
    ]
    return status, headers, b"" if head else body
