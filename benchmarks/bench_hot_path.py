"""Hot-path cost of the facades against the raw OpenTelemetry SDK and prometheus_client, in one run.

Run: make bench   (or .venv/bin/python benchmarks/bench_hot_path.py [--quick])
Writes benchmarks/results/hot_path.md. Medians over interleaved repeats.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, measure
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

import meshmetrics
from meshmetrics import LoadBalancerMetrics, RetryMetrics, ServiceMeshMetrics

RESULTS = Path(__file__).resolve().parent / "results"
PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "plugins" / "ratelimit"
sys.path.insert(0, str(PLUGIN))
from ratelimit_metrics import RateLimiterMetrics  # the example plugin's generated facade

ATTRS = {"mesh.service": "api", "mesh.instance": "api-1", "mesh.lb.strategy": "round_robin"}
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]


def raw_sdk() -> tuple[object, object, MeterProvider]:
    """The plain SDK with two readers, as meshmetrics runs (Prometheus + a push-style reader)."""
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=CollectorRegistry()), InMemoryMetricReader()],
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("raw")
    counter = meter.create_counter("raw.requests")
    histogram = meter.create_histogram("raw.duration", explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
    return counter, histogram, provider


def threaded_ns(function, threads: int, calls: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            function()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter_ns()
    for worker in workers:
        worker.join()
    return (time.perf_counter_ns() - started) / (threads * calls)


def scrape_ns(series: int, repeats: int) -> tuple[float, float]:
    """One scrape of ``series`` counter series: meshmetrics (fast path) vs prometheus_client alone."""
    with meshmetrics.configure(
        prometheus_server=False,
        set_global=False,
        environ={},
        attribute_policies={"mesh.instance": meshmetrics.unbounded()},
    ) as handle:
        lb = LoadBalancerMetrics()
        for i in range(series):
            lb.record_request("api", f"i-{i}", "round_robin")
        registry = handle._registry
        ours = min(_time(lambda: generate_latest(registry)) for _ in range(repeats))
    plain = CollectorRegistry()
    counter = PromCounter(
        "mesh_lb_requests", "x", ["mesh_service", "mesh_instance", "mesh_lb_strategy"], registry=plain
    )
    for i in range(series):
        counter.labels("api", f"i-{i}", "round_robin").inc()
    theirs = min(_time(lambda: generate_latest(plain)) for _ in range(repeats))
    return ours, theirs


def _time(function) -> float:
    started = time.perf_counter_ns()
    function()
    return time.perf_counter_ns() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    calls = 2_000 if args.quick else 50_000
    repeats = 3 if args.quick else 7

    # before configure(): the no-op path
    idle = LoadBalancerMetrics()
    noop = measure(
        {"no-op (before configure)": lambda: idle.record_request("api", "api-1", "round_robin")},
        calls,
        repeats,
    )

    counter, histogram, provider = raw_sdk()
    registry = CollectorRegistry()
    prom_counter = PromCounter("c", "c", ["a", "b", "c"], registry=registry)
    prom_histogram = PromHistogram("h", "h", ["a", "b"], registry=registry, buckets=LATENCY_BUCKETS)
    child = prom_counter.labels("api", "api-1", "round_robin")

    rows: dict[str, float] = {}
    with meshmetrics.configure(
        prometheus_server=False,
        otlp_endpoint="http://127.0.0.1:9",
        export_interval=3600,
        set_global=False,
        environ={},
        conventions=[PLUGIN / "ratelimit.yaml"],
    ):
        lb, retry, mesh = LoadBalancerMetrics(), RetryMetrics(), ServiceMeshMetrics()
        limiter = RateLimiterMetrics()
        cases = {
            "raw SDK counter.add (2 readers)": lambda: counter.add(1, ATTRS),
            "raw SDK histogram.record (2 readers)": lambda: histogram.record(0.15, ATTRS),
            "prometheus_client labels(a, b, c).inc()": lambda: prom_counter.labels(
                "api", "api-1", "round_robin"
            ).inc(),
            "prometheus_client pre-bound child.inc()": child.inc,
            "prometheus_client labels(a, b).observe()": lambda: prom_histogram.labels("api", "api-1").observe(
                0.15
            ),
            "record_request": lambda: lb.record_request("api", "api-1", "round_robin"),
            "record_attempt": lambda: retry.record_attempt("api", "get_user", 1),
            "record_error (lb)": lambda: lb.record_error("api", "api-1", "timeout"),
            "connection_opened": lambda: lb.connection_opened("api", "api-1"),
            "set_instance_health": lambda: lb.set_instance_health("api", "api-1", 0.9),
            "observe_request_duration": lambda: lb.observe_request_duration("api", "api-1", 0.15),
            "record_call_success": lambda: mesh.record_call_success("api", "get_user", 0.2),
            "record_delay": lambda: retry.record_delay("api", "get_user", 0.1),
            "plugin counter: count_decision": lambda: limiter.count_decision("api", "search", "allowed"),
            "plugin histogram: record_wait": lambda: limiter.record_wait("api", "search", "delayed", 0.15),
        }
        rows.update(measure(cases, calls, repeats))
        single = rows["record_request"]
        rows["record_request, 8 threads (per call)"] = threaded_ns(
            lambda: lb.record_request("api", "api-1", "round_robin"), 8, calls // 4
        )
        rows["observe_request_duration, 8 threads (per call)"] = threaded_ns(
            lambda: lb.observe_request_duration("api", "api-1", 0.15), 8, calls // 4
        )
    with meshmetrics.configure(
        prometheus_server=False,
        otlp_endpoint="http://127.0.0.1:9",
        export_interval=3600,
        fast_path=False,
        set_global=False,
        environ={},
    ):
        lb_sdk = LoadBalancerMetrics()
        rows.update(
            measure(
                {
                    "record_request (SDK path, fast_path=False)": lambda: lb_sdk.record_request(
                        "api", "api-1", "round_robin"
                    ),
                    "observe_request_duration (SDK path)": lambda: lb_sdk.observe_request_duration(
                        "api", "api-1", 0.15
                    ),
                },
                calls,
                repeats,
            )
        )
    provider.shutdown()
    rows.update(noop)
    series = 10_000
    ours, theirs = scrape_ns(series, repeats=3 if args.quick else 5)

    raw_counter = rows["raw SDK counter.add (2 readers)"]
    raw_histogram = rows["raw SDK histogram.record (2 readers)"]
    prom_labels = rows["prometheus_client labels(a, b, c).inc()"]
    histogram_cases = {
        "observe_request_duration",
        "record_call_success",
        "record_delay",
        "plugin histogram: record_wait",
        "observe_request_duration (SDK path)",
        "observe_request_duration, 8 threads (per call)",
        "prometheus_client labels(a, b).observe()",
        "raw SDK histogram.record (2 readers)",
    }
    lines = [
        "# Hot path: facade calls vs the raw OpenTelemetry SDK and prometheus_client",
        "",
        f"{machine()}; {calls} calls x {repeats} interleaved repeats, medians. "
        "Ratios are against the raw SDK call of the same kind (counter.add or histogram.record) with the same "
        "three attributes and two readers.",
        "",
        "| call | ns/op | vs raw SDK | vs prometheus_client labels().inc() |",
        "|---|---:|---:|---:|",
    ]
    for name, ns in rows.items():
        base = raw_histogram if name in histogram_cases else raw_counter
        lines.append(f"| {name} | {ns:.0f} | {ns / base:.3f}x | {ns / prom_labels:.2f}x |")
    lines += [
        "",
        f"8 threads vs 1 thread, record_request: {rows['record_request, 8 threads (per call)'] / single:.2f}x per call.",
        "",
        f"| one scrape of {series} series | ms | ratio |",
        "|---|---:|---:|",
        f"| meshmetrics (fast path, its own exposition) | {ours / 1e6:.1f} | {ours / theirs:.2f}x |",
        f"| prometheus_client alone, same series | {theirs / 1e6:.1f} | 1.00x |",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hot_path.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
