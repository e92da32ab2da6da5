"""Your own metrics: a conventions registry of your team's, with facades as cheap and safe as ours.

Declare your instruments in YAML, in the shape of meshmetrics'
``conventions/registry.yaml``, under a namespace of your own (you may
reference meshmetrics' attributes, such as ``mesh.service``). Then::

    python -m meshmetrics generate my_conventions.yaml --output mypkg/metrics.py

writes a typed module with one facade class per declared ``facade``, and::

    meshmetrics.configure(conventions=["my_conventions.yaml"])

registers its instruments with the provider (Views, series limits, detail
profiles, multiprocess rules) as meshmetrics' own. A generated facade used
without that argument registers its metrics on its first call; pass the file
anyway, so that a broken plugin fails at start-up and the SDK path gets its
Views. This module holds what generated modules import.
"""

from __future__ import annotations

from os import PathLike
from typing import ClassVar

from meshmetrics import semconv
from meshmetrics._conventions.document import ConventionsError
from meshmetrics._conventions.loader import load as _load
from meshmetrics._definitions import AttributeDefinition, AttributeUse, Conventions, MetricDefinition
from meshmetrics._engine.runtime import Runtime
from meshmetrics._engine.series import Table
from meshmetrics._facade import Facade, duration, error_type, non_negative, real

__all__ = [
    "AttributeDefinition",
    "AttributeUse",
    "Conventions",
    "ConventionsError",
    "MetricDefinition",
    "PluginFacade",
    "duration",
    "error_type",
    "load_conventions",
    "non_negative",
    "real",
]


class PluginFacade(Facade):
    """Base of generated facades: records a plugin's metrics through meshmetrics' fast path.

    A subclass names its registry in ``conventions``; the first call on a
    runtime that was not configured with it adds its metrics to that runtime.
    """

    __slots__ = ()
    conventions: ClassVar[Conventions]
    """The registry the facade's metrics come from (the generated module's ``CONVENTIONS``)."""

    def _adopt(self, runtime: Runtime, metric: MetricDefinition) -> Table:
        runtime.adopt(self.conventions)  # refused when a name is already defined differently
        return runtime.by_key[metric.key]


def load_conventions(path: str | PathLike[str]) -> Conventions:
    """Read and check a plugin registry; raises :class:`ConventionsError` (one line: file, line, rule)."""
    return _load(path, builtin=semconv.CONVENTIONS).conventions()
