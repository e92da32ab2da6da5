"""Exemplars: which measurements are kept (the filter), how the hot path sees the span, and collection.

The OpenTelemetry exemplar filters are ``trace_based`` (the default: only a
measurement made inside a sampled span), ``always_on`` and ``always_off``.
The hot path (in ``series.py``) reads the current span through
:func:`current_context` — one context-variable read when the API's default
runtime context is in use — and stores a sampled measurement as a
:data:`Sample` tuple in the calling thread's slot: counters keep the last one
per thread, histograms the last one per bucket per thread (the
aligned-histogram-bucket reservoir). A collection gives each reader the
samples recorded since that reader's previous collection (it remembers the
samples it has already seen, on the series, as it remembers delta state),
newest first across threads, as the SDK's ``Exemplar`` type.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from opentelemetry import context as _context
from opentelemetry.sdk.metrics._internal.exemplar import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Exemplar,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics._internal.exemplar import ExemplarFilter as SdkExemplarFilter
from opentelemetry.trace.propagation import _SPAN_KEY

ExemplarFilter = Literal["trace_based", "always_on", "always_off"]
FILTERS: tuple[ExemplarFilter, ...] = ("trace_based", "always_on", "always_off")
SPAN_KEY: str = _SPAN_KEY  # the context key of the current span (the API's own)

Sample = tuple[Any, int, "int | None", "int | None"]
"""One kept measurement: value, time (ns since the epoch), span id, trace id."""


def _context_getter() -> Callable[[], Mapping[str, object]]:
    """The cheapest way to read the current context: the context variable itself when it is there."""
    runtime = getattr(_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)  # ContextVarsRuntimeContext's ContextVar
    getter = getattr(variable, "get", None)
    if callable(getter):
        return getter  # type: ignore[no-any-return]
    return _context.get_current  # another runtime context: the public API


current_context = _context_getter()
"""Return the current OpenTelemetry context (a mapping); ``tests/unit/test_exemplars.py`` pins it."""

NO_CONTEXT: object = contextvars.Context().run(current_context)
"""What :func:`current_context` returns where nothing was ever attached (no span): one identity test."""


def sample(context: Mapping[str, object], value: Any, sampling: int) -> Sample | None:
    """The exemplar of ``value`` measured in ``context``, or None; ``sampling`` 1: trace_based, 2: always_on.

    A span that is sampled (trace flag 1) gives its ids; under always_on any
    valid span gives them, and a measurement outside spans is kept without.
    """
    span = context.get(SPAN_KEY)  # None in NO_CONTEXT, which is empty
    if span is not None:
        # a SpanContext is a tuple: unpacking it is cheaper than its properties (pinned by a test)
        trace_id, span_id, _, flags, _, valid = span.get_span_context()  # type: ignore[attr-defined]
        if flags & 1 or (sampling == ALWAYS_ON and valid):
            return (value, time.time_ns(), span_id, trace_id)
    if sampling == ALWAYS_ON:
        return (value, time.time_ns(), None, None)
    return None


ALWAYS_ON = 2


def sdk_exemplar_filter(name: ExemplarFilter) -> SdkExemplarFilter:
    """The SDK's filter object of ``name``, for ``MeterProvider(exemplar_filter=...)`` (the SDK path).

    Passing it also keeps the SDK from reading ``OTEL_METRICS_EXEMPLAR_FILTER``
    itself, which it does case-sensitively, raising on ``ALWAYS_ON``.
    """
    if name == "always_on":
        return AlwaysOnExemplarFilter()
    if name == "always_off":
        return AlwaysOffExemplarFilter()
    return TraceBasedExemplarFilter()


def _exemplar(sample: Sample) -> Exemplar:
    value, time_ns, span_id, trace_id = sample
    return Exemplar({}, value, time_ns, span_id, trace_id)


def newest_unseen(samples: Iterable[Sample | None], seen: frozenset[Sample]) -> Sample | None:
    """The newest of ``samples`` that the reader has not seen yet."""
    newest: Sample | None = None
    for sample in samples:
        if sample is not None and sample not in seen and (newest is None or sample[1] > newest[1]):
            newest = sample
    return newest


def collect_counter(per_thread: list[Sample], seen: frozenset[Sample]) -> list[Exemplar]:
    """A counter's exemplar for a reader: the newest sample it has not seen (at most one)."""
    newest = newest_unseen(per_thread, seen)
    return [] if newest is None else [_exemplar(newest)]


def collect_histogram(per_thread: list[list[Sample | None]], seen: frozenset[Sample]) -> list[Exemplar]:
    """A histogram's exemplars for a reader: per bucket, the newest sample it has not seen."""
    exemplars = []
    for bucket in zip(*per_thread, strict=True):
        newest = newest_unseen(bucket, seen)
        if newest is not None:
            exemplars.append(_exemplar(newest))
    return exemplars


def newest(first: Sample | None, second: Sample | None) -> Sample | None:
    """The later of two samples (either may be missing)."""
    if first is None:
        return second
    if second is None:
        return first
    return second if second[1] >= first[1] else first
