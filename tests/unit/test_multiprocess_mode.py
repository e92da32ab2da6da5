"""Multiprocess mode in one process: the endpoint serves the directory's merge; bad files never fail it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from urllib.request import urlopen

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from tests.conftest import parse_samples, sample


def scrape(handle: meshmetrics.MetricsHandle) -> dict:
    assert handle.prometheus_url is not None
    with urlopen(handle.prometheus_url, timeout=10) as response:
        return parse_samples(response.read().decode())


def requests_of(samples: dict, instance: str = "a") -> float:
    return sample(
        samples,
        "mesh_lb_requests_total",
        mesh_service="api",
        mesh_instance=instance,
        mesh_lb_strategy="round_robin",
    )


def test_the_endpoint_serves_every_process_of_the_directory(tmp_path):
    child = textwrap.dedent(
        f"""
        import meshmetrics
        handle = meshmetrics.configure(multiprocess_dir={str(tmp_path)!r}, prometheus=False, environ={{}})
        lb = meshmetrics.LoadBalancerMetrics()
        for _ in range(7):
            lb.record_request("api", "a", "round_robin")
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)  # exits: published at exit
    handle = meshmetrics.configure(
        multiprocess_dir=str(tmp_path),
        prometheus_port=0,
        prometheus_host="127.0.0.1",
        set_global=False,
        environ={},
    )
    try:
        lb = LoadBalancerMetrics()
        for _ in range(5):
            lb.record_request("api", "a", "round_robin")
        samples = scrape(handle)
        assert requests_of(samples) == 12  # 7 from the exited process, 5 from this one
        assert len(list(tmp_path.glob("w-*.json"))) == 1  # the exited one was folded into the accumulator
        assert (tmp_path / "accumulated.json").exists()
    finally:
        handle.shutdown()


def test_empty_truncated_and_garbage_files_never_fail_a_scrape_and_are_counted(tmp_path):
    (tmp_path / f"w-{os.getpid()}-0-empty.json").write_text("")
    (tmp_path / "w-1-1-cut.json").write_text('{"format": "meshmetrics-worker/2", "metrics": [{"na')
    (tmp_path / "w-2-1-garbage.json").write_bytes(b"\x00\x01\xfe\xff")
    handle = meshmetrics.configure(
        multiprocess_dir=str(tmp_path),
        prometheus_port=0,
        prometheus_host="127.0.0.1",
        set_global=False,
        environ={},
    )
    try:
        LoadBalancerMetrics().record_request("api", "a", "round_robin")
        first = scrape(handle)
        assert requests_of(first) == 1
        second = scrape(handle)  # each bad file is counted once, not at every scrape
        unreadable = sample(
            second,
            "meshmetrics_measurements_rejected_total",
            meshmetrics_metric="meshmetrics.multiprocess",
            meshmetrics_reason="unreadable_worker_file",
        )
        assert unreadable == 3
    finally:
        handle.shutdown()


def test_a_mounted_app_serves_the_merged_view(tmp_path):
    handle = meshmetrics.configure(
        multiprocess_dir=str(tmp_path), prometheus_server=False, set_global=False, environ={}
    )
    try:
        LoadBalancerMetrics().record_request("api", "a", "round_robin")
        app = handle.wsgi_app()
        body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda status, headers: None))
        assert requests_of(parse_samples(body.decode())) == 1
    finally:
        handle.shutdown()


def test_exemplars_reach_the_merged_view_and_stay_until_newer_ones(tmp_path):
    from urllib.request import Request

    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse

    tracer = TracerProvider().get_tracer("test")
    handle = meshmetrics.configure(
        multiprocess_dir=str(tmp_path),
        prometheus_port=0,
        prometheus_host="127.0.0.1",
        set_global=False,
        environ={},
    )
    openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
    try:
        with tracer.start_as_current_span("slow call") as span:
            LoadBalancerMetrics().observe_request_duration("api", "a", 3.0)
        trace_id = f"{span.get_span_context().trace_id:032x}"
        for _ in range(3):  # several publishes and scrapes later, the exemplar is still shown
            handle._publisher.publish()
            with urlopen(Request(handle.prometheus_url or "", headers=openmetrics), timeout=10) as response:
                text = response.read().decode()
            found = {
                s.exemplar.labels["trace_id"]
                for f in parse(text)
                for s in f.samples
                if s.exemplar is not None
            }
            assert found == {trace_id}
    finally:
        handle.shutdown()
