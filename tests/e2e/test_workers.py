"""Multi-worker servers, for real: gunicorn (sync and Uvicorn workers, with and without --preload)
and ``uvicorn --workers``; one /metrics shows every worker's requests, exactly.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.servers import free_port, prometheus_server, require, wait_for_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PUBLISH_INTERVAL_S = 1.0
N = 2000


def _server_command(kind: str, port: int, *extra: str) -> list[str]:
    if kind == "uvicorn":
        return [
            str(require(str(BIN / "uvicorn"), "uvicorn")),
            "--workers",
            "4",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "tests.e2e.apps.workers_app:asgi",
        ]
    gunicorn = str(require(str(BIN / "gunicorn"), "gunicorn"))
    worker = ["-k", "uvicorn.workers.UvicornWorker"] if kind == "gunicorn-uvicorn" else []
    app = "tests.e2e.apps.workers_app:asgi" if worker else "tests.e2e.apps.workers_app:wsgi"
    return [gunicorn, "-w", "4", "-b", f"127.0.0.1:{port}", "--log-level", "warning", *worker, *extra, app]


@contextmanager
def running(kind: str, directory: Path, *extra: str) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MESHMETRICS_MULTIPROCESS_DIR": str(directory),
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
        "OTEL_METRICS_EXPORTER": "prometheus",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(_server_command(kind, port, *extra), cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_for_port(port, timeout=30)
        wait_for_port(metrics_port, timeout=30)
        yield port, metrics_port, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def drive(port: int, requests: int, threads: int = 4) -> int:
    """Send exactly ``requests`` requests (one connection each, so a refused one is safely retried)."""
    done = [0] * threads
    deadline = time.monotonic() + 120

    def worker(index: int, count: int) -> None:
        while done[index] < count and time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", "/", headers={"Connection": "close"})
                response = connection.getresponse()
                response.read()
            except (ConnectionRefusedError, ConnectionResetError):
                time.sleep(0.01)  # never reached a worker: send it again
                continue
            finally:
                connection.close()
            assert response.status == 200
            done[index] += 1

    shares = [requests // threads + (1 if i < requests % threads else 0) for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(i, share)) for i, share in enumerate(shares)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(done)


def scrape(metrics_port: int) -> tuple[float, str]:
    with urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mesh_lb_requests_total":
                total += sample.value
    return total, text


def directory_state(directory: Path, metrics_port: int) -> str:
    """What a failed total is made of: each file's requests, and the exposition's lines."""
    lines = []
    for path in sorted(directory.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            lines.append(f"{path.name}: unreadable ({error})")
            continue
        counts = [
            point[3]
            for m in document.get("metrics", [])
            if m["name"] == "mesh.lb.requests"
            for point in m["points"]
        ]
        lines.append(
            f"{path.name}: pid={document.get('pid')} requests={counts} folded={len(document.get('folded_files', []))}"
        )
    try:
        _, text = scrape(metrics_port)
        lines += [line for line in text.splitlines() if line.startswith("mesh_lb_requests_total")]
    except OSError as error:
        lines.append(f"scrape failed: {error}")
    return "\n".join(lines)


def wait_for_total(metrics_port: int, expected: float, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    total = -1.0
    while time.monotonic() < deadline:
        try:
            total, _ = scrape(metrics_port)
        except OSError:  # the serving worker just recycled: another takes the port over within a second
            time.sleep(0.2)
            continue
        if total == expected:
            return total
        time.sleep(0.2)
    return total


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("gunicorn-sync", ()),
        ("gunicorn-sync", ("--preload",)),
        ("gunicorn-uvicorn", ()),
        ("gunicorn-uvicorn", ("--preload",)),
        ("uvicorn", ()),
    ],
    ids=[
        "gunicorn-sync",
        "gunicorn-sync-preload",
        "gunicorn-uvicorn",
        "gunicorn-uvicorn-preload",
        "uvicorn-workers",
    ],
)
def test_one_endpoint_shows_every_workers_requests_exactly(tmp_path, kind, extra):
    with running(kind, tmp_path, *extra) as (port, metrics_port, _):
        assert drive(port, N) == N
        total = wait_for_total(metrics_port, N, within_s=2 * PUBLISH_INTERVAL_S + 8)
        assert total == N, directory_state(tmp_path, metrics_port)
        for _ in range(3):  # and on every scrape after
            total, text = scrape(metrics_port)
            assert total == N
        assert text.count("# TYPE target_info") == 1
        promtool = require(_which("promtool"), "promtool (Debian package prometheus)")
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert "error" not in (checked.stdout + checked.stderr).lower(), checked.stdout + checked.stderr
    assert len(list(tmp_path.glob("*.json"))) <= 4 + 1 + 1  # workers + the accumulator (+ a master)


def test_recycling_workers_lose_nothing_and_prometheus_sees_no_reset(tmp_path):
    with (
        running("gunicorn-sync", tmp_path, "--max-requests", "50") as (port, metrics_port, _),
        prometheus_server([f"127.0.0.1:{metrics_port}"], scrape_interval="1s") as prometheus,
    ):
        prometheus.wait_for("up == 1")
        assert drive(port, N) == N
        total = wait_for_total(metrics_port, N, within_s=2 * PUBLISH_INTERVAL_S + 8)
        assert total == N, directory_state(tmp_path, metrics_port)
        time.sleep(2.5)  # let Prometheus scrape the final value
        resets = prometheus.query("resets(mesh_lb_requests_total[5m])")
        assert resets, "Prometheus scraped no mesh_lb_requests_total"
        assert all(float(r["value"][1]) == 0 for r in resets)
    assert len(list(tmp_path.glob("*.json"))) <= 4 + 1 + 1  # dozens of recycles, still workers + 1


def test_a_killed_worker_loses_at_most_what_it_recorded_since_its_last_publish(tmp_path):
    with running("gunicorn-sync", tmp_path) as (port, metrics_port, _):
        assert drive(port, 400) == 400
        assert wait_for_total(metrics_port, 400, within_s=2 * PUBLISH_INTERVAL_S + 8) == 400
        published = 400
        victims = [int(p.name.split("-")[1]) for p in tmp_path.glob("w-*.json")]
        victim = next(pid for pid in victims if pid != _serving_pid(metrics_port))
        os.kill(victim, signal.SIGKILL)  # everything it recorded was published: nothing may be lost
        time.sleep(0.5)
        assert drive(port, 200) == 200
        assert (
            wait_for_total(metrics_port, published + 200, within_s=2 * PUBLISH_INTERVAL_S + 8)
            == published + 200
        )


def _serving_pid(metrics_port: int) -> int:
    """The pid of the process listening on ``metrics_port`` (from /proc, no tools needed)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{metrics_port:04X}") and fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [str(fd.readlink()) for fd in fd_dir.iterdir()]
        except OSError:
            continue
        if any(link in {f"socket:[{inode}]" for inode in inodes} for link in links):
            return int(fd_dir.parent.name)
    return -1


def test_when_the_serving_worker_dies_another_takes_the_endpoint_over(tmp_path):
    with running("gunicorn-sync", tmp_path) as (port, metrics_port, _):
        assert drive(port, 100) == 100
        assert wait_for_total(metrics_port, 100, within_s=2 * PUBLISH_INTERVAL_S + 8) == 100
        serving = _serving_pid(metrics_port)
        assert serving > 0
        os.kill(serving, signal.SIGKILL)
        assert drive(port, 100) == 100
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if scrape(metrics_port)[0] == 200:
                    break
            except OSError:
                pass  # nobody serves yet
            time.sleep(0.2)
        assert scrape(metrics_port)[0] == 200
        assert _serving_pid(metrics_port) not in (serving, -1)


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)
