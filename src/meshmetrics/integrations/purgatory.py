"""Metrics for `purgatory <https://mardiros.github.io/purgatory>`_ circuit breakers (asyncio and sync).

purgatory is chosen over aiobreaker for asyncio: it is maintained (3.x
releases, typed, sync and async flavours, in-memory or Redis state), while
aiobreaker's last release dates from 2021. One line::

    from meshmetrics.integrations.purgatory import instrument_factory

    breakers = instrument_factory(AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30))

Each circuit's name is ``mesh.service``. purgatory's event hook reports state
changes; it says nothing of rejected calls (it raises its ``OpenedState``
before the block runs) nor of successes, so ``get_breaker`` is wrapped on this
factory instance (the decorator form goes through it) to record every call:
success, failure, ``rejected`` when the circuit is open, ``ignored`` for an
excluded exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from meshmetrics._breaker import CircuitBreakerMetrics
from meshmetrics.integrations._shared import BreakerBridge, never_raises

__all__ = ["instrument_factory", "state_name"]

_Factory = TypeVar("_Factory", AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory)
_STATES = {"closed": "closed", "opened": "open", "half-opened": "half_open"}


def state_name(state: str) -> str:
    """The meshmetrics name of a purgatory state (``opened`` -> ``open``)."""
    return _STATES.get(state, state)


class _Bridges:
    def __init__(self, metrics: CircuitBreakerMetrics | None, clock: Callable[[], float]) -> None:
        self._metrics = metrics or CircuitBreakerMetrics()
        self._clock = clock
        self._bridges: dict[str, BreakerBridge] = {}

    def get(self, name: str, state: str = "closed") -> BreakerBridge:
        bridge = self._bridges.get(name)
        if bridge is None:
            bridge = self._bridges[name] = BreakerBridge(name, state, self._metrics, clock=self._clock)
        return bridge

    def hook(self, name: str, event_name: str, event: Any) -> None:
        if event_name == "state_changed":
            self.get(name).transition(state_name(event.state))
        elif event_name == "circuit_breaker_created":
            self.get(name)


def _outcome(breaker: Any, error: BaseException | None) -> str:
    if error is None:
        return "success"
    for entry in breaker.context.exclude_list:
        kind, predicate = entry if isinstance(entry, tuple) else (entry, None)
        if isinstance(error, kind) and (predicate is None or predicate(error)):
            return "ignored"
    return "failure"


class _AsyncGuard:
    def __init__(self, breaker: Any, bridge: BreakerBridge) -> None:
        self._breaker, self._bridge = breaker, bridge

    async def __aenter__(self) -> Any:
        try:
            return await self._breaker.__aenter__()
        except OpenedState:
            never_raises(self._bridge.outcome)("rejected")
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = _outcome(self._breaker, exc)
        await self._breaker.__aexit__(exc_type, exc, tb)
        never_raises(self._bridge.outcome)(outcome)


class _SyncGuard:
    def __init__(self, breaker: Any, bridge: BreakerBridge) -> None:
        self._breaker, self._bridge = breaker, bridge

    def __enter__(self) -> Any:
        try:
            return self._breaker.__enter__()
        except OpenedState:
            never_raises(self._bridge.outcome)("rejected")
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = _outcome(self._breaker, exc)
        self._breaker.__exit__(exc_type, exc, tb)
        never_raises(self._bridge.outcome)(outcome)


def instrument_factory(
    factory: _Factory,
    *,
    metrics: CircuitBreakerMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> _Factory:
    """Add meshmetrics to every circuit of ``factory`` (in place) and return it."""
    bridges = _Bridges(metrics, clock)
    factory.add_listener(never_raises(bridges.hook))
    original = factory.get_breaker

    if isinstance(factory, AsyncCircuitBreakerFactory):

        async def get_async_breaker(circuit: str, *args: Any, **kwargs: Any) -> Any:
            breaker = await original(circuit, *args, **kwargs)
            return _AsyncGuard(breaker, bridges.get(circuit, state_name(breaker.context.state)))

        factory.get_breaker = get_async_breaker  # type: ignore[method-assign]
    else:

        def get_sync_breaker(circuit: str, *args: Any, **kwargs: Any) -> Any:
            breaker = original(circuit, *args, **kwargs)
            return _SyncGuard(breaker, bridges.get(circuit, state_name(breaker.context.state)))

        factory.get_breaker = get_sync_breaker  # type: ignore[method-assign]
    return factory
