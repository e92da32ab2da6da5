"""stamina: a retry hook through stamina's instrumentation API, plus the call outcome."""

from urllib.request import urlopen

import meshmetrics
from meshmetrics.integrations.stamina import retry

handle = meshmetrics.configure(service_name="stamina-example")
calls = 0


@retry(on=ConnectionError, service="users", attempts=5, wait_initial=0.01, wait_jitter=0)
def get_user() -> str:
    global calls  # noqa: PLW0603 - a tiny stateful example
    calls += 1
    if calls < 3:
        raise ConnectionError("users-1 refused the connection")
    return "alice"


print("result:", get_user())
text = urlopen(handle.prometheus_url).read().decode()
print("\n".join(line for line in text.splitlines() if line.startswith("mesh_retry_calls_total")))
handle.shutdown()
