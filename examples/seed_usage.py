"""The seed API, verbatim: configure once, then record through the facades.

Run: python examples/seed_usage.py   (serves http://localhost:9464/metrics for a moment)
"""

import time
from urllib.request import urlopen

import meshmetrics
from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics

handle = meshmetrics.configure(service_name="seed-example")

lb_metrics = LoadBalancerMetrics()
retry_metrics = RetryMetrics()
mesh_metrics = ServiceMeshMetrics()
lb_metrics.record_request(service="api", instance="api-1", strategy="round_robin")
lb_metrics.observe_request_duration(service="api", instance="api-1", duration=0.15)
retry_metrics.record_attempt(service="api", operation="get_user", attempt=1)
mesh_metrics.record_call_success(service="api", operation="get_user", duration=0.2)

if handle.prometheus_url:
    time.sleep(0.1)
    with urlopen(handle.prometheus_url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(("mesh_lb_requests_total", "mesh_retry_attempts_total")):
                print(line)
handle.shutdown()
