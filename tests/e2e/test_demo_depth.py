"""What an operator checks in the demo, read back from a real Prometheus.

The demo runs in this process for a bit more than one short fault cycle,
exporting on a loopback port that a real Prometheus scrapes every half
second. Then, with traffic stopped and the endpoint still up, the tests ask
Prometheus (at chosen evaluation times) and ``/metrics`` what an operator
would: does the latency-aware balancer avoid the slow instance, do the
ejection counters match the ejections the demo made, is the flaky instance
ejected and let back.
"""

from __future__ import annotations

import io
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

import meshmetrics
from meshmetrics._cli import demo as _demo
from tests.conftest import parse_samples
from tests.e2e.servers import PrometheusServer, prometheus_server

pytestmark = pytest.mark.e2e

CYCLE_S = 15.0
RUN_S = CYCLE_S + 5.0  # one whole fault cycle, and a little of the next
RATE = 60.0
SEED = 5
WINDOW = "10s"  # the rate and average window, inside the first cycle
FAIR_SHARE = 1 / 3


@dataclass
class DemoRun:
    """A finished demo run: its Prometheus, its still-served endpoint, and what the demo did."""

    prometheus: PrometheusServer
    metrics_url: str
    started: float  # wall clock (Prometheus' timestamps) when the demo started
    stopped: float  # ... and when its last measurement was recorded
    mesh: _demo.Mesh


def _run_demo() -> tuple[_demo.Mesh, float]:
    """Run the demo for ``RUN_S`` seconds in a thread; its mesh and its start time."""
    meshes: list[_demo.Mesh] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def drive() -> None:
        try:
            meshes.append(
                _demo.run(duration=RUN_S, rate=RATE, seed=SEED, out=io.StringIO(), cycle_s=CYCLE_S, stop=stop)
            )
        except BaseException as error:  # handed to the test below
            errors.append(error)

    thread = threading.Thread(target=drive, name="demo", daemon=True)
    started = time.time()
    thread.start()
    thread.join(timeout=RUN_S + 60)
    stop.set()  # only matters if the join timed out
    thread.join(timeout=10)
    assert not thread.is_alive(), "the demo did not stop"
    if errors:
        raise AssertionError("the demo failed") from errors[0]
    return meshes[0], started


@pytest.fixture(scope="module")
def demo_run() -> Iterator[DemoRun]:
    handle = meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        set_global=False,
        service_name="meshmetrics-demo",
        environ={},
    )
    try:
        assert handle.prometheus_url is not None
        with prometheus_server(
            [f"127.0.0.1:{handle.prometheus_port}"], scrape_interval="500ms"
        ) as prometheus:
            mesh, started = _run_demo()
            yield DemoRun(prometheus, handle.prometheus_url, started, time.time(), mesh)
    finally:
        handle.shutdown()


def query_at(prometheus: PrometheusServer, expression: str, at: float) -> list[dict[str, Any]]:
    """An instant query evaluated at ``at`` (Unix seconds); fails unless Prometheus accepts it."""
    url = f"http://127.0.0.1:{prometheus.port}/api/v1/query?" + urlencode({"query": expression, "time": at})
    with urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by_instance(result: list[dict[str, Any]]) -> dict[str, float]:
    return {series["metric"]["mesh_instance"]: float(series["value"][1]) for series in result}


def samples_of(prometheus: PrometheusServer, selector: str, at: float) -> list[tuple[float, float]]:
    """The raw scraped samples of one series up to ``at``: [(timestamp, value)]."""
    result = query_at(prometheus, f"{selector}[{int(RUN_S) + 30}s]", at)
    assert len(result) <= 1, result
    return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []


def balancer_view(run: DemoRun, service: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per instance, over the last ``WINDOW`` of the first fault cycle: mean latency estimate, pick share."""
    at = run.started + CYCLE_S
    estimates = by_instance(
        query_at(
            run.prometheus,
            f'avg_over_time(mesh_lb_instance_latency_estimate_seconds{{mesh_service="{service}"}}[{WINDOW}])',
            at,
        )
    )
    picks = by_instance(
        query_at(
            run.prometheus,
            f'sum by (mesh_instance) (rate(mesh_lb_requests_total{{mesh_service="{service}"}}[{WINDOW}]))',
            at,
        )
    )
    instances = {f"{service}-{index}" for index in (1, 2, 3)}
    assert set(estimates) == instances, estimates
    assert set(picks) == instances, picks
    total = sum(picks.values())
    assert total > 0
    return estimates, {instance: rate / total for instance, rate in picks.items()}


def test_latency_aware_balancer_sends_the_slow_instance_less_than_its_fair_share(demo_run: DemoRun) -> None:
    estimates, shares = balancer_view(demo_run, "payments")  # power of two choices on a peak EWMA
    median = statistics.median(estimates.values())
    assert estimates["payments-2"] >= 2 * median, estimates
    assert shares["payments-2"] < FAIR_SHARE / 2, shares  # well below its fair third
    # the round-robin balancer sees its slow instance just as clearly, and still sends it a third
    estimates, shares = balancer_view(demo_run, "users")
    assert estimates["users-2"] >= 2 * statistics.median(estimates.values()), estimates
    assert shares["users-2"] == pytest.approx(FAIR_SHARE, abs=0.05), shares


def ejections_on_metrics(url: str) -> Counter[tuple[str, str, str]]:
    with urlopen(url, timeout=10) as response:
        samples = parse_samples(response.read().decode())
    counts: Counter[tuple[str, str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "mesh_lb_ejections_total":
            label = dict(labels)
            key = (label["mesh_service"], label["mesh_instance"], label["mesh_lb_ejection_reason"])
            counts[key] = int(value)
    return counts


def test_ejection_counters_equal_the_ejections_the_demo_made(demo_run: DemoRun) -> None:
    injected = demo_run.mesh.ejections
    assert (
        injected["orders", "orders-1", "consecutive_5xx"]
        + injected["orders", "orders-1", "consecutive_local_origin_failure"]
        >= 1
    ), injected
    # traffic has stopped: the endpoint shows the final counts
    assert ejections_on_metrics(demo_run.metrics_url) == injected
    # and so does Prometheus, once it has scraped after the demo stopped
    deadline = time.monotonic() + 20
    while True:
        result = query_at(demo_run.prometheus, "timestamp(mesh_lb_ejections_total)", time.time())
        if result and min(float(s["value"][1]) for s in result) > demo_run.stopped:
            break
        assert time.monotonic() < deadline, f"Prometheus did not scrape after the demo stopped: {result}"
        time.sleep(0.25)
    scraped = {
        (
            s["metric"]["mesh_service"],
            s["metric"]["mesh_instance"],
            s["metric"]["mesh_lb_ejection_reason"],
        ): int(float(s["value"][1]))
        for s in query_at(demo_run.prometheus, "mesh_lb_ejections_total", time.time())
    }
    assert scraped == dict(injected)


def test_flaky_instance_is_ejected_and_comes_back(demo_run: DemoRun) -> None:
    instance = '{mesh_service="orders",mesh_instance="orders-1"}'
    at = demo_run.stopped + 1
    active = samples_of(demo_run.prometheus, f"mesh_lb_ejections_active{instance}", at)
    ejected_time = dict(samples_of(demo_run.prometheus, f"mesh_lb_ejection_time_seconds_total{instance}", at))
    # a scrape that saw it ejected, then the first one after that saw it back in the pool
    ejected = [index for index, (_, value) in enumerate(active) if value == 1]
    assert ejected, f"no scrape saw orders-1 ejected: {active}"
    returns = [t for t, value in active[ejected[0] :] if value == 0]
    assert returns, f"orders-1 never came back: {active}"
    ejected_at, back_at = active[ejected[0]][0], returns[0]
    # the time ejected grew, by at least one ejection's length, and was all accounted by its return
    before = max((value for t, value in ejected_time.items() if t < ejected_at), default=0.0)
    assert back_at in ejected_time, (back_at, ejected_time)
    grown = ejected_time[back_at] - before
    assert grown >= CYCLE_S * _demo.EJECTION_FRACTION - 1e-6, (ejected_at, back_at, ejected_time)
