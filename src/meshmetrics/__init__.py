"""meshmetrics: OpenTelemetry metrics for service meshes.

Configure once at start-up, record through the facades::

    import meshmetrics

    meshmetrics.configure(service_name="checkout")
    lb = meshmetrics.LoadBalancerMetrics()
    lb.record_request(service="api", instance="api-1", strategy="round_robin")
"""

from meshmetrics._breaker import CircuitBreakerMetrics, CircuitBreakerTracker
from meshmetrics._errors import ConfigurationError
from meshmetrics._lb import LoadBalancerMetrics, OutlierTracker, RequestTracker
from meshmetrics._mesh import CallTracker, ServiceMeshMetrics
from meshmetrics._policy.core import AttributePolicy, InvalidMeasurement, bounded, drop, hashed, unbounded
from meshmetrics._policy.errors import classify_error
from meshmetrics._policy.normalizers import status_class, template_path
from meshmetrics._retry import RetryCallTracker, RetryMetrics, retry_outcome
from meshmetrics._setup.provider import MetricsHandle, configure, current_handle, shutdown
from meshmetrics._setup.settings import PrometheusEndpointError, PrometheusPortInUseError
from meshmetrics._version import VERSION

__version__ = VERSION

__all__ = [
    "AttributePolicy",
    "CallTracker",
    "CircuitBreakerMetrics",
    "CircuitBreakerTracker",
    "ConfigurationError",
    "InvalidMeasurement",
    "LoadBalancerMetrics",
    "MetricsHandle",
    "OutlierTracker",
    "PrometheusEndpointError",
    "PrometheusPortInUseError",
    "RequestTracker",
    "RetryCallTracker",
    "RetryMetrics",
    "ServiceMeshMetrics",
    "__version__",
    "bounded",
    "classify_error",
    "configure",
    "current_handle",
    "drop",
    "hashed",
    "retry_outcome",
    "shutdown",
    "status_class",
    "template_path",
    "unbounded",
]
