"""Multiprocess mode's life cycle in one process: publish its state, serve the merged view.

Every process (a gunicorn or uvicorn worker, the preloading master) records
as usual and publishes its cumulative state to the directory every
``interval_s`` seconds and at exit. The process that holds the pull endpoint
serves the merge of every file; the others retry the port at each publish,
so when the serving process dies another one takes the endpoint over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from meshmetrics._engine import workers
from meshmetrics._log import RateLimitedLog, logger
from meshmetrics._serve.reader import CumulativeReader
from meshmetrics._setup.settings import DEFAULT_PUBLISH_INTERVAL_S

PUSH_LOCK = "push.lock"


class Publisher:
    """Publishes this process's state to ``directory`` on a timer and at exit, and merges on demand."""

    def __init__(
        self,
        directory: Path,
        reader: CumulativeReader,
        *,
        rules: Mapping[str, str],
        resource: Resource,
        removals: Callable[[], list[Any]],
        interval_s: float = DEFAULT_PUBLISH_INTERVAL_S,
        series_ttl_s: float = 0.0,
        on_skipped: Callable[[], None] = lambda: None,
    ) -> None:
        """Publish to a new file of this process in ``directory`` (created if missing)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.reader = reader
        self.rules = rules  # the runtime's: a plugin adopted later brings its gauges' rules
        self.resource = resource
        self.interval_s = interval_s
        self.series_ttl_s = series_ttl_s
        self._removals = removals
        self._on_skipped = on_skipped
        self._skipped_seen: set[str] = set()
        self._exemplars: dict[tuple[str, str], list[Any]] = {}  # the latest per series, across publishes
        self.pid = os.getpid()
        self.start = workers.process_start(self.pid) or ""
        self.path = workers.worker_file(directory, self.pid, self.start)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog()
        self.on_tick: Callable[[], None] = lambda: None
        self._push_lock: int | None = None  # the descriptor holding the directory's push lock, when leading

    def publish(self) -> None:
        """Write this process's cumulative state now (atomically)."""
        with self._lock:
            document = workers.snapshot(
                self.reader.pull(),
                pid=self.pid,
                start=self.start,
                removals=self._removals(),
                kept=self._exemplars,
                rules=self.rules,
            )
            workers.write_atomically(self.path, document)

    def merged(self) -> MetricsData | None:
        """Every worker's state merged (this process's published first), as the SDK's export data."""
        try:
            self.publish()
            document, report = workers.merge(self.directory, self.rules, series_ttl_s=self.series_ttl_s)
        except OSError as error:
            self._log.warning(("merge",), "meshmetrics_multiprocess_merge_failed", error=repr(error))
            return None
        for name in report.skipped_files:
            if name not in self._skipped_seen:
                self._skipped_seen.add(name)
                self._on_skipped()
                self._log.warning(
                    ("skipped", name),
                    "meshmetrics_multiprocess_file_skipped",
                    file=name,
                    reason="empty, truncated or not a meshmetrics worker file",
                )
        return workers.to_metrics_data(document, self.resource)

    def leads_push(self) -> bool:
        """True if this process pushes the merged view (one process of the directory at a time).

        The lead goes to whoever holds the directory's push lock; the system
        releases it when that process exits, however it exits, and the next
        process to ask takes it.
        """
        if self._push_lock is not None:
            return True
        descriptor = os.open(self.directory / PUSH_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            return False
        self._push_lock = descriptor
        return True

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's descriptors without releasing the parent's lock."""
        self._stop.set()
        if self._push_lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._push_lock)  # the lock lives on in the parent's copy
            self._push_lock = None

    def start_thread(self) -> None:
        """Publish every ``interval_s`` seconds in a daemon thread (and run ``on_tick`` after each)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="meshmetrics-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._round()

    def _round(self) -> None:
        try:
            self.publish()
            self.on_tick()
        except Exception as error:  # the publisher must outlive one bad round
            self._log.warning(("publish",), "meshmetrics_multiprocess_publish_failed", error=repr(error))

    def close(self, *, final: bool = True) -> None:
        """Stop the timer; with ``final``, publish the last state (graceful exit)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, self.interval_s * 2))
        if final:
            try:
                self.publish()
            except Exception as error:  # exiting: say it, do not raise
                logger.warning("meshmetrics_multiprocess_final_publish_failed", error=repr(error))
        if self._push_lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._push_lock)  # the lead goes to the next process that asks
            self._push_lock = None


class MergedPushReader(PeriodicExportingMetricReader):
    """OTLP push of every worker merged, by the one process that leads (``multiprocess_push="merged"``).

    Each process has one; at each interval the leader exports the merged
    view (cumulative) instead of its own state, and the others export
    nothing. Set :attr:`publisher` once the publisher exists.
    """

    def __init__(self, exporter: MetricExporter, *, interval_s: float, timeout_s: float) -> None:
        """Push through ``exporter`` every ``interval_s`` seconds."""
        super().__init__(
            exporter, export_interval_millis=interval_s * 1000, export_timeout_millis=timeout_s * 1000
        )
        self.publisher: Publisher | None = None

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        del metrics_data  # this process's own state: the merge replaces it
        publisher = self.publisher
        if publisher is None or not publisher.leads_push():
            return  # another process pushes the merged view
        merged = publisher.merged()
        if merged is not None:
            super()._receive_metrics(merged, timeout_millis, **kwargs)
