"""pybreaker: one call instruments a breaker; trip it and watch the state."""

from urllib.request import urlopen

import pybreaker

import meshmetrics
from meshmetrics.integrations.pybreaker import instrument_breaker

handle = meshmetrics.configure(service_name="pybreaker-example")
breaker = instrument_breaker(pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30, name="payments"))


@breaker
def charge() -> None:
    raise ConnectionError("payments is down")


for _ in range(3):
    try:
        charge()
    except (ConnectionError, pybreaker.CircuitBreakerError) as error:
        print("call failed:", type(error).__name__)

text = urlopen(handle.prometheus_url).read().decode()
print("\n".join(line for line in text.splitlines() if line.startswith("mesh_circuit_breaker_")))
handle.shutdown()
