"""The retry budget, reported: its gauge, and calls it stopped (exhaust_reason="budget")."""

from __future__ import annotations

from meshmetrics import RetryMetrics
from meshmetrics.testing import capture


def test_retry_budget_gauge_and_budget_exhaustion():
    with capture(strict=False) as captured:
        retries = RetryMetrics()
        retries.set_budget_remaining("api", 3)
        retries.set_budget_remaining("api", 0)
        retries.set_budget_remaining("api", -1)  # invalid: dropped, counted, the gauge keeps 0
        with retries.track_call("api", "get") as call:
            call.attempt()
            call.failed(503)
            call.give_up("budget")
        assert captured.value("mesh.retry.budget.remaining", service="api") == 0
        assert captured.value("mesh.retry.exhausted", service="api", exhaust_reason="budget") == 1
        assert captured.value("meshmetrics.measurements.rejected", metric="mesh.retry.budget.remaining") == 1
