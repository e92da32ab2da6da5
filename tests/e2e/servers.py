"""Real servers for end-to-end tests: a Prometheus server and the rotel OTLP receiver.

Each listens on 127.0.0.1 only and is stopped by the fixture that started it.
When a binary is missing the test is skipped locally but fails in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest


def in_ci() -> bool:
    """True under CI (CI=true, 1, yes): there a missing tool fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require(binary: str | None, what: str) -> str:
    if binary and Path(binary).exists():
        return binary
    message = f"{what} is not installed (run .ci/run or see README)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never became ready")
        time.sleep(0.1)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


def rotel_binary() -> str | None:
    try:
        import rotel
    except ImportError:
        return None
    candidate = Path(rotel.__file__).parent / "rotel-agent"
    return str(candidate) if candidate.exists() else shutil.which("rotel-agent")


@dataclass
class PrometheusServer:
    port: int
    process: subprocess.Popen[bytes]

    def query(self, expression: str) -> list[dict]:
        """Run an instant query; fails unless Prometheus accepts it."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urlencode({"query": expression})
        with urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expression: str, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expression)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)

    def targets_up(self) -> list[dict]:
        with urlopen(f"http://127.0.0.1:{self.port}/api/v1/targets", timeout=10) as response:
            return json.loads(response.read())["data"]["activeTargets"]


@contextmanager
def prometheus_server(
    scrape_targets: list[str],
    scrape_interval: str = "1s",
    extra_job: str = "",
    rule_files: tuple[str, ...] = (),
    config_text: str | None = None,
    flags: tuple[str, ...] = (),
) -> Iterator[PrometheusServer]:
    """Start /usr/bin/prometheus scraping ``scrape_targets`` (host:port) with a temp config and TSDB."""
    binary = require(prometheus_binary(), "prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshmetrics-prom-") as workdir:
        targets = ", ".join(f"'{target}'" for target in scrape_targets)
        config = Path(workdir) / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            + (f"rule_files: [{', '.join(repr(str(f)) for f in rule_files)}]\n" if rule_files else "")
            + "scrape_configs:\n"
            "  - job_name: meshmetrics\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n" + extra_job
        )
        if config_text is not None:
            config.write_text(config_text)
        log = (Path(workdir) / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={Path(workdir) / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port)
            wait_until_ready(f"http://127.0.0.1:{port}/-/ready")
            yield PrometheusServer(port, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


_METRIC = re.compile(r"^Metric #\d+")
_ATTR = re.compile(r"^\s+-> ([^:]+): (\w+)\((.*)\)$")


@dataclass
class Received:
    """What rotel printed: the last value seen per (metric, attributes)."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], dict[str, object]] = field(default_factory=dict)
    resources: list[dict[str, str]] = field(default_factory=list)

    def value(self, metric: str, **attributes: str) -> dict[str, object]:
        return self.values[(metric, frozenset(attributes.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


def parse_rotel(text: str) -> Received:
    """Parse rotel's ``--debug-log metrics --debug-log-verbosity detailed`` output."""
    received = Received()
    metric: str | None = None
    attributes: dict[str, str] = {}
    point: dict[str, object] | None = None
    section = ""

    def flush() -> None:
        if metric is not None and point is not None:
            received.values[(metric, frozenset(attributes.items()))] = point

    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("Resource attributes:"):
            flush()
            point = None
            section = "resource"
            received.resources.append({})
            continue
        if _METRIC.match(line):
            flush()
            point = None
            metric, section = None, "descriptor"
            continue
        if section == "descriptor" and line.strip().startswith("-> Name:"):
            metric = line.split(":", 1)[1].strip()
            continue
        if re.match(r"^(Number|Histogram|ExponentialHistogram)DataPoints #\d+", line):
            flush()
            point, attributes, section = {}, {}, "point"
            continue
        if line.startswith("Data point attributes:"):
            section = "point-attributes"
            continue
        match = _ATTR.match(line)
        if match and section in ("resource", "point-attributes"):
            key, _kind, value = match.groups()
            if section == "resource":
                received.resources[-1][key.strip()] = value
            else:
                attributes[key.strip()] = value
            continue
        if point is not None and ":" in line and not line.startswith(" "):
            key, value = (part.strip() for part in line.split(":", 1))
            section = "point"
            if key in ("Value", "Sum", "Min", "Max"):
                point[key.lower()] = float(value)
            elif key == "Count":
                point["count"] = int(value)
            elif key.startswith("Buckets #"):
                point.setdefault("buckets", []).append(
                    int(value.split("Count:")[-1]) if "Count" in value else int(value)
                )
            elif key.startswith("ExplicitBounds #"):
                point.setdefault("bounds", []).append(float(value))
    flush()
    return received


@dataclass
class RotelReceiver:
    grpc_port: int
    http_port: int
    binary: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def output_path(self) -> Path:
        return self.workdir / "rotel.out"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/metrics"

    def start(self) -> None:
        with self.output_path.open("ab") as sink:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "start",
                    "--exporter",
                    "blackhole",
                    "--debug-log",
                    "metrics",
                    "--debug-log-verbosity",
                    "detailed",
                    "--otlp-grpc-endpoint",
                    f"127.0.0.1:{self.grpc_port}",
                    "--otlp-http-endpoint",
                    f"127.0.0.1:{self.http_port}",
                    "--pid-file",
                    str(self.workdir / "rotel.pid"),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )
        wait_for_port(self.grpc_port)
        wait_for_port(self.http_port)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def received(self) -> Received:
        return parse_rotel(self.output_path.read_text(errors="replace"))

    def wait_for(
        self, metric: str, timeout: float = 20.0, value=None, **attributes: str
    ) -> dict[str, object]:
        """The last point received for (metric, attributes); with ``value``, wait until it has that value."""
        deadline = time.monotonic() + timeout
        key = (metric, frozenset(attributes.items()))
        while True:
            point = self.received().values.get(key)
            if point is not None and (value is None or point.get("value", point.get("count")) == value):
                return point
            if time.monotonic() > deadline:
                raise AssertionError(f"rotel never received {key} (value={value}); last: {point}")
            time.sleep(0.2)


@contextmanager
def rotel_receiver() -> Iterator[RotelReceiver]:
    """Start rotel-agent on loopback ports, printing every metric it receives."""
    binary = require(rotel_binary(), "rotel (pip install rotel)")
    with tempfile.TemporaryDirectory(prefix="meshmetrics-rotel-") as workdir:
        receiver = RotelReceiver(free_port(), free_port(), binary, Path(workdir))
        receiver.start()
        try:
            yield receiver
        finally:
            receiver.stop()


@contextmanager
def running_demo(*args: str) -> Iterator[int]:
    """Run ``python -m meshmetrics demo ARGS`` on a free loopback port; yield the port."""
    port = free_port()
    env = {**os.environ, "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "meshmetrics", "demo", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
