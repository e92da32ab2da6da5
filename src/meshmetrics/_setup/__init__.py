"""Setup: settings from arguments and ``OTEL_*`` variables, the MeterProvider, OTLP, fork handling."""
