"""Multiprocess merge: live and exited workers' files, the accumulator, merge rules, bad files."""

from __future__ import annotations

import time
from pathlib import Path

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from meshmetrics._engine import workers
from tests.conftest import parse_samples, sample

RULES = {
    "mesh.lb.endpoints": "max",
    "mesh.lb.instance.health_score": "last",
    "mesh.circuit_breaker.state": "worker",
}


def worker_document(requests: int, connections: int, endpoints: int, *, pid: int, start: str = "1") -> dict:
    """What one worker process would publish after recording this much."""
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(readers=[reader], prometheus=False, set_global=False, environ={})
    try:
        lb = LoadBalancerMetrics()
        for _ in range(requests):
            lb.record_request("api", "a", "round_robin")
            lb.observe_request_duration("api", "a", 0.02)
        for _ in range(connections):
            lb.connection_opened("api", "a")
        lb.set_endpoints("api", healthy=endpoints)
        meshmetrics.CircuitBreakerMetrics().set_state("api", "open" if endpoints > 4 else "closed")
        return workers.snapshot(reader.get_metrics_data(), pid=pid, start=start)
    finally:
        handle.shutdown()


def publish(directory: Path, document: dict) -> Path:
    path = workers.worker_file(directory, document["pid"], document["start"])
    workers.write_atomically(path, document)
    return path


def merged_samples(document: dict) -> dict:
    from opentelemetry.exporter.prometheus import _CustomCollector

    collector = _CustomCollector()
    collector.add_metrics_data(workers.to_metrics_data(document, Resource({"service.name": "x"})))
    registry = CollectorRegistry()
    registry.register(collector)
    return parse_samples(generate_latest(registry).decode())


def requests_of(samples: dict) -> float:
    return sample(
        samples,
        "mesh_lb_requests_total",
        mesh_service="api",
        mesh_instance="a",
        mesh_lb_strategy="round_robin",
    )


def test_counters_and_histograms_sum_up_down_counters_count_live_workers_gauges_follow_their_rule(tmp_path):
    live = {101, 102}
    for pid, (requests, connections, endpoints) in {101: (10, 2, 3), 102: (20, 1, 5), 103: (7, 4, 9)}.items():
        publish(tmp_path, worker_document(requests, connections, endpoints, pid=pid))
    document, report = workers.merge(tmp_path, RULES, alive=lambda pid, _start: pid in live)
    samples = merged_samples(document)
    assert requests_of(samples) == 37  # 103 exited: its counts are kept
    assert (
        sample(samples, "mesh_lb_request_duration_seconds_count", mesh_service="api", mesh_instance="a") == 37
    )
    assert (
        sample(samples, "mesh_lb_connections_active", mesh_service="api", mesh_instance="a") == 3
    )  # live only
    assert sample(samples, "mesh_lb_endpoints", mesh_service="api", mesh_health_state="healthy") == 5  # max
    assert (report.live, report.folded) == (2, 1)
    for pid, state in ((101, "closed"), (102, "open")):  # breakers are per worker: one series each
        assert (
            sample(
                samples,
                "mesh_circuit_breaker_state",
                mesh_service="api",
                mesh_circuit_breaker_state=state,
                worker=str(pid),
            )
            == 1
        )
    assert not any(dict(labels).get("worker") == "103" for _, labels in samples)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        [*(p.name for p in tmp_path.glob("w-*.json")), workers.ACCUMULATOR]
    )
    assert len(list(tmp_path.glob("w-*.json"))) == 2


def test_a_thousand_worker_lifetimes_leave_workers_plus_one_files_and_totals_never_go_back(tmp_path):
    template = worker_document(3, 0, 1, pid=1)
    live: set[int] = set()
    seen = 0.0
    for lifetime in range(1000):
        pid = 10_000 + lifetime
        live.add(pid)
        publish(tmp_path, {**template, "pid": pid, "start": "1", "time": time.time()})
        if len(live) > 4:
            live.discard(min(live))  # the oldest worker recycles
        if lifetime % 50 == 0 or lifetime == 999:
            document, _ = workers.merge(tmp_path, RULES, alive=lambda pid, _start: pid in live)
            total = requests_of(merged_samples(document))
            assert total >= seen  # Prometheus would see no counter reset
            seen = total
            assert len(list(tmp_path.glob("*.json"))) <= len(live) + 1 + 50
    document, _ = workers.merge(tmp_path, RULES, alive=lambda pid, _start: pid in live)
    assert requests_of(merged_samples(document)) == 3000
    assert len(list(tmp_path.glob("*.json"))) == len(live) + 1


def test_empty_truncated_and_foreign_files_are_skipped_and_reported(tmp_path):
    publish(tmp_path, worker_document(5, 0, 1, pid=201))
    (tmp_path / "w-1-1-empty.json").write_text("")
    (tmp_path / "w-2-1-cut.json").write_text('{"format": "meshmetrics-worker/2", "metrics": [')
    (tmp_path / "w-3-1-garbage.json").write_bytes(b"\x00\xff garbage")
    (tmp_path / "w-4-1-foreign.json").write_text('{"format": "something else", "metrics": []}')
    document, report = workers.merge(tmp_path, RULES, alive=lambda pid, _start: pid == 201)
    assert requests_of(merged_samples(document)) == 5
    assert report.skipped == 4


def test_a_removed_instance_leaves_the_accumulator_too(tmp_path):
    publish(tmp_path, worker_document(5, 0, 1, pid=301))
    workers.merge(tmp_path, RULES, alive=lambda pid, _start: False)  # 301 exited: folded
    removal = [
        time.time(),
        ["mesh.lb.requests", "mesh.lb.request.duration"],
        {"mesh.service": "api", "mesh.instance": "a"},
    ]
    publish(tmp_path, {**worker_document(0, 0, 1, pid=302), "removals": [removal]})
    document, _ = workers.merge(tmp_path, RULES, alive=lambda pid, _start: pid == 302)
    samples = merged_samples(document)
    assert not any(name.startswith("mesh_lb_requests") for name, _ in samples)


def test_a_real_process_identity_changes_when_it_exits(tmp_path):
    import os
    import subprocess
    import sys

    me = workers.process_start(os.getpid())
    assert me  # this process exists
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert workers.process_start(child.pid) is None


def test_a_worker_whose_start_cannot_be_read_is_live_not_folded(monkeypatch):
    monkeypatch.setattr(workers, "process_start", lambda pid: "")  # /proc could not be read
    assert workers.worker_alive(1234, "5678") is True
    monkeypatch.setattr(workers, "process_start", lambda pid: None)  # no such process, or a zombie
    assert workers.worker_alive(1234, "5678") is False
    monkeypatch.setattr(workers, "process_start", lambda pid: "9999")  # the pid was reused
    assert workers.worker_alive(1234, "5678") is False
    monkeypatch.setattr(workers, "process_start", lambda pid: "5678")
    assert workers.worker_alive(1234, "5678") is True
    assert workers.worker_alive(1234, "") is True  # its own start was unknown: live while the pid is


def test_a_folded_worker_file_that_comes_back_is_not_counted_twice(tmp_path):
    document = worker_document(5, 0, 1, pid=401)
    path = publish(tmp_path, document)
    workers.merge(tmp_path, RULES, alive=lambda pid, _start: False)  # taken for exited: folded
    assert not path.exists()
    workers.write_atomically(path, worker_document(8, 0, 1, pid=401))  # it was alive, and publishes again
    merged, report = workers.merge(tmp_path, RULES, alive=lambda pid, _start: True)
    assert requests_of(merged_samples(merged)) == 5  # never 5 + 8
    assert report.refolded == 1
    assert not path.exists()
