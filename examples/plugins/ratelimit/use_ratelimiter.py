"""A token-bucket rate limiter that reports through its generated facade (``RateLimiterMetrics``).

Run it from the repository root::

    python examples/plugins/ratelimit/use_ratelimiter.py

It configures meshmetrics with the plugin's registry, sends 40 requests from
three tenants, 8 at a time, through a limiter that holds 5 tokens refilled at
50 a second and lets a request wait 50 ms at most, and prints the plugin's
counters and gauges from ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.request import urlopen

from ratelimit_metrics import RateLimiterMetrics, RatelimitOutcomeValues

import meshmetrics

HERE = Path(__file__).resolve().parent


class TokenBucket:
    """Up to ``capacity`` tokens, refilled at ``rate`` a second; a request waits at most ``max_wait_s``."""

    def __init__(self, name: str, capacity: int, rate: float, max_wait_s: float) -> None:
        self.name, self.capacity, self.rate, self.max_wait_s = name, capacity, rate, max_wait_s
        self.tokens = float(capacity)
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self.metrics = RateLimiterMetrics()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def acquire(self, service: str, client: str) -> bool:
        """Take a token for one request of ``client``; False when it is refused."""
        started = time.monotonic()
        self.metrics.add_waiting(service, self.name)
        try:
            with self.lock:
                self._refill()
                wait_s = 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate
                if wait_s > self.max_wait_s:
                    outcome = RatelimitOutcomeValues.REJECTED
                else:
                    self.tokens -= 1  # reserved now, paid for by waiting below
                    outcome = RatelimitOutcomeValues.DELAYED if wait_s else RatelimitOutcomeValues.ALLOWED
                self.metrics.set_tokens_remaining(service, self.name, max(self.tokens, 0.0))
            if outcome == RatelimitOutcomeValues.DELAYED:
                time.sleep(wait_s)
        finally:
            self.metrics.add_waiting(service, self.name, -1)
        self.metrics.record_wait(service, self.name, outcome, time.monotonic() - started)
        self.metrics.count_decision(service, self.name, outcome, client=client)
        return outcome != RatelimitOutcomeValues.REJECTED


handle = meshmetrics.configure(service_name="ratelimit-example", conventions=[HERE / "ratelimit.yaml"])
bucket = TokenBucket("search", capacity=5, rate=50.0, max_wait_s=0.05)
with ThreadPoolExecutor(max_workers=8) as pool:
    admitted = sum(pool.map(lambda i: bucket.acquire("search-api", f"tenant-{i % 3}"), range(40)))
print(f"admitted {admitted} of 40")
assert handle.prometheus_url is not None
text = urlopen(handle.prometheus_url).read().decode()
shown = ("ratelimit_decisions_total", "ratelimit_tokens_remaining", "ratelimit_waiting")
print("\n".join(line for line in text.splitlines() if line.startswith(shown)))
handle.shutdown()
