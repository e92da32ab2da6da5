"""os.fork() under load: children never hang, and each records into its own provider.

Children report through a pipe and leave with ``os._exit``; the parent waits
for each with a deadline and kills stragglers (then the test fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.request import urlopen

import pytest
import structlog

import meshmetrics
from meshmetrics import LoadBalancerMetrics
from meshmetrics._setup import provider
from tests.conftest import parse_samples

CHILD_DEADLINE_S = 2.0
LB = {"mesh_lb_strategy": "random"}


def _scrape_wsgi(handle: meshmetrics.MetricsHandle) -> str:
    status: list[str] = []
    body = b"".join(
        handle.wsgi_app()({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}, lambda s, _h: status.append(s))
    )
    assert status == ["200 OK"], status
    return body.decode()


def _requests(text: str, service: str) -> dict[str, float]:
    """``mesh_lb_requests_total`` per instance of ``service``."""
    counts = {}
    for (name, labels), value in parse_samples(text).items():
        label = dict(labels)
        if name == "mesh_lb_requests_total" and label.get("mesh_service") == service:
            counts[label["mesh_instance"]] = value
    return counts


def _fork_child(body: Callable[[], dict[str, object]]) -> tuple[int, int]:
    """Fork; the child runs ``body`` and writes its JSON report to a pipe. Returns (pid, read fd)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read)
            report = body()
            os.write(write, json.dumps(report).encode())
            code = 0
        except BaseException as error:
            with contextlib.suppress(BaseException):
                os.write(write, json.dumps({"error": repr(error)}).encode())
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _wait(pid: int, read: int, deadline_s: float = CHILD_DEADLINE_S) -> tuple[int | None, dict[str, object]]:
    """The child's exit status (None if it had to be killed) and its report."""
    deadline = time.monotonic() + deadline_s
    status: int | None = None
    while time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        time.sleep(0.005)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    chunks = []
    os.set_blocking(read, False)
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
    os.close(read)
    text = b"".join(chunks).decode()
    return status, json.loads(text) if text else {}


@dataclass
class _Counts:
    recorded: list[int]
    logged: list[int]


@contextlib.contextmanager
def _load(recorders: int = 4, loggers: int = 2, max_s: float = 60.0) -> Iterator[_Counts]:
    """Threads recording through the facades and logging through structlog until the block ends."""
    stop = threading.Event()
    counts = _Counts([0] * recorders, [0] * loggers)
    started = time.monotonic()

    def record(n: int) -> None:
        lb = LoadBalancerMetrics()
        while not stop.is_set() and time.monotonic() - started < max_s:
            for _ in range(100):
                lb.record_request("parent", f"p{n}", "random")
            counts.recorded[n] += 100  # one slot per thread: no lost updates

    def log(n: int) -> None:
        logger = structlog.get_logger("app")
        while not stop.is_set() and time.monotonic() - started < max_s:
            logger.info("app_busy", thread=n, payload="x" * 200)
            counts.logged[n] += 1

    threads = [threading.Thread(target=record, args=(n,), daemon=True) for n in range(recorders)]
    threads += [threading.Thread(target=log, args=(n,), daemon=True) for n in range(loggers)]
    with open(os.devnull, "w") as devnull:  # noqa: PTH123 - a plain file object for structlog
        previous = structlog.get_config()
        # the default structlog setup (PrintLogger with its per-file write lock), on a file we can flood
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(devnull))
        for thread in threads:
            thread.start()
        try:
            yield counts
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            structlog.configure(**previous)


@pytest.fixture
def parent() -> Iterator[meshmetrics.MetricsHandle]:
    handle = meshmetrics.configure(prometheus_server=False, set_global=False, environ={})
    try:
        yield handle
    finally:
        handle.shutdown()


def _child_records_and_reads_back(instance: str, n: int) -> Callable[[], dict[str, object]]:
    def body() -> dict[str, object]:
        handle = meshmetrics.current_handle()  # builds the child's provider if not done yet
        assert handle is not None
        lb = LoadBalancerMetrics()
        for _ in range(n):
            lb.record_request("child", instance, "random")
        text = _scrape_wsgi(handle)
        return {"child": _requests(text, "child"), "parent": _requests(text, "parent")}

    return body


def test_children_never_hang_and_record_into_their_own_provider(parent):
    results = []
    with _load() as counts:
        deadline = time.monotonic() + 30
        while min(counts.recorded) < 1000 or min(counts.logged) < 100:  # every thread is busy
            assert time.monotonic() < deadline, counts
            time.sleep(0.01)
        for i in range(20):
            if i % 2:  # the reported case: a child that does nothing but leave
                pid, read = _fork_child(dict)
            else:
                pid, read = _fork_child(_child_records_and_reads_back(f"c{i}", i + 1))
            results.append((i, *_wait(pid, read)))
    hung = [i for i, status, _ in results if status is None]
    assert not hung, f"children {hung} did not exit within {CHILD_DEADLINE_S} s"
    for i, status, report in results:
        assert status == 0, (i, report)
        if i % 2 == 0:
            # exactly its own count, none of the parent's series
            assert report == {"child": {f"c{i}": i + 1}, "parent": {}}, (i, report)
    # the parent kept its provider and its counts
    parent_counts = _requests(_scrape_wsgi(parent), "parent")
    assert parent_counts == {f"p{n}": total for n, total in enumerate(counts.recorded)}


def test_a_child_forked_before_its_rebuild_passes_the_rebuild_on(parent):
    LoadBalancerMetrics().record_request("parent", "p", "random")

    def child() -> dict[str, object]:
        pid, read = _fork_child(_child_records_and_reads_back("grandchild", 2))
        status, report = _wait(pid, read)
        return {"status": status, "report": report}

    status, report = _wait(*_fork_child(child), deadline_s=2 * CHILD_DEADLINE_S)
    assert status == 0
    assert report == {"status": 0, "report": {"child": {"grandchild": 2}, "parent": {}}}


def test_first_measurement_in_a_child_lands_on_its_own_provider(parent):
    """Recorded right after fork, before anything else: the facades build the child's provider."""

    def body() -> dict[str, object]:
        lb = LoadBalancerMetrics()
        lb.record_request("child", "first", "random")
        handle = meshmetrics.current_handle()
        assert handle is not None
        return {"child": _requests(_scrape_wsgi(handle), "child")}

    status, report = _wait(*_fork_child(body))
    assert (status, report) == (0, {"child": {"first": 1}})


def test_offset_with_port_zero_gives_the_child_any_free_port():
    with meshmetrics.configure(
        prometheus_host="127.0.0.1",
        prometheus_port=0,
        prometheus_on_fork="offset",
        set_global=False,
        environ={},
    ) as handle:
        parent_port = handle.prometheus_port

        def body() -> dict[str, object]:
            child = meshmetrics.current_handle()
            assert child is not None
            LoadBalancerMetrics().record_request("child", "c", "random")
            assert child.prometheus_url is not None
            with urlopen(child.prometheus_url, timeout=5) as response:
                text = response.read().decode()
            return {"port": child.prometheus_port, "child": _requests(text, "child")}

        status, report = _wait(*_fork_child(body), deadline_s=10)
    assert status == 0, report
    assert report["child"] == {"c": 1}
    assert report["port"] not in (0, 1, parent_port)


def test_setup_locks_held_by_another_thread_at_fork_do_not_block_the_child(parent):
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with provider._configure_lock, parent._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)

        def body() -> dict[str, object]:
            report = _child_records_and_reads_back("locked", 1)()
            report["parent_shutdown"] = parent.shutdown()  # the parent's handle, as its atexit would
            report["shutdown"] = meshmetrics.shutdown(timeout=5)
            return report

        status, report = _wait(*_fork_child(body))
    finally:
        release.set()
        holder.join(timeout=10)
    assert status == 0, report
    assert report == {"child": {"locked": 1}, "parent": {}, "parent_shutdown": True, "shutdown": True}
