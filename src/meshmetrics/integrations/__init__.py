"""One-line metrics for the retry, circuit-breaker and client libraries services already use.

Each submodule imports its library; importing :mod:`meshmetrics` imports none
of them. Install the matching extra, e.g. ``pip install meshmetrics[tenacity]``.

- :mod:`meshmetrics.integrations.tenacity`: ``retry`` / ``instrument_retrying``
- :mod:`meshmetrics.integrations.stamina`: ``instrument`` (a stamina retry hook) and ``retry``
- :mod:`meshmetrics.integrations.backoff`: ``handlers``
- :mod:`meshmetrics.integrations.pybreaker`: ``instrument_breaker``
- :mod:`meshmetrics.integrations.purgatory`: ``instrument_factory`` (asyncio and sync)
- :mod:`meshmetrics.integrations.httpx`: ``MeshTransport``, ``AsyncMeshTransport``, ``routing``
- :mod:`meshmetrics.integrations.aiohttp`: ``mesh_trace_config``
- :mod:`meshmetrics.integrations.requests`: ``instrument_session``, ``MeshAdapter``
- :mod:`meshmetrics.integrations.grpc`: ``interceptors``, ``aio_interceptors``
"""
