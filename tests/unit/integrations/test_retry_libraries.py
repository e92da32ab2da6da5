"""tenacity, stamina and backoff, used for real: flaky and always-failing functions."""

from __future__ import annotations

import asyncio

import backoff
import pytest
import stamina
import tenacity
from stamina.instrumentation import set_on_retry_hooks

from meshmetrics.integrations import backoff as mm_backoff
from meshmetrics.integrations import stamina as mm_stamina
from meshmetrics.integrations import tenacity as mm_tenacity
from meshmetrics.testing import capture


def Flaky(failures: int, error: type[Exception] = ConnectionError):  # noqa: N802 - reads as a thing
    """A function that fails ``failures`` times with ``error``, then returns "ok"."""
    calls = [0]

    def fetch() -> str:
        calls[0] += 1
        if calls[0] <= failures:
            raise error("boom")
        return "ok"

    return fetch


def assert_flaky_success(c, service: str, delays: float) -> None:
    assert c.value("mesh.retry.calls", service=service, outcome="successful_with_retry") == 1
    assert c.value("mesh.retry.calls", service=service) == 1
    for attempt in ("1", "2", "3"):
        assert c.value("mesh.retry.attempts", service=service, attempt=attempt) == 1
    assert c.value("mesh.retry.attempts", service=service) == 3
    per_call = c.histogram("mesh.retry.call.attempts", service=service)
    assert (per_call.count, per_call.sum) == (1, 3)
    delay = c.histogram("mesh.retry.delay", service=service)
    assert delay.count == 2
    assert delay.sum == pytest.approx(delays)
    assert c.value("mesh.retry.errors", service=service, error_type="ConnectionError") == 2
    assert c.histogram("mesh.retry.duration", service=service, outcome="successful_with_retry").count == 1
    assert c.value("mesh.retry.exhausted", service=service) == 0


def assert_always_fails(c, service: str, attempts: int) -> None:
    assert c.value("mesh.retry.calls", service=service, outcome="failed_with_retry") == 1
    assert c.value("mesh.retry.attempts", service=service) == attempts
    assert c.value("mesh.retry.errors", service=service, error_type="ConnectionError") == attempts
    assert c.value("mesh.retry.exhausted", service=service, exhaust_reason="max_attempts") == 1
    assert c.histogram("mesh.retry.call.attempts", service=service).sum == attempts


# tenacity


def test_tenacity_flaky_then_success():
    with capture() as c:
        flaky = Flaky(2)
        wrapped = mm_tenacity.retry(
            service="users", stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(0.01)
        )(flaky)
        assert wrapped() == "ok"
    assert_flaky_success(c, "users", delays=0.02)
    assert c.series("mesh.retry.calls")[0]["mesh.operation"] == "Flaky.<locals>.fetch"


def test_tenacity_always_fails_with_and_without_reraise():
    with capture() as c:
        for reraise, expected in ((True, ConnectionError), (False, tenacity.RetryError)):
            always = mm_tenacity.retry(
                service=f"svc-{reraise}",
                operation="op",
                stop=tenacity.stop_after_attempt(3),
                wait=tenacity.wait_none(),
                reraise=reraise,
            )(Flaky(99))
            with pytest.raises(expected):
                always()
    assert_always_fails(c, "svc-True", 3)
    assert_always_fails(c, "svc-False", 3)


def test_tenacity_not_retried_error_is_failed_without_retry():
    @mm_tenacity.retry(
        service="users",
        retry=tenacity.retry_if_exception_type(ConnectionError),
        stop=tenacity.stop_after_attempt(3),
    )
    def bad_request() -> None:
        raise ValueError("400")

    with capture() as c, pytest.raises(ValueError):
        bad_request()
    assert c.value("mesh.retry.calls", outcome="failed_without_retry") == 1
    assert c.value("mesh.retry.errors", error_type="ValueError") == 1
    assert c.value("mesh.retry.exhausted") == 0
    assert (
        c.series("mesh.retry.calls")[0]["mesh.operation"]
        == "test_tenacity_not_retried_error_is_failed_without_retry.<locals>.bad_request"
    )


def test_tenacity_deadline_and_error_callback():
    with capture() as c:
        wrapped = mm_tenacity.retry(
            service="slow",
            stop=tenacity.stop_after_delay(0.05),
            wait=tenacity.wait_fixed(0.02),
            retry_error_callback=lambda state: "fallback",
        )(Flaky(10**6))
        assert wrapped() == "fallback"
    assert c.value("mesh.retry.exhausted", service="slow", exhaust_reason="deadline") == 1
    assert c.value("mesh.retry.calls", service="slow", outcome="failed_with_retry") == 1


def test_tenacity_async_and_instrument_retrying():
    async def main() -> str:
        state = {"calls": 0}

        async def flaky() -> str:
            state["calls"] += 1
            if state["calls"] <= 2:
                raise ConnectionError("boom")
            return "ok"

        retrying = mm_tenacity.instrument_retrying(
            tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(0.01)),
            service="orders",
        )
        return await retrying(flaky)

    with capture() as c:
        assert asyncio.run(main()) == "ok"
        flaky = Flaky(2)
        sync = mm_tenacity.instrument_retrying(
            tenacity.Retrying(wait=tenacity.wait_fixed(0.01)), service="users"
        )
        assert sync(flaky) == "ok"
    assert_flaky_success(c, "orders", delays=0.02)
    assert_flaky_success(c, "users", delays=0.02)


def test_tenacity_user_hooks_still_run_and_ours_never_raise():
    seen = []
    with capture(strict=True) as c:
        wrapped = mm_tenacity.retry(
            service=[
                "not",
                "a",
                "label",
            ],  # invalid: every meshmetrics call inside the hooks raises in strict mode
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_none(),
            before=lambda rs: seen.append(rs.attempt_number),
        )(Flaky(1))
        assert wrapped() == "ok"
    assert seen == [1, 2]
    assert c.value("mesh.retry.calls", service="users") == 0


# stamina


@pytest.fixture
def clean_stamina_hooks():
    yield
    set_on_retry_hooks(None)


STAMINA_WAITS = {"wait_initial": 0.01, "wait_max": 1.0, "wait_jitter": 0.0, "wait_exp_base": 2}


def test_stamina_flaky_then_success(clean_stamina_hooks):
    with capture() as c:
        wrapped = mm_stamina.retry(on=ConnectionError, service="users", attempts=5, **STAMINA_WAITS)(Flaky(2))
        assert wrapped() == "ok"
    assert_flaky_success(c, "users", delays=0.03)  # 0.01 then 0.02: exponential backoff


def test_stamina_always_fails(clean_stamina_hooks):
    with capture() as c:
        wrapped = mm_stamina.retry(on=ConnectionError, service="users", attempts=3, **STAMINA_WAITS)(
            Flaky(99)
        )
        with pytest.raises(ConnectionError):
            wrapped()
    assert_always_fails(c, "users", 3)


def test_stamina_async(clean_stamina_hooks):
    state = {"calls": 0}

    async def flaky() -> str:
        state["calls"] += 1
        if state["calls"] <= 2:
            raise ConnectionError
        return "ok"

    with capture() as c:
        wrapped = mm_stamina.retry(on=ConnectionError, service="async-users", attempts=5, **STAMINA_WAITS)(
            flaky
        )
        assert asyncio.run(wrapped()) == "ok"
    assert_flaky_success(c, "async-users", delays=0.03)


def test_stamina_hook_alone_instruments_plain_stamina_retry(clean_stamina_hooks):
    with capture() as c:
        mm_stamina.instrument(service="users")
        plain = stamina.retry(on=ConnectionError, attempts=5, **STAMINA_WAITS)(Flaky(2))
        assert plain() == "ok"
    # stamina calls hooks only for retries: attempts 2 and 3, their causes and waits
    assert c.value("mesh.retry.attempts", attempt="2") == 1
    assert c.value("mesh.retry.attempts", attempt="3") == 1
    assert c.value("mesh.retry.attempts", attempt="1") == 0
    assert c.value("mesh.retry.errors", error_type="ConnectionError") == 2
    assert c.histogram("mesh.retry.delay").sum == pytest.approx(0.03)


# backoff


def test_backoff_flaky_then_success():
    with capture() as c:
        wrapped = backoff.on_exception(
            backoff.constant,
            ConnectionError,
            interval=0.01,
            jitter=None,
            max_tries=5,
            **mm_backoff.handlers(service="users"),
        )(Flaky(2))
        assert wrapped() == "ok"
    assert_flaky_success(c, "users", delays=0.02)


def test_backoff_always_fails():
    with capture() as c:
        wrapped = backoff.on_exception(
            backoff.constant,
            ConnectionError,
            interval=0.0,
            jitter=None,
            max_tries=3,
            **mm_backoff.handlers(service="users"),
        )(Flaky(99))
        with pytest.raises(ConnectionError):
            wrapped()
    assert_always_fails(c, "users", 3)
