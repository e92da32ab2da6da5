"""Mesh metrics for `requests <https://requests.readthedocs.io>`_ sessions.

One line: instrument the session (it mounts :class:`MeshAdapter` for ``http://``
and ``https://``)::

    from meshmetrics.integrations.requests import instrument_session

    session = instrument_session(requests.Session(), service="users")

or mount the adapter yourself, e.g. with urllib3 retries:
``session.mount("http://", MeshAdapter(service="users", max_retries=3))`` (then
each urllib3 retry is inside one recorded request: mount it without
``max_retries`` and retry above requests to count every attempt).

Records the same metrics as the httpx integration, with the same options
(``service``, ``strategy``, ``route``, ``failure_status``) and the same
:func:`routing` context for a balancer of your own. A refused connection or a
connect timeout counts in ``mesh.lb.connection.failures``. The duration runs
until the response headers arrive. requests' exceptions propagate unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from meshmetrics.integrations._client import (
    CLIENT_OPTIONS,
    Attempt,
    ClientMetrics,
    ClientOptions,
    instance_name,
    routing,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # a dependency of opentelemetry-api

__all__ = ["MeshAdapter", "instrument_session", "routing"]

_DEFAULT_PORTS = {"https": 443}


def _connect_failure(error: BaseException) -> bool:
    """A refused connection or a connect timeout, as requests wraps them."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError) and error.args:
        cause = error.args[0]
        reason = cause.reason if isinstance(cause, MaxRetryError) else cause
        return isinstance(reason, ConnectTimeoutError)  # NewConnectionError is one too
    return False


class AdapterOptions(ClientOptions, total=False):
    """:class:`ClientOptions` and ``HTTPAdapter``'s own."""

    pool_connections: int
    pool_maxsize: int
    max_retries: Any
    pool_block: bool


class MeshAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` recording mesh metrics for every request it sends."""

    def __init__(self, **options: Unpack[AdapterOptions]) -> None:
        """The options of the module, plus ``HTTPAdapter``'s own (``pool_maxsize``, ...)."""
        given: dict[str, Any] = dict(options)
        client = {key: given.pop(key) for key in CLIENT_OPTIONS if key in given}
        super().__init__(**given)
        self.metrics = ClientMetrics(**client)

    def _begin(self, request: requests.PreparedRequest) -> Attempt | None:
        try:
            url = urlsplit(request.url or "")
            host = url.hostname or ""
            port = url.port or _DEFAULT_PORTS.get(url.scheme, 80)
            operation = self.metrics.http_operation((request.method or "GET").upper(), url.path or "/")
        except Exception:
            return self.metrics.begin("unknown:0", None)
        return self.metrics.begin(instance_name(host, port), operation)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        """Send ``request``, recording the attempt."""
        attempt = self._begin(request)
        try:
            response = super().send(request, *args, **kwargs)
        except BaseException as error:  # an interrupted call ended too: it must leave calls.active
            if attempt is not None:
                attempt.end(error, connect_failure=_connect_failure(error))
            raise
        if attempt is not None:
            attempt.end_http(response.status_code)
        return response


def instrument_session(
    session: requests.Session,
    *,
    prefixes: tuple[str, ...] = ("http://", "https://"),
    **options: Unpack[AdapterOptions],
) -> requests.Session:
    """Mount one :class:`MeshAdapter` on ``session`` for ``prefixes`` and return the session."""
    adapter = MeshAdapter(**options)
    for prefix in prefixes:
        session.mount(prefix, adapter)
    return session
