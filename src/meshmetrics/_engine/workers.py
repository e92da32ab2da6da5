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

from opentelemetry.sdk.metrics import Exemplar
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

from meshmetrics._definitions import GAUGE_RULES

FORMAT = "meshmetrics-worker/2"
ACCUMULATOR = "accumulated.json"
FOLDED_FILES_KEPT = 1000  # names of folded workers' files the accumulator remembers
_LOCK = ".lock"
_CUMULATIVE = AggregationTemporality.CUMULATIVE
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


def worker_alive(pid: int, start: str) -> bool:
    """Whether the worker that published as (``pid``, ``start``) still runs.

    Only a process that is certainly gone (no such pid, a zombie, or a pid
    now reused by a process started later) counts as exited: folding a live
    worker's file would count it again when it next publishes. When its
    start cannot be read, the worker is taken as live and folded later.
    """
    found = process_start(pid)
    if found is None:
        return False
    return not found or not start or found == start


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
    data: MetricsData | None,
    *,
    pid: int,
    start: str,
    removals: Iterable[Any] = (),
    kept: dict[tuple[str, str], list[Any]] | None = None,
    rules: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A worker's cumulative state as a JSON-able document.

    Each gauge carries its merge rule from ``rules`` (this worker's registries,
    plugins it adopted too), for a merging process that has not met it.

    A reader gets the exemplars recorded since its previous collection; with
    ``kept`` (this worker's memory across publishes) a series keeps showing
    its latest ones until newer ones replace them, as a scrape every 15 s
    of a file published every second needs.
    """
    metrics: list[dict[str, Any]] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            scope = [scope_metrics.scope.name, scope_metrics.scope.version or ""]
            for metric in scope_metrics.metrics:
                encoded = _encode_metric(metric, scope)
                if encoded is not None and encoded["kind"] == "gauge" and rules and metric.name in rules:
                    encoded["rule"] = rules[metric.name]
                if encoded is not None:
                    if kept is not None:
                        _keep_exemplars(encoded, kept)
                    metrics.append(encoded)
    return {
        "format": FORMAT,
        "pid": pid,
        "start": start,
        "time": time.time(),
        "metrics": metrics,
        "removals": list(removals),
    }


def _keep_exemplars(metric: dict[str, Any], kept: dict[tuple[str, str], list[Any]]) -> None:
    exemplars = metric.setdefault("exemplars", {})
    for point in metric["points"]:
        key = (metric["name"], point[0])
        if point[0] in exemplars:
            kept[key] = exemplars[point[0]]
        elif key in kept:
            exemplars[point[0]] = kept[key]


def _exemplars_of(points: Iterable[Any]) -> dict[str, list[list[Any]]]:
    """The exemplars of each point (by attribute key): value, time, span id, trace id."""
    found: dict[str, list[list[Any]]] = {}
    for point in points:
        if point.exemplars:
            found[_attribute_key(point.attributes or {})] = [
                [e.value, e.time_unix_nano, e.span_id, e.trace_id] for e in point.exemplars
            ]
    return found


def _attribute_key(attributes: Mapping[str, Any]) -> str:
    """One string naming an attribute set, whatever the order of its items (the merge's dict key)."""
    return "\x1f".join(f"{k}\x1e{v!r}" for k, v in sorted(attributes.items()))


def _encode_metric(metric: Metric, scope: list[str]) -> dict[str, Any] | None:
    """A metric's points as ``[key, attributes, start, *values]`` lists."""
    data = metric.data
    base = {"name": metric.name, "description": metric.description, "unit": metric.unit, "scope": scope}
    if isinstance(data, Histogram) and data.aggregation_temporality is _CUMULATIVE:
        points = [
            [
                _attribute_key(p.attributes or {}),
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
        exemplars = _exemplars_of(data.data_points)
        return {**base, "kind": "histogram", "bounds": bounds, "points": points, "exemplars": exemplars}
    if isinstance(data, Sum) and data.aggregation_temporality is _CUMULATIVE:
        kind = "counter" if data.is_monotonic else "updowncounter"
    elif isinstance(data, Gauge):
        kind = "gauge"
    else:
        return None  # exponential histograms and delta data are not merged here
    points = [
        [_attribute_key(p.attributes or {}), dict(p.attributes or {}), p.start_time_unix_nano, p.value]
        for p in data.data_points
    ]
    return {**base, "kind": kind, "points": points, "exemplars": _exemplars_of(data.data_points)}


def write_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document`` in one step (a reader sees the old or the new file)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(json.dumps(document, separators=(",", ":")))
    temporary.replace(path)


def worker_file(directory: Path, pid: int, start: str) -> Path:
    """The file one worker publishes to."""
    return directory / f"w-{pid}-{start or 0}-{uuid.uuid4().hex[:8]}.json"


# Merging.
_Shape = tuple[str, str, str]  # scope name, scope version, metric name
_HISTOGRAM_WIDTH = 8  # key, attributes, start, count, sum, buckets, min, max
_NUMBER_WIDTH = 4  # key, attributes, start, value


@dataclass
class _Merged:
    """Merged points per metric and attribute key, and what each metric looks like."""

    shapes: dict[_Shape, dict[str, Any]] = field(default_factory=dict)
    points: dict[_Shape, dict[str, list[Any]]] = field(default_factory=dict)
    stamps: dict[tuple[_Shape, str], float] = field(default_factory=dict)  # "last" gauges: when set
    exemplars: dict[tuple[_Shape, str], list[list[Any]]] = field(default_factory=dict)  # live workers'


@dataclass
class MergeReport:
    """What the last merge found: files read, skipped as unreadable, folded from exited workers."""

    live: int = 0
    folded: int = 0
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    refolded: int = 0
    """Files of workers already folded that were found again (left out: they are counted)."""


def _shape(metric: Mapping[str, Any]) -> _Shape:
    scope = metric["scope"]
    return (scope[0], scope[1], metric["name"])


def _fold(merged: _Merged, document: Mapping[str, Any], rules: Mapping[str, str], *, live: bool) -> None:
    """Add one worker's (or the accumulator's) points to ``merged`` by each metric's rule."""
    stamp = float(document.get("time", 0.0))
    for metric in document["metrics"]:
        kind = metric["kind"]
        if not live and kind not in ("counter", "histogram"):
            continue  # an exited worker holds no connections and has no current state
        shape = _shape(metric)
        if shape not in merged.shapes:
            merged.shapes[shape] = {k: v for k, v in metric.items() if k not in ("points", "exemplars")}
        if live:
            for key, exemplars in (metric.get("exemplars") or {}).items():
                merged.exemplars.setdefault((shape, key), []).extend(exemplars)
        into = merged.points.setdefault(shape, {})
        rule = (rules.get(metric["name"]) or _known_rule(metric.get("rule"))) if kind == "gauge" else "sum"
        if rule == "worker":
            _fold_per_worker(into, metric["points"], str(document.get("pid")))
        elif kind == "histogram":
            _fold_histograms(into, metric["points"])
        elif rule == "sum":
            _fold_sums(into, metric["points"])
        else:
            _fold_gauges(merged, shape, into, metric["points"], rule=rule, stamp=stamp)


def _known_rule(rule: object) -> str:
    """A rule a worker's file names, if it is one; else ``last``."""
    return rule if isinstance(rule, str) and rule in GAUGE_RULES else "last"


def _fold_sums(into: dict[str, list[Any]], points: Iterable[list[Any]]) -> None:
    for point in points:
        before = into.get(point[0])
        if before is None:
            into[point[0]] = point[:_NUMBER_WIDTH]
        else:
            before[2] = _extreme(min, before[2], point[2])
            before[3] += point[3]


def _fold_histograms(into: dict[str, list[Any]], points: Iterable[list[Any]]) -> None:
    for point in points:
        before = into.get(point[0])
        if before is None:
            into[point[0]] = [*point[:5], list(point[5]), *point[6:_HISTOGRAM_WIDTH]]
            continue
        before[2] = _extreme(min, before[2], point[2])
        before[3] += point[3]
        before[4] += point[4]
        before[5] = [a + b for a, b in zip(before[5], point[5], strict=False)]
        before[6] = _extreme(min, before[6], point[6])
        before[7] = _extreme(max, before[7], point[7])


def _fold_gauges(
    merged: _Merged,
    shape: _Shape,
    into: dict[str, list[Any]],
    points: Iterable[list[Any]],
    *,
    rule: str,
    stamp: float,
) -> None:
    for point in points:
        before = into.get(point[0])
        if before is None:
            into[point[0]] = point[:_NUMBER_WIDTH]
            merged.stamps[(shape, point[0])] = stamp
        elif rule == "max":
            before[3] = max(before[3], point[3])
        elif rule == "min":
            before[3] = min(before[3], point[3])
        elif stamp >= merged.stamps[(shape, point[0])]:  # last: the most recent publish wins
            before[3] = point[3]
            merged.stamps[(shape, point[0])] = stamp


def _fold_per_worker(into: dict[str, list[Any]], points: Iterable[list[Any]], pid: str) -> None:
    for point in points:
        attributes = {**point[1], WORKER_ATTRIBUTE: pid}
        into[_attribute_key(attributes)] = [_attribute_key(attributes), attributes, *point[2:_NUMBER_WIDTH]]


def _extreme(pick: Callable[[float, float], float], a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else pick(a, b)


def _to_document(merged: _Merged) -> dict[str, Any]:
    metrics = [
        {
            **merged.shapes[shape],
            "points": list(points.values()),
            "exemplars": {
                key: merged.exemplars[(shape, key)] for key in points if (shape, key) in merged.exemplars
            },
        }
        for shape, points in merged.points.items()
        if points
    ]
    return {"format": FORMAT, "time": time.time(), "metrics": metrics}


def _apply_removals(
    merged: _Merged, removals: Iterable[Any], folded_at: Mapping[tuple[_Shape, str], float]
) -> None:
    """Drop accumulated series that a worker ended after they were folded."""
    for removal in removals:
        when, names, where = float(removal[0]), set(removal[1]), dict(removal[2])
        for shape, points in merged.points.items():
            if shape[2] not in names:
                continue
            for key in [k for k, p in points.items() if all(p[1].get(a) == v for a, v in where.items())]:
                if folded_at.get((shape, key), 0.0) <= when:
                    del points[key]


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
    with locked(directory):
        accumulated, folded_at, folded_files = _load_accumulator(directory)
        live, exited, report = _read_workers(directory, alive or worker_alive, folded_files)
        now = time.time()
        for _, document in exited:
            _fold(accumulated, document, rules, live=False)
            for metric in document["metrics"]:
                for point in metric["points"]:
                    folded_at[(_shape(metric), point[0])] = now
        for document in live:
            _apply_removals(accumulated, document.get("removals", ()), folded_at)
        if series_ttl_s > 0:  # idle accumulated series end too
            for shape, key in [k for k, t in folded_at.items() if now - t > series_ttl_s]:
                accumulated.points.get(shape, {}).pop(key, None)
        if exited or not (directory / ACCUMULATOR).exists():
            folded_files += [path.name for path, _ in exited]
            _store_accumulator(directory, accumulated, folded_at, now, folded_files[-FOLDED_FILES_KEPT:])
            for path, _ in exited:
                path.unlink(missing_ok=True)
        for document in live:
            _fold(accumulated, document, rules, live=True)
        return _to_document(accumulated), report


def _load_accumulator(directory: Path) -> tuple[_Merged, dict[tuple[_Shape, str], float], list[str]]:
    accumulated, folded_at = _Merged(), dict[tuple[_Shape, str], float]()
    previous = _load(directory / ACCUMULATOR)
    if previous is None:
        return accumulated, folded_at, []
    for metric in previous["metrics"]:
        width = _HISTOGRAM_WIDTH if metric["kind"] == "histogram" else _NUMBER_WIDTH
        for point in metric["points"]:
            folded_at[(_shape(metric), point[0])] = float(point[width]) if len(point) > width else 0.0
    _fold(accumulated, previous, {}, live=False)
    folded_files = previous.get("folded_files")
    return accumulated, folded_at, [str(name) for name in folded_files or ()]


def _store_accumulator(
    directory: Path,
    accumulated: _Merged,
    folded_at: Mapping[tuple[_Shape, str], float],
    now: float,
    folded_files: list[str],
) -> None:
    stored = _to_document(accumulated)
    for metric in stored["metrics"]:
        width = _HISTOGRAM_WIDTH if metric["kind"] == "histogram" else _NUMBER_WIDTH
        shape = _shape(metric)
        metric["points"] = [[*p[:width], folded_at.get((shape, p[0]), now)] for p in metric["points"]]
    stored["folded_files"] = folded_files
    write_atomically(directory / ACCUMULATOR, stored)


def _read_workers(
    directory: Path, is_alive: Callable[[int, str], bool], folded_files: list[str]
) -> tuple[list[dict[str, Any]], list[tuple[Path, dict[str, Any]]], MergeReport]:
    live: list[dict[str, Any]] = []
    exited: list[tuple[Path, dict[str, Any]]] = []
    report = MergeReport()
    folded = set(folded_files)
    for path in sorted(directory.glob("w-*.json")):
        if path.name in folded:  # already in the accumulator: counting it again would double it
            path.unlink(missing_ok=True)
            report.refolded += 1
            continue
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
        exemplars = metric.get("exemplars") or {}

        def of(point: list[Any], exemplars: Mapping[str, Any] = exemplars) -> list[Exemplar]:
            return [Exemplar({}, e[0], e[1], e[2], e[3]) for e in exemplars.get(point[0], ())]

        if kind == "histogram":
            data: Any = Histogram(
                [
                    HistogramDataPoint(
                        attributes=p[1],
                        start_time_unix_nano=p[2],
                        time_unix_nano=now,
                        count=p[3],
                        sum=p[4],
                        bucket_counts=p[5],
                        explicit_bounds=metric["bounds"],
                        min=p[6],
                        max=p[7],
                        exemplars=of(p),
                    )
                    for p in points
                ],
                _CUMULATIVE,
            )
        elif kind == "gauge":
            data = Gauge([NumberDataPoint(p[1], p[2], now, p[3], of(p)) for p in points])
        else:
            data = Sum(
                [NumberDataPoint(p[1], p[2], now, p[3], of(p)) for p in points],
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
