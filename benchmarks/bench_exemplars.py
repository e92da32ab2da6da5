"""Cost of exemplars and exponential histograms on the fast path, against the raw SDK doing the same.

Run: .venv/bin/python benchmarks/bench_exemplars.py [--quick] [--output FILE]
Medians over interleaved repeats, in one run:
- counter and histogram facade calls with the trace_based exemplar filter (a) with no span active and
  (b) inside a sampled span, against raw SDK instruments with the same filter and two readers;
- the same facade calls with always_off, to show what the span lookup adds;
- histogram recording with exponential buckets (OTLP asks for them) against the raw SDK's exponential
  histogram with two readers.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, measure
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import (
    AlwaysOffExemplarFilter,
    ExemplarFilter,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

import meshmetrics
from meshmetrics import LoadBalancerMetrics

ATTRS = {"mesh.service": "api", "mesh.instance": "api-1", "mesh.lb.strategy": "round_robin"}
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
EXPONENTIAL = {Histogram: ExponentialBucketHistogramAggregation()}
_rng = random.Random(7)
DURATIONS = [math.exp(_rng.uniform(math.log(1e-4), math.log(10.0))) for _ in range(1024)]
tracer = TracerProvider().get_tracer("bench")


def durations() -> Callable[[], float]:
    """Log-uniform durations from 0.1 ms to 10 s, cycled (the same sequence for every case)."""
    return itertools.cycle(DURATIONS).__next__


def raw_sdk(
    exemplar_filter: ExemplarFilter, *, exponential: str = ""
) -> tuple[object, object, MeterProvider]:
    """A raw SDK counter and histogram with two readers, like meshmetrics (Prometheus + a push reader).

    ``exponential="push"``: the push reader asks for exponential histograms (as meshmetrics' OTLP
    reader does); ``"both"``: both readers do.
    """
    first: object = PrometheusMetricReader(registry=CollectorRegistry())
    if exponential == "both":
        first = InMemoryMetricReader(preferred_aggregation=EXPONENTIAL)
    second = InMemoryMetricReader(preferred_aggregation=EXPONENTIAL if exponential else None)
    provider = MeterProvider(
        metric_readers=[first, second], exemplar_filter=exemplar_filter, shutdown_on_exit=False
    )
    meter = provider.get_meter("raw")
    counter = meter.create_counter("raw.requests")
    histogram = meter.create_histogram("raw.duration", explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
    return counter, histogram, provider


@contextmanager
def meshmetrics_with(exemplar_filter: str, *, exponential: bool = False) -> Iterator[LoadBalancerMetrics]:
    """meshmetrics' fast path with two readers (Prometheus, OTLP push) and ``exemplar_filter``."""
    with meshmetrics.configure(
        exemplar_filter=exemplar_filter,
        prometheus_server=False,
        otlp_endpoint="http://127.0.0.1:9",  # nothing listens; nothing is exported during the run
        otlp_histogram_aggregation="base2_exponential_bucket_histogram"
        if exponential
        else "explicit_bucket_histogram",
        export_interval=3600,
        set_global=False,
        environ={},
    ) as handle:
        table = handle.runtime.tables["mesh.lb.request.duration"]
        assert table.sdk_instrument is None
        assert table.exemplar_filter == exemplar_filter
        assert table.exponential is exponential
        facade = LoadBalancerMetrics()
        # bound to this handle's runtime: several configurations are measured interleaved
        facade._explicit = handle.runtime
        yield facade


def exemplar_cases(calls: int, repeats: int, *, in_span: bool) -> dict[str, float]:
    counter, histogram, provider = raw_sdk(TraceBasedExemplarFilter())
    off_counter, off_histogram, off_provider = raw_sdk(AlwaysOffExemplarFilter())
    value = durations()
    with meshmetrics_with("trace_based") as lb, meshmetrics_with("always_off") as lb_off:
        cases = {
            "raw SDK counter.add, trace_based": lambda: counter.add(1, ATTRS),
            "raw SDK counter.add, always_off": lambda: off_counter.add(1, ATTRS),
            "record_request, trace_based": lambda: lb.record_request("api", "api-1", "round_robin"),
            "record_request, always_off": lambda: lb_off.record_request("api", "api-1", "round_robin"),
            "raw SDK histogram.record, trace_based": lambda: histogram.record(value(), ATTRS),
            "raw SDK histogram.record, always_off": lambda: off_histogram.record(value(), ATTRS),
            "observe_request_duration, trace_based": lambda: lb.observe_request_duration(
                "api", "api-1", value()
            ),
            "observe_request_duration, always_off": lambda: lb_off.observe_request_duration(
                "api", "api-1", value()
            ),
        }
        if in_span:
            with tracer.start_as_current_span("request"):
                rows = measure(cases, calls, repeats)
        else:
            rows = measure(cases, calls, repeats)
    provider.shutdown()
    off_provider.shutdown()
    return rows


def exponential_cases(calls: int, repeats: int) -> dict[str, float]:
    _, push, push_provider = raw_sdk(TraceBasedExemplarFilter(), exponential="push")
    _, both, both_provider = raw_sdk(TraceBasedExemplarFilter(), exponential="both")
    value = durations()
    with (
        meshmetrics_with("trace_based", exponential=True) as lb,
        meshmetrics_with("trace_based") as lb_explicit,
    ):
        rows = measure(
            {
                "raw SDK histogram.record, Prometheus + exponential push reader": lambda: push.record(
                    value(), ATTRS
                ),
                "raw SDK histogram.record, two exponential readers": lambda: both.record(value(), ATTRS),
                "observe_request_duration, exponential kept (OTLP exponential)": lambda: (
                    lb.observe_request_duration("api", "api-1", value())
                ),
                "observe_request_duration, explicit only": lambda: lb_explicit.observe_request_duration(
                    "api", "api-1", value()
                ),
            },
            calls,
            repeats,
        )
    push_provider.shutdown()
    both_provider.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    calls = 2_000 if args.quick else 50_000
    repeats = 3 if args.quick else 7
    no_span = exemplar_cases(calls, repeats, in_span=False)
    in_span = exemplar_cases(calls, repeats, in_span=True)
    expo = exponential_cases(calls, repeats)

    lines = [
        "# Exemplars and exponential histograms: facade calls vs the raw OpenTelemetry SDK",
        "",
        f"{machine()}; {calls} calls x {repeats} interleaved repeats, medians. Both sides have two readers "
        "(Prometheus + a push reader); histogram values cycle through 1024 log-uniform durations "
        "(0.1 ms .. 10 s). Ratios are against the raw SDK call of the same kind with the same filter.",
        "",
        "| case | call | ns/op | vs raw SDK |",
        "|---|---|---:|---:|",
    ]
    for label, rows in (("no span", no_span), ("sampled span", in_span)):
        for kind, ours_name, raw_name in (
            ("counter", "record_request", "raw SDK counter.add"),
            ("histogram", "observe_request_duration", "raw SDK histogram.record"),
        ):
            for exemplar_filter in ("trace_based", "always_off"):
                ours = rows[f"{ours_name}, {exemplar_filter}"]
                raw = rows[f"{raw_name}, {exemplar_filter}"]
                lines.append(
                    f"| {label}, {kind}, {exemplar_filter} | {ours_name} | {ours:.0f} | {ours / raw:.3f}x |"
                )
                lines.append(f"| {label}, {kind}, {exemplar_filter} | {raw_name} | {raw:.0f} | 1x |")
    base_push = expo["raw SDK histogram.record, Prometheus + exponential push reader"]
    base_both = expo["raw SDK histogram.record, two exponential readers"]
    lines += [
        "",
        "| exponential | ns/op | vs raw SDK (Prometheus + exponential push) | vs raw SDK (two exponential) |",
        "|---|---:|---:|---:|",
    ]
    for name, ns in expo.items():
        lines.append(f"| {name} | {ns:.0f} | {ns / base_push:.3f}x | {ns / base_both:.3f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
