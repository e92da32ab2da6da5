"""Multiprocess mode: one scrape of the merged view vs prometheus_client's MultiProcessCollector, in one run.

Same shape on both sides: 32 worker processes' state, 5,000 counter series
each (the same 5,000 label sets in every worker), merged into one exposition.
Also the hot path with the mode on vs off, to show recording does not change.

Run: .venv/bin/python benchmarks/bench_multiprocess.py [--quick] [--output results.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, measure
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Counter, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from meshmetrics._engine import workers
from meshmetrics._serve.translate import TranslatingCollector

RESULTS = Path(__file__).resolve().parent / "results"


def ours(directory: Path, processes: int, series: int) -> CollectorRegistry:
    """Publish ``processes`` workers' files of ``series`` series; a registry serving their merge."""
    reader = InMemoryMetricReader()
    policies = {"mesh.instance": meshmetrics.unbounded()}
    with meshmetrics.configure(
        readers=[reader], prometheus=False, set_global=False, environ={}, attribute_policies=policies
    ) as handle:
        lb = LoadBalancerMetrics()
        for i in range(series):
            lb.record_request("api", f"i-{i}", "round_robin")
        data = reader.get_metrics_data()
        assert handle.runtime is not None
        rules = handle.runtime.merge_rules
    start = workers.process_start(os.getpid()) or ""
    for worker in range(processes):
        document = workers.snapshot(data, pid=os.getpid(), start=start)
        workers.write_atomically(directory / f"w-{os.getpid()}-{start}-{worker:04d}.json", document)
    from opentelemetry.sdk.resources import Resource

    resource = Resource({"service.name": "bench"})

    def merged():  # every worker alive: a scrape reads and merges all their files
        document, _ = workers.merge(directory, rules)
        return workers.to_metrics_data(document, resource)

    registry = CollectorRegistry(auto_describe=True)
    registry.register(TranslatingCollector(merged))
    return registry


def theirs(directory: Path, processes: int, series: int) -> CollectorRegistry:
    """The same shape in prometheus_client's multiprocess mode (one .db file per process)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    for worker in range(processes):
        values.ValueClass = values.MultiProcessValue(process_identifier=lambda worker=worker: worker)
        counter = Counter(
            "mesh_lb_requests",
            "x",
            ["mesh_service", "mesh_instance", "mesh_lb_strategy"],
            registry=CollectorRegistry(),
        )
        for i in range(series):
            counter.labels("api", f"i-{i}", "round_robin").inc()
    values.ValueClass = values.get_value_class()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def scrape_ms(registry: CollectorRegistry, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate_latest(registry)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def after_lifetimes(directory: Path, lifetimes: int, repeats: int) -> tuple[float, float, int]:
    """Merge time with 4 live workers, fresh and after ``lifetimes`` worker lifetimes; files left."""
    reader = InMemoryMetricReader()
    with meshmetrics.configure(readers=[reader], prometheus=False, set_global=False, environ={}) as handle:
        LoadBalancerMetrics().record_request("api", "i", "round_robin")
        template = workers.snapshot(reader.get_metrics_data(), pid=0, start="1")
        assert handle.runtime is not None
        rules = handle.runtime.merge_rules
    live: set[int] = set()

    def merge_ms() -> float:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            workers.merge(directory, rules, alive=lambda pid, _start: pid in live)
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    for pid in range(1, 5):
        live.add(pid)
        workers.write_atomically(directory / f"w-{pid}-1-x.json", {**template, "pid": pid})
    fresh = merge_ms()
    for pid in range(5, 5 + lifetimes):
        live.add(pid)
        live.discard(pid - 4)  # the oldest worker recycles
        workers.write_atomically(directory / f"w-{pid}-1-x.json", {**template, "pid": pid})
        if pid % 50 == 0:
            workers.merge(directory, rules, alive=lambda p, _start: p in live)
    after = merge_ms()
    return fresh, after, len(list(directory.glob("*.json")))


def hot_path(calls: int, repeats: int, directory: Path) -> dict[str, float]:
    """record_request with the mode off and on (same process, same run)."""
    lb = LoadBalancerMetrics()
    results = {}
    for label, extra in (("off", {}), ("on", {"multiprocess_dir": str(directory)})):
        with meshmetrics.configure(prometheus_server=False, set_global=False, environ={}, **extra):
            results.update(
                {
                    f"record_request, multiprocess {label}": measure(
                        {"x": lambda: lb.record_request("api", "api-1", "round_robin")}, calls, repeats
                    )["x"],
                    f"observe_request_duration, multiprocess {label}": measure(
                        {"x": lambda: lb.observe_request_duration("api", "api-1", 0.01)}, calls, repeats
                    )["x"],
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smaller shape (a smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS / "multiprocess.md")
    args = parser.parse_args()
    processes, series, repeats = (4, 500, 3) if args.quick else (32, 5000, 5)
    with (
        tempfile.TemporaryDirectory() as a,
        tempfile.TemporaryDirectory() as b,
        tempfile.TemporaryDirectory() as c,
    ):
        ours_ms = scrape_ms(ours(Path(a), processes, series), repeats)
        theirs_ms = scrape_ms(theirs(Path(b), processes, series), repeats)
        recording = hot_path(2_000 if args.quick else 50_000, repeats, Path(c))
    with tempfile.TemporaryDirectory() as d:
        fresh_ms, after_ms, files = after_lifetimes(Path(d), 100 if args.quick else 1000, repeats)
    lines = [
        "# Multiprocess mode: merged scrape and hot path",
        "",
        f"{machine()}; {processes} worker processes x {series} counter series; medians of {repeats} scrapes.",
        "",
        "| one scrape of the merged view | ms | ratio |",
        "|---|---:|---:|",
        f"| meshmetrics (merge + exposition) | {ours_ms:.1f} | {ours_ms / theirs_ms:.2f}x |",
        f"| prometheus_client MultiProcessCollector | {theirs_ms:.1f} | 1.00x |",
        "",
        "| merge with 4 live workers | ms | files in the directory |",
        "|---|---:|---:|",
        f"| fresh | {fresh_ms:.2f} | 4 |",
        f"| after {100 if args.quick else 1000} worker lifetimes | {after_ms:.2f} | {files} |",
        "",
        "| call | ns/op |",
        "|---|---:|",
        *(f"| {name} | {value:,.0f} |" for name, value in recording.items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
