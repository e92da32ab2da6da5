"""The SDK's export data as Prometheus metric families: our own translation.

It reproduces, family for family and sample for sample, what the OpenTelemetry
Prometheus exporter (``PrometheusMetricReader``) produces: the same names and
unit suffixes, ``target_info`` from the resource, the ``otel_scope_*`` labels,
label-name sanitising, ``""`` for a label a point lacks, cumulative
non-monotonic sums as gauges. So the text format is byte-identical. Two things
the exporter cannot do are added:

- **exemplars**: the latest exemplar per counter and per histogram bucket rides
  on the sample (``trace_id``/``span_id`` as lower-case hex). The plain text
  format ignores them; OpenMetrics shows them.
- **native histograms**: an exponential histogram's point becomes a sample
  carrying a :class:`~prometheus_client.samples.NativeHistogram`, in the same
  family as an explicit histogram of the same name, so one protobuf
  ``Histogram`` message can carry both. The text formats leave such samples out
  (see :func:`without_native`), as the exporter leaves out exponential histograms.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from json import dumps
from typing import Any

from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute, sanitize_full_name
from opentelemetry.sdk.metrics import Exemplar as SdkExemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.core import Metric as Family
from prometheus_client.samples import BucketSpan, Exemplar, NativeHistogram, Sample, Timestamp

from meshmetrics._log import RateLimitedLog

__all__ = [
    "MAX_NATIVE_SCHEMA",
    "MIN_NATIVE_SCHEMA",
    "NATIVE_ZERO_THRESHOLD",
    "TranslatingCollector",
    "spans_and_deltas",
    "translate",
    "without_native",
]

_TARGET_INFO_NAME = "target"
_TARGET_INFO_DESCRIPTION = "Target metadata"
# Prometheus' exponential schemas; a finer OpenTelemetry scale is merged down to 8
MAX_NATIVE_SCHEMA = 8
MIN_NATIVE_SCHEMA = -4
# client_golang's default. OpenTelemetry's zero bucket holds exact zeros only, but
# Prometheus 2.x tells a native histogram from a classic one by a positive zero
# threshold (or non-empty buckets), and an empty one has no buckets.
NATIVE_ZERO_THRESHOLD = 2.0**-128
# OpenMetrics caps an exemplar's label names and values at 128 characters in all
_EXEMPLAR_LABEL_CHARS = 128

_Factory = type[CounterMetricFamily] | type[GaugeMetricFamily] | type[HistogramMetricFamily]
_unsupported = RateLimitedLog()


class TranslatingCollector:
    """A ``prometheus_client`` collector that translates ``source()`` at every scrape.

    ``source`` returns the SDK's export data (a reader's latest collection, or
    the workers' merged state) or ``None`` for nothing to serve.
    """

    def __init__(self, source: Callable[[], MetricsData | None]) -> None:
        """Serve what ``source()`` returns at each scrape."""
        self._source = source

    def describe(self) -> Iterable[Family]:
        """Nothing to describe up front (registering must not run a collection)."""
        return []

    def collect(self) -> Iterator[Family]:
        """The families of one collection, in the exporter's order."""
        data = self._source()
        if data is not None:
            yield from translate(data)


def translate(data: MetricsData) -> list[Family]:
    """``data`` as Prometheus families: ``target_info`` first, then each metric where it first appears."""
    families: dict[str, Family] = {}
    resource: dict[str, Any] = {}
    for resource_metrics in data.resource_metrics:
        resource = {**resource, **resource_metrics.resource.attributes}
    families[_TARGET_INFO_NAME] = _target_info(resource)
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            scope = _scope_labels(scope_metrics.scope)
            for metric in scope_metrics.metrics:
                _add_metric(families, metric, scope)
    for family in families.values():
        family.samples = [_without_absent(sample) for sample in family.samples]
    return list(families.values())


def _without_absent(sample: Sample) -> Sample:
    """A sample without the attribute labels its point did not have.

    The OpenTelemetry exporter gives every sample of a family every label of
    the family, ``""`` where a point lacks the attribute (``error_type=""`` on
    a success). Prometheus reads an empty label as absent; so does this text,
    as the semantic conventions want it (the scope labels stay as they are).
    """
    if all(value or key.startswith("otel_scope_") for key, value in sample.labels.items()):
        return sample
    labels = {key: value for key, value in sample.labels.items() if value or key.startswith("otel_scope_")}
    return sample._replace(labels=labels)


def without_native(families: Iterable[Family]) -> Iterator[Family]:
    """The families without native-histogram samples, for the text formats.

    A family that only had native samples is left out altogether, as the
    OpenTelemetry exporter leaves out an exponential histogram.
    """
    for family in families:
        if not any(sample.native_histogram is not None for sample in family.samples):
            yield family
            continue
        classic = [sample for sample in family.samples if sample.native_histogram is None]
        if classic:
            trimmed = copy.copy(family)
            trimmed.samples = classic
            yield trimmed


def _target_info(resource: Mapping[str, Any]) -> InfoMetricFamily:
    labels = {sanitize_attribute(key): _label_value(value) for key, value in resource.items()}
    info = InfoMetricFamily(_TARGET_INFO_NAME, _TARGET_INFO_DESCRIPTION, labels=list(labels))
    info.add_metric(labels=list(labels), value=labels)
    return info


def _scope_labels(scope: InstrumentationScope) -> dict[str, Any]:
    labels: dict[str, Any] = {f"otel_scope_{key}": value for key, value in (scope.attributes or {}).items()}
    labels["otel_scope_name"] = scope.name or ""
    labels["otel_scope_version"] = scope.version or ""
    labels["otel_scope_schema_url"] = scope.schema_url or ""
    return labels


def _label_value(value: object) -> str:
    return value if isinstance(value, str) else dumps(value, default=str)


def _add_metric(families: dict[str, Family], metric: Metric, scope: Mapping[str, Any]) -> None:
    name = sanitize_full_name(metric.name)
    description = metric.description or ""
    unit = map_unit(metric.unit or "")
    data = metric.data
    keys, rows = _label_rows(data.data_points, scope)

    def family(factory: _Factory) -> Any:
        # the exporter's identity: a second metric with the same four joins the first one's family
        key = f"{name}|{description}|{unit}|{factory.__name__}"
        if key not in families:
            families[key] = factory(name=name, documentation=description, labels=keys, unit=unit)
        return families[key]

    if isinstance(data, Sum) and not _is_gauge(data):
        counter = family(CounterMetricFamily)
        for row, number in zip(rows, data.data_points, strict=True):
            counter.add_metric(row, number.value, exemplar=_latest(number.exemplars))
    elif isinstance(data, (Gauge, Sum)):
        gauge = family(GaugeMetricFamily)
        for row, number in zip(rows, data.data_points, strict=True):
            gauge.add_metric(row, number.value)
    elif isinstance(data, Histogram):
        histogram = family(HistogramMetricFamily)
        for row, point in zip(rows, data.data_points, strict=True):
            histogram.add_metric(row, _buckets(point), point.sum)
    elif isinstance(data, ExponentialHistogram):
        _add_native(family(HistogramMetricFamily), keys, rows, data.data_points)
    else:
        kind = type(data).__name__
        _unsupported.warning(f"unsupported:{kind}", "metric_data_unsupported", kind=kind)


def _add_native(
    histogram: HistogramMetricFamily,
    keys: Sequence[str],
    rows: Sequence[Sequence[str]],
    points: Sequence[ExponentialHistogramDataPoint],
) -> None:
    for row, point in zip(rows, points, strict=True):
        native = _native(point)
        if native is not None:
            labels = dict(zip(keys, row, strict=True))
            histogram.add_sample(histogram.name, labels, point.count, native_histogram=native)


def _is_gauge(data: Sum) -> bool:
    # the Prometheus compatibility specification: cumulative non-monotonic sums are gauges
    return not data.is_monotonic and data.aggregation_temporality == AggregationTemporality.CUMULATIVE


def _label_rows(
    points: Sequence[NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint],
    scope: Mapping[str, Any],
) -> tuple[list[str], list[list[str]]]:
    keys: set[str] = set()
    rows: list[dict[str, str]] = []
    for point in points:
        labels: dict[str, str] = {}
        for key, value in chain(scope.items(), (point.attributes or {}).items()):
            label = sanitize_attribute(key)
            keys.add(label)
            labels[label] = _label_value(value)
        rows.append(labels)
    ordered = sorted(keys)
    return ordered, [[labels.get(key, "") for key in ordered] for labels in rows]


def _buckets(point: HistogramDataPoint) -> list[tuple[str, int] | tuple[str, int, Exemplar]]:
    # an exemplar belongs to the first bucket whose upper bound is >= its value
    latest: dict[int, SdkExemplar] = {}
    bounds = list(point.explicit_bounds)
    for exemplar in point.exemplars:
        index = next((i for i, bound in enumerate(bounds) if exemplar.value <= bound), len(bounds))
        if index not in latest or exemplar.time_unix_nano >= latest[index].time_unix_nano:
            latest[index] = exemplar
    buckets: list[tuple[str, int] | tuple[str, int, Exemplar]] = []
    total = 0
    for index, (bound, count) in enumerate(zip(chain(bounds, ["+Inf"]), point.bucket_counts, strict=False)):
        total += count
        if index in latest:
            buckets.append((f"{bound}", total, _exemplar(latest[index])))
        else:
            buckets.append((f"{bound}", total))
    return buckets


def _latest(exemplars: Sequence[SdkExemplar]) -> Exemplar | None:
    if not exemplars:
        return None
    return _exemplar(max(exemplars, key=lambda exemplar: exemplar.time_unix_nano))


def _exemplar(exemplar: SdkExemplar) -> Exemplar:
    """The trace and span ids as Grafana links them, then filtered attributes while they fit."""
    labels: dict[str, str] = {}
    if exemplar.trace_id:
        labels["trace_id"] = format(exemplar.trace_id, "032x")
    if exemplar.span_id:
        labels["span_id"] = format(exemplar.span_id, "016x")
    used = sum(len(key) + len(value) for key, value in labels.items())
    for key, value in (exemplar.filtered_attributes or {}).items():
        label, text = sanitize_attribute(key), _label_value(value)
        if label in labels or used + len(label) + len(text) > _EXEMPLAR_LABEL_CHARS:
            continue
        labels[label] = text
        used += len(label) + len(text)
    seconds, nanos = divmod(exemplar.time_unix_nano, 1_000_000_000)
    return Exemplar(labels, exemplar.value, Timestamp(seconds, nanos))


def _native(point: ExponentialHistogramDataPoint) -> NativeHistogram | None:
    """The point as a Prometheus native histogram, or ``None`` for a scale coarser than schema -4."""
    if point.scale < MIN_NATIVE_SCHEMA:
        _unsupported.warning("scale", "exponential_scale_unsupported", scale=point.scale)
        return None
    shift = max(point.scale - MAX_NATIVE_SCHEMA, 0)
    positive_spans, positive_deltas = spans_and_deltas(
        point.positive.offset, point.positive.bucket_counts, shift
    )
    negative_spans, negative_deltas = spans_and_deltas(
        point.negative.offset, point.negative.bucket_counts, shift
    )
    exemplar = _latest(point.exemplars)
    return NativeHistogram(
        count_value=point.count,
        sum_value=point.sum,
        schema=point.scale - shift,
        zero_threshold=NATIVE_ZERO_THRESHOLD,
        zero_count=point.zero_count,
        pos_spans=positive_spans,
        neg_spans=negative_spans,
        pos_deltas=positive_deltas,
        neg_deltas=negative_deltas,
        nh_exemplars=[exemplar] if exemplar is not None else None,
    )


def spans_and_deltas(
    offset: int, counts: Sequence[int], shift: int = 0
) -> tuple[list[BucketSpan], list[int]]:
    """OpenTelemetry buckets as Prometheus spans and deltas, merged ``shift`` scales down.

    OpenTelemetry's bucket ``i`` is ``(base**i, base**(i+1)]``; Prometheus' bucket
    ``k`` is ``(base**(k-1), base**k]``, so ``k = i + 1``. Merging down one scale
    maps ``i`` to ``i >> 1`` (floor, also for negative ``i``). Empty buckets are
    left out: a gap starts a new span whose offset is the gap's length.
    """
    merged: dict[int, int] = {}
    for position, count in enumerate(counts):
        if count:
            key = ((offset + position) >> shift) + 1
            merged[key] = merged.get(key, 0) + count
    spans: list[BucketSpan] = []
    deltas: list[int] = []
    previous_key: int | None = None
    previous_count = 0
    for key in sorted(merged):
        if previous_key is None:
            spans.append(BucketSpan(key, 1))
        elif key == previous_key + 1:
            spans[-1] = BucketSpan(spans[-1].offset, spans[-1].length + 1)
        else:
            spans.append(BucketSpan(key - previous_key - 1, 1))
        deltas.append(merged[key] - previous_count)
        previous_key, previous_count = key, merged[key]
    return spans, deltas
