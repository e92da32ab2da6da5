"""The delimited protobuf exposition (``io.prometheus.client.MetricFamily``), hand-encoded.

Only the messages a scrape needs are written, field numbers as in Prometheus'
``metrics.proto`` (proto2): ``MetricFamily``, ``Metric``, ``LabelPair``,
``Counter``, ``Gauge``, ``Untyped``, ``Histogram``, ``Bucket``, ``BucketSpan``,
``Exemplar`` and ``google.protobuf.Timestamp``. Each family is preceded by its
length as a varint, as ``encoding=delimited`` asks.

A histogram family's classic samples (``_bucket``, ``_count``, ``_sum``) and
its native sample (``Sample.native_histogram``) with the same labels go into one
``Histogram`` message, so a scraper reads whichever it wants.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import Metric as Family
from prometheus_client.samples import BucketSpan, Exemplar, NativeHistogram, Sample, Timestamp

__all__ = ["CONTENT_TYPE", "encode"]

CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"

# MetricType
_COUNTER, _GAUGE, _UNTYPED, _HISTOGRAM = 0, 1, 3, 4
# wire types
_VARINT, _FIXED64, _BYTES = 0, 1, 2
_LOW_SEVEN_BITS = 0x7F


def encode(families: Iterable[Family]) -> bytes:
    """Every family as a length-delimited ``MetricFamily``."""
    out = bytearray()
    for family in families:
        for message in _family_messages(family):
            out += _varint(len(message))
            out += message
    return bytes(out)


def _family_messages(family: Family) -> list[bytes]:
    if family.type == "counter":
        total = f"{family.name}_total"
        metrics = [
            _metric(sample.labels, 3, _counter(sample), sample.timestamp)
            for sample in family.samples
            if sample.name == total
        ]
        return [_family(total, family.documentation, _COUNTER, metrics)]
    if family.type == "histogram":
        return [_family(family.name, family.documentation, _HISTOGRAM, _histograms(family))]
    if family.type in ("gauge", "info"):
        return _by_sample_name(family, _GAUGE, 2)
    # untyped, and anything without a protobuf shape of its own (summary, stateset, ...)
    return _by_sample_name(family, _UNTYPED, 5)


def _by_sample_name(family: Family, kind: int, value_field: int) -> list[bytes]:
    grouped: dict[str, list[bytes]] = {}
    for sample in family.samples:
        if sample.native_histogram is None:
            value = _double(1, float(sample.value))
            grouped.setdefault(sample.name, []).append(
                _metric(sample.labels, value_field, value, sample.timestamp)
            )
    return [_family(name, family.documentation, kind, metrics) for name, metrics in grouped.items()]


def _family(name: str, help_text: str, kind: int, metrics: Sequence[bytes]) -> bytes:
    out = _string(1, name) + _string(2, help_text) + _tag(3, _VARINT) + _varint(kind)
    for metric in metrics:
        out += _bytes(4, metric)
    return out


def _metric(
    labels: Mapping[str, str], value_field: int, value: bytes, timestamp: float | Timestamp | None
) -> bytes:
    out = _labels(1, labels) + _bytes(value_field, value)
    if timestamp is not None:
        out += _tag(6, _VARINT) + _varint(round(float(timestamp) * 1000))
    return out


def _labels(number: int, labels: Mapping[str, str]) -> bytes:
    return b"".join(
        _bytes(number, _string(1, name) + _string(2, value)) for name, value in sorted(labels.items())
    )


def _counter(sample: Sample) -> bytes:
    out = _double(1, float(sample.value))
    if sample.exemplar is not None:
        out += _bytes(2, _exemplar(sample.exemplar))
    return out


@dataclass
class _Histogram:
    labels: dict[str, str]
    timestamp: float | Timestamp | None = None
    count: float | None = None
    sum: float | None = None
    buckets: list[tuple[float, float, Exemplar | None]] = field(default_factory=list)
    native: NativeHistogram | None = None


def _histograms(family: Family) -> list[bytes]:
    series: dict[tuple[tuple[str, str], ...], _Histogram] = {}

    def of(sample: Sample) -> _Histogram:
        labels = {name: value for name, value in sample.labels.items() if name != "le"}
        key = tuple(sorted(labels.items()))
        if key not in series:
            series[key] = _Histogram(labels, sample.timestamp)
        return series[key]

    for sample in family.samples:
        if sample.native_histogram is not None:
            of(sample).native = sample.native_histogram
        elif sample.name == f"{family.name}_bucket":
            bound = float(sample.labels["le"])
            of(sample).buckets.append((bound, float(sample.value), sample.exemplar))
        elif sample.name == f"{family.name}_count":
            of(sample).count = float(sample.value)
        elif sample.name == f"{family.name}_sum":
            of(sample).sum = float(sample.value)
    return [_metric(one.labels, 7, _histogram(one), one.timestamp) for one in series.values()]


def _histogram(histogram: _Histogram) -> bytes:
    native = histogram.native
    count = histogram.count
    if count is None:
        infinite = [value for bound, value, _ in histogram.buckets if math.isinf(bound)]
        count = infinite[0] if infinite else float(native.count_value) if native else 0.0
    total = histogram.sum if histogram.sum is not None else float(native.sum_value) if native else 0.0
    out = _count(1, 4, count) + _double(2, total)
    for bound, cumulative, exemplar in histogram.buckets:
        # +Inf is implied by the sample count (client_golang leaves it out), unless it has an exemplar
        if math.isinf(bound) and bound > 0 and exemplar is None:
            continue
        bucket = _count(1, 4, cumulative) + _double(2, bound)
        if exemplar is not None:
            bucket += _bytes(3, _exemplar(exemplar))
        out += _bytes(3, bucket)
    if native is not None:
        out += _native(native)
    return out


def _native(native: NativeHistogram) -> bytes:
    out = _tag(5, _VARINT) + _varint(_zigzag(native.schema))
    out += _double(6, float(native.zero_threshold))
    out += _count(7, 8, native.zero_count)
    out += _spans_and_deltas(9, 10, native.neg_spans or (), native.neg_deltas or ())
    out += _spans_and_deltas(12, 13, native.pos_spans or (), native.pos_deltas or ())
    for exemplar in native.nh_exemplars or ():
        out += _bytes(16, _exemplar(exemplar))
    return out


def _spans_and_deltas(
    span_field: int, delta_field: int, spans: Sequence[BucketSpan], deltas: Sequence[int]
) -> bytes:
    out = bytearray()
    for span in spans:
        body = _tag(1, _VARINT) + _varint(_zigzag(span.offset)) + _tag(2, _VARINT) + _varint(span.length)
        out += _bytes(span_field, body)
    for delta in deltas:
        out += _tag(delta_field, _VARINT) + _varint(_zigzag(delta))
    return bytes(out)


def _exemplar(exemplar: Exemplar) -> bytes:
    out = _labels(1, exemplar.labels) + _double(2, float(exemplar.value))
    if exemplar.timestamp is not None:
        if isinstance(exemplar.timestamp, Timestamp):
            seconds, nanos = exemplar.timestamp.sec, exemplar.timestamp.nsec
        else:
            seconds = math.floor(exemplar.timestamp)
            nanos = round((exemplar.timestamp - seconds) * 1e9)
        stamp = _tag(1, _VARINT) + _varint(seconds) + _tag(2, _VARINT) + _varint(nanos)
        out += _bytes(3, stamp)
    return out


def _count(integer_field: int, float_field: int, value: float) -> bytes:
    """A count as ``uint64`` when it is a whole number, else in its ``double`` twin field."""
    if value >= 0 and float(value).is_integer():
        return _tag(integer_field, _VARINT) + _varint(int(value))
    return _double(float_field, float(value))


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf writes them
    out = bytearray()
    while value > _LOW_SEVEN_BITS:
        out.append(value & _LOW_SEVEN_BITS | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> int:
    return value << 1 if value >= 0 else (-value << 1) - 1


def _double(number: int, value: float) -> bytes:
    return _tag(number, _FIXED64) + struct.pack("<d", value)


def _string(number: int, value: str) -> bytes:
    return _bytes(number, value.encode("utf-8"))


def _bytes(number: int, value: bytes) -> bytes:
    return _tag(number, _BYTES) + _varint(len(value)) + value
