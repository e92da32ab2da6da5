"""backoff: pass meshmetrics' handlers to backoff's decorator."""

from urllib.request import urlopen

import backoff

import meshmetrics
from meshmetrics.integrations.backoff import handlers

handle = meshmetrics.configure(service_name="backoff-example")
calls = 0


@backoff.on_exception(
    backoff.constant, ConnectionError, interval=0.01, max_tries=5, **handlers(service="users")
)
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
