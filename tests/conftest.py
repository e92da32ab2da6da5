from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.request import urlopen

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

import meshmetrics
from meshmetrics.testing import CapturedMetrics


@dataclass
class Configured:
    handle: meshmetrics.MetricsHandle
    reader: InMemoryMetricReader
    captured: CapturedMetrics

    def scrape(self) -> str:
        assert self.handle.prometheus_url is not None
        with urlopen(self.handle.prometheus_url, timeout=10) as response:
            return response.read().decode()

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Parsed Prometheus samples: (name, labels without scope labels) -> value."""
        return parse_samples(self.scrape())


def import_path(path: Path, name: str) -> ModuleType:
    """Import the Python file at ``path`` as module ``name`` (generated modules, tools)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # an empty label is an absent label in Prometheus (the exporter backfills missing keys with "")
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if v and not k.startswith("otel_scope_")
            )
            key = (sample.name, labels)
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def configured() -> Iterator[Configured]:
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], prometheus_port=0, prometheus_host="127.0.0.1", set_global=False, environ={}
    )
    try:
        yield Configured(handle, reader, CapturedMetrics(reader))
    finally:
        handle.shutdown()


@pytest.fixture
def strict_configured() -> Iterator[Configured]:
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], prometheus=False, set_global=False, strict=True, environ={}
    )
    try:
        yield Configured(handle, reader, CapturedMetrics(reader))
    finally:
        handle.shutdown()


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test proves nothing: any skip fails the run."""
    from tests.e2e.servers import in_ci

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if in_ci() and skipped and exitstatus == 0:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(
                f"CI: {skipped} test(s) skipped; a skipped test proves nothing, failing the run", red=True
            )
