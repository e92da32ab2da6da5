"""Exemplars and exponential histograms pushed over OTLP reach a real receiver (rotel) intact."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from tests.e2e.servers import RotelReceiver, rotel_receiver

pytestmark = pytest.mark.e2e

tracer = TracerProvider().get_tracer("e2e")  # the default sampler samples every root span
_BUCKET = re.compile(r"^Bucket (?P<open>[\[(])(?P<low>[^,]+), (?P<high>[^\]]+)\], Count: (?P<count>\d+)$")
_FIELD = re.compile(r"^\s+-> (?P<key>[^:]+): (?P<value>.*)$")


@dataclass
class Point:
    """One data point as rotel printed it: the fields this test reads."""

    metric: str
    data_type: str
    count: int | None = None
    sum: float | None = None
    value: float | None = None
    buckets: list[tuple[float, float, int]] = field(default_factory=list)
    exemplars: list[dict[str, str]] = field(default_factory=list)


def parse_points(text: str) -> list[Point]:
    """rotel's detailed debug log, with the exemplars and exponential buckets ``servers.py`` skips."""
    points: list[Point] = []
    metric = data_type = ""
    exemplar: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        found = _FIELD.match(line)
        if line.startswith(("Metric #", "Data point attributes:")):
            exemplar = None
        elif found and found["key"] == "Name":
            metric = found["value"]
        elif found and found["key"] == "DataType":
            data_type = found["value"]
        elif re.match(r"^\w*DataPoints #\d+$", line):
            points.append(Point(metric, data_type))
            exemplar = None
        elif not points:
            continue
        elif line.startswith("Exemplar #"):
            exemplar = {}
            points[-1].exemplars.append(exemplar)
        elif found and exemplar is not None:
            exemplar[found["key"]] = found["value"]
        elif line.startswith(("Count: ", "Sum: ", "Value: ")):
            key, value = line.split(": ", 1)
            setattr(points[-1], key.lower(), int(value) if key == "Count" else float(value))
        elif bucket := _BUCKET.match(line):
            points[-1].buckets.append((float(bucket["low"]), float(bucket["high"]), int(bucket["count"])))
    return points


def wait_for_point(rotel: RotelReceiver, metric: str, timeout: float = 20.0) -> Point:
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in parse_points(rotel.output_path.read_text(errors="replace")) if p.metric == metric]
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"rotel never received {metric}")
        time.sleep(0.2)


def hex_ids(span: trace.Span) -> tuple[str, str]:
    span_context = span.get_span_context()
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exemplars_and_an_exponential_histogram_reach_rotel(protocol, monkeypatch):
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)  # trace_based, the default
    with rotel_receiver() as rotel:
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=rotel.grpc_endpoint if protocol == "grpc" else rotel.http_endpoint,
            otlp_protocol=protocol,
            otlp_histogram_aggregation="base2_exponential_bucket_histogram",
            export_interval=3600,
            set_global=False,
            environ={},
        )
        try:
            lb = LoadBalancerMetrics()
            with tracer.start_as_current_span("request") as request:
                lb.record_request("api", "api-0", "round_robin")
                lb.observe_request_duration("api", "api-0", 0.25)
            with tracer.start_as_current_span("slow request") as slow:
                lb.observe_request_duration("api", "api-0", 3.0)
            lb.observe_request_duration("api", "api-0", 0.0)  # outside a span: no exemplar
            assert handle.force_flush(timeout=10) is True

            requests = wait_for_point(rotel, "mesh.lb.requests")
            assert requests.value == 1
            assert [(e["Trace ID"], e["Span ID"], e["Value"]) for e in requests.exemplars] == [
                (*hex_ids(request), "1")
            ]

            duration = wait_for_point(rotel, "mesh.lb.request.duration")
            assert duration.data_type == "ExponentialHistogram"
            assert (duration.count, duration.sum) == (3, pytest.approx(3.25))
            # one zero, then one bucket holding each value (0.25 is the upper bound of its bucket)
            assert [count for _, _, count in duration.buckets if count] == [1, 1, 1]
            assert duration.buckets[0] == (0.0, 0.0, 1)
            assert any(low < 0.25 <= high for low, high, count in duration.buckets if count)
            assert any(low < 3.0 <= high for low, high, count in duration.buckets if count)
            assert sorted((e["Trace ID"], e["Span ID"], e["Value"]) for e in duration.exemplars) == sorted(
                [(*hex_ids(request), "0.25"), (*hex_ids(slow), "3")]
            )
        finally:
            handle.shutdown(timeout=10)
