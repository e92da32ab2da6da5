"""Memory growth for 1,000,000 distinct mesh.instance values: meshmetrics vs the plain SDK.

Run: .venv/bin/python benchmarks/bench_cardinality.py [--values N]
Each side runs in its own process; RSS is read from /proc before and after.
Writes benchmarks/results/cardinality.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, values: int) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    import meshmetrics

    memory = InMemoryMetricReader()
    if mode == "meshmetrics":
        handle = meshmetrics.configure(
            prometheus_server=False, readers=[memory], set_global=False, environ={}
        )
        lb = meshmetrics.LoadBalancerMetrics()
        registry = handle._registry

        def record(i: int) -> None:
            lb.record_request("api", f"pod-{i}", "round_robin")
    else:
        registry = CollectorRegistry()
        provider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=registry), memory], shutdown_on_exit=False
        )
        counter = provider.get_meter("raw").create_counter("mesh.lb.requests")

        def record(i: int) -> None:
            counter.add(
                1, {"mesh.service": "api", "mesh.instance": f"pod-{i}", "mesh.lb.strategy": "round_robin"}
            )

    before = rss_mb()
    started = time.perf_counter()
    for i in range(values):
        record(i)
    elapsed = time.perf_counter() - started
    text = generate_latest(registry).decode()
    series = sum(1 for line in text.splitlines() if line.startswith("mesh_lb_requests_total{"))
    memory.get_metrics_data()
    print(json.dumps({"rss_growth_mb": rss_mb() - before, "seconds": elapsed, "series": series}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["meshmetrics", "sdk"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.values)
        return
    results = {}
    for mode in ("meshmetrics", "sdk"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--values", str(args.values)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[mode] = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    lines = [
        f"# {args.values:,} distinct mesh.instance values",
        "",
        f"{machine()}. Each side records one request per distinct value, then is scraped once.",
        "",
        "| | RSS growth (MB) | seconds | exported series |",
        "|---|---:|---:|---:|",
    ]
    for mode, label in (
        ("meshmetrics", "meshmetrics (budget 100 + _OTHER)"),
        ("sdk", "plain OpenTelemetry SDK (cardinality limit 2000)"),
    ):
        r = results[mode]
        lines.append(f"| {label} | {r['rss_growth_mb']:.1f} | {r['seconds']:.1f} | {r['series']} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cardinality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
