"""Serving ``/metrics`` safely: authentication and the response, shared by every server.

The built-in HTTP server, the WSGI app and the ASGI app all answer through
:func:`respond`, so they authenticate and behave the same: only ``GET`` or
``HEAD`` of ``/metrics`` is served, a missing or wrong credential gets ``401``
with ``WWW-Authenticate``, anything else ``404`` (or ``405``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

METRICS_PATH = "/metrics"
REALM = "meshmetrics"

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class EndpointAuth:
    """Credentials a scrape must present: a bearer token, HTTP basic auth, or either."""

    bearer_token: str | None = None
    basic_username: str | None = None
    basic_password: str | None = None

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
        scheme = scheme.lower()
        if scheme == "bearer" and self.bearer_token is not None:
            return hmac.compare_digest(credentials.strip().encode(), self.bearer_token.encode())
        if scheme == "basic" and self.basic_username is not None:
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            username, sep, password = decoded.partition(":")
            expected = f"{self.basic_username}:{self.basic_password or ''}".encode()
            # compare the whole pair at once so timing reveals neither part
            return bool(sep) and hmac.compare_digest(f"{username}:{password}".encode(), expected)
        return False

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value for a 401."""
        if self.bearer_token is not None:
            return f'Bearer realm="{REALM}"'
        return f'Basic realm="{REALM}", charset="UTF-8"'


def read_secret_file(path: str) -> str:
    """Read a token or password from a file (trailing newline removed)."""
    return Path(path).read_text(encoding="utf-8").strip()


def respond(
    *,
    method: str,
    path: str,
    authorization: str | None,
    accept: str | None,
    accept_encoding: str | None,
    registry: CollectorRegistry,
    auth: EndpointAuth,
) -> tuple[int, Headers, bytes]:
    """Answer one request: (status, headers, body)."""
    plain = [("Content-Type", "text/plain; charset=utf-8")]
    if path.split("?", 1)[0] != METRICS_PATH:
        return 404, plain, b"Not Found\n"
    if method not in ("GET", "HEAD"):
        return 405, [*plain, ("Allow", "GET, HEAD")], b"Method Not Allowed\n"
    if not auth.allows(authorization):
        return 401, [*plain, ("WWW-Authenticate", auth.challenge())], b"Unauthorized\n"
    encoder, content_type = choose_encoder(accept or "")
    body = encoder(registry)
    headers = [("Content-Type", content_type)]
    if accept_encoding and "gzip" in accept_encoding.lower():
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return 200, headers, b"" if method == "HEAD" else body
