"""A small timing harness: interleaved repeats, medians, ratios. No timers in unit tests."""

from __future__ import annotations

import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable


def per_call_ns(function: Callable[[], object], calls: int) -> float:
    """Wall time of ``calls`` calls of ``function``, in ns per call."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - started) / calls


def measure(cases: dict[str, Callable[[], object]], calls: int, repeats: int = 7) -> dict[str, float]:
    """Median ns per call of each case, repeats interleaved so drift hits every case alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for function in cases.values():  # warm-up: caches, first-series creation
        per_call_ns(function, min(calls, 1000))
    for _ in range(repeats):
        for name, function in cases.items():
            samples[name].append(per_call_ns(function, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> str:
    """One line describing where the numbers came from."""
    import os

    return (
        f"Python {sys.version.split()[0]} on {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    )


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something listens on the loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")
