"""tenacity: one decorator gives attempts, errors, backoff and the call's outcome."""

from urllib.request import urlopen

import tenacity

import meshmetrics
from meshmetrics.integrations.tenacity import retry

handle = meshmetrics.configure(service_name="tenacity-example")
calls = 0


@retry(service="users", stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(0.01))
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
