"""Metrics for `backoff <https://github.com/litl/backoff>`_ retries.

One line: pass the handlers to backoff's decorator::

    from meshmetrics.integrations.backoff import handlers

    @backoff.on_exception(backoff.expo, ConnectionError, max_tries=3, **handlers(service="users"))
    def get_user(user_id): ...

backoff reports each retry (``on_backoff``), the final failure (``on_giveup``)
and success (``on_success``) with the number of tries, so everything is
recorded from its handlers. Existing handlers can be passed too: backoff
accepts a list per event. A give-up after more than one try counts in
``mesh.retry.exhausted`` (as ``deadline`` when ``max_time`` is given and was
reached, else ``max_attempts``); a give-up on the first try is an error backoff
was told not to retry. A give-up on an open circuit breaker's error (pybreaker's
``CircuitBreakerError``, purgatory's ``OpenedState``) counts as ``circuit_open``,
on any try.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshmetrics._retry import RetryMetrics
from meshmetrics.integrations._shared import (
    DEFAULT_SERVICE,
    is_circuit_open,
    never_raises,
    operation_name,
)

__all__ = ["handlers"]

Details = dict[str, Any]


def handlers(
    *,
    service: str = DEFAULT_SERVICE,
    operation: str | None = None,
    max_time: float | None = None,
    metrics: RetryMetrics | None = None,
) -> dict[str, Callable[[Details], None]]:
    """``on_backoff``, ``on_giveup`` and ``on_success`` handlers recording retry metrics.

    ``operation`` defaults to the decorated function's qualified name. Pass the
    same ``max_time`` you give backoff so that a deadline is told from an
    attempt limit.
    """
    retry_metrics = metrics or RetryMetrics()

    def name(details: Details) -> str:
        return operation or operation_name(details.get("target"))

    def finish(details: Details, *, succeeded: bool) -> None:
        retry_metrics.record_attempt(service, name(details), int(details["tries"]))
        retry_metrics.record_call(
            service,
            name(details),
            succeeded=succeeded,
            attempts=int(details["tries"]),
            duration=float(details.get("elapsed", 0.0)),
        )

    def on_backoff(details: Details) -> None:
        # details["tries"] is the attempt that just failed; the last one is recorded by finish()
        retry_metrics.record_attempt(service, name(details), int(details["tries"]))
        retry_metrics.record_error(service, name(details), details.get("exception", "retry_on_result"))
        retry_metrics.record_delay(service, name(details), float(details["wait"]))

    def on_giveup(details: Details) -> None:
        retry_metrics.record_error(service, name(details), details.get("exception", "retry_on_result"))
        finish(details, succeeded=False)
        if is_circuit_open(details.get("exception")):
            retry_metrics.record_exhausted(service, name(details), "circuit_open")
        elif int(details["tries"]) > 1:
            elapsed = float(details.get("elapsed", 0.0))
            reason = "deadline" if max_time is not None and elapsed >= max_time else "max_attempts"
            retry_metrics.record_exhausted(service, name(details), reason)

    def on_success(details: Details) -> None:
        finish(details, succeeded=True)

    return {
        "on_backoff": never_raises(on_backoff),
        "on_giveup": never_raises(on_giveup),
        "on_success": never_raises(on_success),
    }
