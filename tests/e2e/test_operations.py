"""Operations: a collector outage, many threads, fork, and the atexit flush, against the real rotel."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
import structlog

import meshmetrics
from meshmetrics import LoadBalancerMetrics, ServiceMeshMetrics
from tests.conftest import parse_samples, sample
from tests.e2e.servers import free_port, rotel_receiver

pytestmark = pytest.mark.e2e
LB = {"mesh.lb.strategy": "random"}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_collector_outage_loses_nothing_and_logs_once():
    with rotel_receiver() as rotel:
        handle = meshmetrics.configure(
            prometheus=False,
            otlp_endpoint=rotel.grpc_endpoint,
            export_interval=0.5,
            export_timeout=2,
            set_global=False,
            environ={"OTEL_EXPORTER_OTLP_TIMEOUT": "1000"},
        )
        lb = LoadBalancerMetrics()
        recorded = {"before": 0, "during": 0}

        def record(phase: str, count: int) -> None:
            for i in range(count):
                lb.record_request("outage", f"i-{i % 4}", "random")
            recorded[phase] += count  # one writer per phase and thread pool below

        try:
            record("before", 1000)
            rotel.wait_for(
                "mesh.lb.requests", value=250, **{"mesh.service": "outage", "mesh.instance": "i-0"}, **LB
            )
            rotel.stop()
            rss_before = rss_mb()
            with structlog.testing.capture_logs() as logs:
                threads = [threading.Thread(target=record, args=("during", 5000)) for _ in range(4)]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                while time.monotonic() - started < 4:  # several export intervals while the collector is down
                    record("during", 500)
                    time.sleep(0.2)
            assert handle.last_export_succeeded is False
            failures = [entry for entry in logs if entry["event"] == "meshmetrics_otlp_export_failed"]
            assert len(failures) <= 1, failures  # once per minute, not per attempt
            assert rss_mb() - rss_before < 30  # cumulative temporality: nothing queues up
            rotel.start()
            total = recorded["before"] + 4 * 5000 + recorded["during"] - 4 * 5000
            per_instance = total // 4
            for i in range(4):
                point = rotel.wait_for(
                    "mesh.lb.requests",
                    timeout=30,
                    value=per_instance,
                    **{"mesh.service": "outage", "mesh.instance": f"i-{i}"},
                    **LB,
                )
                assert point["value"] == per_instance
            # rotel prints a batch before the exporter has read its reply: give the result a moment
            deadline = time.monotonic() + 5
            while handle.last_export_succeeded is not True and time.monotonic() < deadline:
                time.sleep(0.05)
            assert handle.last_export_succeeded is True
        finally:
            handle.shutdown(timeout=5)


def test_16_threads_exact_totals_at_both_exporters():
    threads, per_thread = 16, 100_000
    with rotel_receiver() as rotel:
        handle = meshmetrics.configure(
            prometheus_host="127.0.0.1",
            prometheus_port=0,
            otlp_endpoint=rotel.grpc_endpoint,
            export_interval=3600,
            set_global=False,
            environ={},
        )
        try:
            lb = LoadBalancerMetrics()
            barrier = threading.Barrier(threads)

            def work(index: int) -> None:
                barrier.wait()
                instance = f"i-{index % 4}"
                for _ in range(per_thread):
                    lb.record_request("threads", instance, "round_robin")

            workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert handle.force_flush(timeout=20)
            with urlopen(handle.prometheus_url, timeout=10) as response:
                samples = parse_samples(response.read().decode())
            expected = threads * per_thread // 4
            for i in range(4):
                labels = {
                    "mesh_service": "threads",
                    "mesh_instance": f"i-{i}",
                    "mesh_lb_strategy": "round_robin",
                }
                assert sample(samples, "mesh_lb_requests_total", **labels) == expected
                pushed = rotel.wait_for(
                    "mesh.lb.requests",
                    **{
                        "mesh.service": "threads",
                        "mesh.instance": f"i-{i}",
                        "mesh.lb.strategy": "round_robin",
                    },
                )
                assert pushed["value"] == expected
        finally:
            handle.shutdown(timeout=10)


def test_asyncio_tasks_record_exact_totals(configured):
    mesh = ServiceMeshMetrics()

    async def call(n: int) -> None:
        async with mesh.track_call("async", "op"):
            await asyncio.sleep(0.001 * (n % 3))

    async def main() -> None:
        await asyncio.gather(*(call(n) for n in range(500)))

    asyncio.run(main())
    assert configured.captured.histogram("mesh.call.duration", service="async").count == 500
    assert configured.captured.value("mesh.calls.active", service="async") == 0


CHILD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from urllib.request import urlopen
    import meshmetrics
    from meshmetrics import LoadBalancerMetrics

    endpoint, port, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handle = meshmetrics.configure(
        prometheus_host="127.0.0.1", prometheus_port=port, otlp_endpoint=endpoint, export_interval=3600,
        prometheus_on_fork=strategy, service_name="forking", set_global=False, environ={},
    )
    lb = LoadBalancerMetrics()
    for _ in range(5):
        lb.record_request("parent", "p", "random")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child = meshmetrics.current_handle()
        for _ in range(3):
            lb.record_request("child", "c", "random")
        report = {"url": child.prometheus_url if child else None, "pid": os.getpid()}
        if child and child.prometheus_url:
            report["scrape"] = urlopen(child.prometheus_url, timeout=5).read().decode()
        report["flushed"] = child.shutdown(timeout=10) if child else False
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read, 10_000_000).decode())
    report["parent_scrape"] = urlopen(handle.prometheus_url, timeout=5).read().decode()
    report["status"] = status
    handle.shutdown(timeout=10)
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize("strategy", ["offset", "disable"])
def test_forked_child_gets_its_own_working_metrics(strategy, tmp_path):
    script = tmp_path / "fork.py"
    script.write_text(CHILD_SCRIPT)
    port = free_port()
    with rotel_receiver() as rotel:
        result = subprocess.run(
            [sys.executable, str(script), rotel.grpc_endpoint, str(port), strategy],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["status"] == 0
        assert report["flushed"] is True
        # the child's counts start from zero: it exported only its own series
        child_point = rotel.wait_for(
            "mesh.lb.requests", **{"mesh.service": "child", "mesh.instance": "c"}, **LB
        )
        assert child_point["value"] == 3
        resources = {
            r["service.instance.id"] for r in rotel.received().resources if r.get("service.name") == "forking"
        }
        assert len(resources) == 2, "parent and child must report distinct service.instance.id"
    parent = parse_samples(report["parent_scrape"])
    assert (
        sample(
            parent,
            "mesh_lb_requests_total",
            mesh_service="parent",
            mesh_instance="p",
            mesh_lb_strategy="random",
        )
        == 5
    )
    assert (
        "mesh_lb_requests_total",
        frozenset({("mesh_service", "child"), ("mesh_instance", "c"), ("mesh_lb_strategy", "random")}),
    ) not in parent
    if strategy == "offset":
        assert report["url"] == f"http://127.0.0.1:{port + 1}/metrics"
        child = parse_samples(report["scrape"])
        assert (
            sample(
                child,
                "mesh_lb_requests_total",
                mesh_service="child",
                mesh_instance="c",
                mesh_lb_strategy="random",
            )
            == 3
        )
        assert not [key for key in child if dict(key[1]).get("mesh_service") == "parent"]
    else:
        assert report["url"] is None


def test_atexit_flushes_to_the_collector(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(
        textwrap.dedent(
            """
        import sys
        import meshmetrics
        meshmetrics.configure(prometheus=False, otlp_endpoint=sys.argv[1], export_interval=3600, set_global=False, environ={})
        meshmetrics.LoadBalancerMetrics().record_request("exiting", "e", "random")
        # no shutdown(): the atexit hook must flush
        """
        )
    )
    with rotel_receiver() as rotel:
        subprocess.run(
            [sys.executable, str(script), rotel.grpc_endpoint], check=True, timeout=60, capture_output=True
        )
        assert (
            rotel.wait_for("mesh.lb.requests", **{"mesh.service": "exiting", "mesh.instance": "e"}, **LB)[
                "value"
            ]
            == 1
        )
