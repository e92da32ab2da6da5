"""The setup mistakes meshmetrics raises: a base every layer may use."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A ``configure()`` argument or environment variable that is not allowed.

    The message names the setting, its source (``argument export_interval=``
    or ``variable OTEL_METRIC_EXPORT_INTERVAL``) and what is allowed.
    """
