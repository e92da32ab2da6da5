"""purgatory (asyncio): one call instruments every circuit of a factory."""

import asyncio
from urllib.request import urlopen

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

import meshmetrics
from meshmetrics.integrations.purgatory import instrument_factory

handle = meshmetrics.configure(service_name="purgatory-example")
breakers = instrument_factory(AsyncCircuitBreakerFactory(default_threshold=2, default_ttl=30))


@breakers("inventory")
async def reserve() -> None:
    raise ConnectionError("inventory is down")


async def main() -> None:
    for _ in range(3):
        try:
            await reserve()
        except (ConnectionError, OpenedState) as error:
            print("call failed:", type(error).__name__)


asyncio.run(main())
text = urlopen(handle.prometheus_url).read().decode()
print("\n".join(line for line in text.splitlines() if line.startswith("mesh_circuit_breaker_")))
handle.shutdown()
