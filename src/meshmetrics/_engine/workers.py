"""Multiprocess mode: each worker publishes its cumulative state to a directory; one view merges them.

A worker writes one file (``w-<pid>-<start>-<nonce>.json``), replaced atomically
at every publish, so a reader never sees a torn file. The merge reads every
file under an exclusive lock on the directory: the files of workers that have
exited (their pid gone, or reused by another process) are folded into one
accumulator file and deleted, so totals never go backwards and the directory
holds at most the live workers plus one file, whatever the number of
recycles. Merge rules: counters and histograms are summed over live and dead
workers; up-down counters count live workers only; each gauge follows its
rule (``sum``, ``max``, ``min``, ``last``). A file that is empty, truncated or
not ours is skipped and counted, never failing the merge.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

FORMAT = "meshmetrics-worker/1"
ACCUMULATOR = "accumulated.json"
_LOCK = ".lock"
_CUMULATIVE = AggregationTemporality.CUMULATIVE
GAUGE_RULES = ("sum", "max", "min", "last", "worker")
"""How a gauge's values of several workers become one: or ``worker``, one series per live worker."""
WORKER_ATTRIBUTE = "worker"


def process_start(pid: int) -> str | None:
    """An identity of process ``pid`` that changes when the pid is reused (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None if _gone(pid) else ""
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return fields[19] if len(fields) > 19 else ""  # noqa: PLR2004 - starttime, field 22 of proc(5)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# Snapshots: MetricsData <-> JSON.
def snapshot(
    data: MetricsData | None, *, pid: int, start: str, removals: Iterable[Any] = ()
) -> dict[str, Any]:
    """A worker's cumulative state as a JSON-able document."""
    metrics: list[dict[str, Any]] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            scope = [scope_metrics.scope.name, scope_metrics.scope.version or ""]
            for metric in scope_metrics.metrics:
                encoded = _encode_metric(metric, scope)
                if encoded is not None:
                    metrics.append(encoded)
    return {
        "format": FORMAT,
        "pid": pid,
        "start": start,
        "time": time.time(),
        "metrics": metrics,
        "removals": list(removals),
    }


def _encode_metric(metric: Metric, scope: list[str]) -> dict[str, Any] | None:
    data = metric.data
    base = {"name": metric.name, "description": metric.description, "unit": metric.unit, "scope": scope}
    if isinstance(data, Histogram) and data.aggregation_temporality is _CUMULATIVE:
        points = [
            [
                dict(p.attributes or {}),
                p.start_time_unix_nano,
                p.count,
                p.sum,
                list(p.bucket_counts),
                p.min,
                p.max,
            ]
            for p in data.data_points
        ]
        bounds = list(data.data_points[0].explicit_bounds) if data.data_points else []
        return {**base, "kind": "histogram", "bounds": bounds, "points": points}
    if isinstance(data, Sum) and data.aggregation_temporality is _CUMULATIVE:
        kind = "counter" if data.is_monotonic else "updowncounter"
        points = [[dict(p.attributes or {}), p.start_time_unix_nano, p.value] for p in data.data_points]
        return {**base, "kind": kind, "points": points}
    if isinstance(data, Gauge):
        points = [[dict(p.attributes or {}), p.start_time_unix_nano, p.value] for p in data.data_points]
        return {**base, "kind": "gauge", "points": points}
    return None  # exponential histograms and delta data are not merged here


def write_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document`` in one step (a reader sees the old or the new file)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(json.dumps(document, separators=(",", ":")))
    temporary.replace(path)


def worker_file(directory: Path, pid: int, start: str) -> Path:
    """The file one worker publishes to."""
    return directory / f"w-{pid}-{start or 0}-{uuid.uuid4().hex[:8]}.json"


# Merging.
_Key = tuple[str, str, str, str, frozenset[tuple[str, Any]]]


@dataclass
class _Merged:
    """Merged points per series key, and what the metric looks like."""

    shapes: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    points: dict[_Key, list[Any]] = field(default_factory=dict)
    stamps: dict[_Key, float] = field(default_factory=dict)


@dataclass
class MergeReport:
    """What the last merge found: files read, skipped as unreadable, folded from exited workers."""

    live: int = 0
    folded: int = 0
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)


def _key(metric: Mapping[str, Any], attributes: Mapping[str, Any]) -> _Key:
    scope = metric["scope"]
    return (scope[0], scope[1], metric["name"], metric["kind"], frozenset(attributes.items()))


def _add_point(merged: _Merged, metric: Mapping[str, Any], point: list[Any], rule: str, stamp: float) -> None:
    shape_key = (metric["scope"][0], metric["scope"][1], metric["name"])
    merged.shapes.setdefault(shape_key, {k: v for k, v in metric.items() if k != "points"})
    key = _key(metric, point[0])
    before = merged.points.get(key)
    if before is None:
        merged.points[key] = list(point)
        merged.stamps[key] = stamp
        return
    before[1] = _extreme(min, before[1], point[1])
    if metric["kind"] == "histogram":
        before[2] += point[2]
        before[3] += point[3]
        before[4] = [a + b for a, b in zip(before[4], point[4], strict=False)]
        before[5] = _extreme(min, before[5], point[5])
        before[6] = _extreme(max, before[6], point[6])
    elif metric["kind"] != "gauge" or rule == "sum":
        before[2] += point[2]
    elif rule == "max":
        before[2] = max(before[2], point[2])
    elif rule == "min":
        before[2] = min(before[2], point[2])
    elif stamp >= merged.stamps[key]:  # last: the most recent publish wins
        before[2] = point[2]
        merged.stamps[key] = stamp


def _extreme(pick: Callable[[float, float], float], a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else pick(a, b)


def _fold(merged: _Merged, document: Mapping[str, Any], rules: Mapping[str, str], *, live: bool) -> None:
    stamp = float(document.get("time", 0.0))
    for metric in document["metrics"]:
        if not live and metric["kind"] not in ("counter", "histogram"):
            continue  # an exited worker holds no connections and has no current state
        rule = rules.get(metric["name"], "last")
        for point in metric["points"]:
            if rule == "worker" and metric["kind"] == "gauge":
                point = [{**point[0], WORKER_ATTRIBUTE: str(document["pid"])}, *point[1:]]  # noqa: PLW2901
            _add_point(merged, metric, point, rule, stamp)


def _to_document(merged: _Merged) -> dict[str, Any]:
    metrics: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, point in merged.points.items():
        shape_key = (key[0], key[1], key[2])
        metric = metrics.setdefault(shape_key, {**merged.shapes[shape_key], "points": []})
        metric["points"].append(point)
    return {"format": FORMAT, "time": time.time(), "metrics": list(metrics.values())}


def _apply_removals(merged: _Merged, removals: Iterable[Any], folded_at: Mapping[_Key, float]) -> None:
    """Drop accumulated series that a worker ended after they were folded."""
    for removal in removals:
        when, names, where = float(removal[0]), set(removal[1]), dict(removal[2])
        for key in [k for k in merged.points if k[2] in names]:
            attributes = dict(key[4])
            if all(attributes.get(k) == v for k, v in where.items()) and folded_at.get(key, 0.0) <= when:
                del merged.points[key]
                merged.stamps.pop(key, None)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return None
    if not isinstance(document.get("metrics"), list):
        return None
    return document


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the directory's merge (held only while merging)."""
    with (directory / _LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merge(
    directory: Path,
    rules: Mapping[str, str],
    *,
    alive: Callable[[int, str], bool] | None = None,
    series_ttl_s: float = 0.0,
) -> tuple[dict[str, Any], MergeReport]:
    """Merge every worker's file (folding exited workers' into the accumulator); the merged document."""
    is_alive = alive or (lambda pid, start: process_start(pid) == start)
    with locked(directory):
        accumulated, folded_at = _load_accumulator(directory)
        live, exited, report = _read_workers(directory, is_alive)
        now = time.time()
        for _, document in exited:
            _fold(accumulated, document, rules, live=False)
            for metric in document["metrics"]:
                for point in metric["points"]:
                    folded_at[_key(metric, point[0])] = now
        for document in live:
            _apply_removals(accumulated, document.get("removals", ()), folded_at)
        if series_ttl_s > 0:  # idle accumulated series end too
            for key in [k for k, t in folded_at.items() if now - t > series_ttl_s]:
                accumulated.points.pop(key, None)
        if exited or not (directory / ACCUMULATOR).exists():
            _store_accumulator(directory, accumulated, folded_at, now)
            for path, _ in exited:
                path.unlink(missing_ok=True)
        for document in live:
            _fold(accumulated, document, rules, live=True)
        return _to_document(accumulated), report


def _load_accumulator(directory: Path) -> tuple[_Merged, dict[_Key, float]]:
    accumulated, folded_at = _Merged(), {}
    previous = _load(directory / ACCUMULATOR)
    for metric in previous["metrics"] if previous else ():
        for point in metric["points"]:
            folded_at[_key(metric, point[0])] = float(point[-1])
            _add_point(
                accumulated, metric, point[:7] if metric["kind"] == "histogram" else point[:3], "sum", 0.0
            )
    return accumulated, folded_at


def _store_accumulator(
    directory: Path, accumulated: _Merged, folded_at: Mapping[_Key, float], now: float
) -> None:
    stored = _to_document(accumulated)
    for metric in stored["metrics"]:
        for point in metric["points"]:
            width = 7 if metric["kind"] == "histogram" else 3
            point[width:] = [folded_at.get(_key(metric, point[0]), now)]
    write_atomically(directory / ACCUMULATOR, stored)


def _read_workers(
    directory: Path, is_alive: Callable[[int, str], bool]
) -> tuple[list[dict[str, Any]], list[tuple[Path, dict[str, Any]]], MergeReport]:
    live: list[dict[str, Any]] = []
    exited: list[tuple[Path, dict[str, Any]]] = []
    report = MergeReport()
    for path in sorted(directory.glob("w-*.json")):
        document = _load(path)
        if document is None:
            report.skipped += 1
            report.skipped_files.append(path.name)
        elif is_alive(int(document["pid"]), str(document["start"])):
            live.append(document)
        else:
            exited.append((path, document))
    report.live, report.folded = len(live), len(exited)
    return live, exited, report


def to_metrics_data(document: Mapping[str, Any], resource: Resource) -> MetricsData:
    """A merged document as the SDK's export data (cumulative), for any exporter's translation."""
    now = time.time_ns()
    scopes: dict[tuple[str, str], list[Metric]] = {}
    for metric in document["metrics"]:
        kind, points = metric["kind"], metric["points"]
        if kind == "histogram":
            data: Any = Histogram(
                [
                    HistogramDataPoint(
                        attributes=p[0],
                        start_time_unix_nano=p[1],
                        time_unix_nano=now,
                        count=p[2],
                        sum=p[3],
                        bucket_counts=p[4],
                        explicit_bounds=metric["bounds"],
                        min=p[5],
                        max=p[6],
                    )
                    for p in points
                ],
                _CUMULATIVE,
            )
        elif kind == "gauge":
            data = Gauge([NumberDataPoint(p[0], p[1], now, p[2]) for p in points])
        else:
            data = Sum(
                [NumberDataPoint(p[0], p[1], now, p[2]) for p in points],
                _CUMULATIVE,
                is_monotonic=kind == "counter",
            )
        scope = tuple(metric["scope"])
        scopes.setdefault((scope[0], scope[1]), []).append(
            Metric(metric["name"], metric["description"], metric["unit"], data)
        )
    scope_metrics = [
        ScopeMetrics(InstrumentationScope(name, version or None), metrics, "")
        for (name, version), metrics in scopes.items()
    ]
    return MetricsData([ResourceMetrics(resource, scope_metrics, "")])
