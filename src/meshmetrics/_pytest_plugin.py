"""pytest plugin: the ``meshmetrics_capture`` fixture (registered through ``pytest11``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshmetrics.testing import CapturedMetrics, capture


@pytest.fixture
def meshmetrics_capture() -> Iterator[CapturedMetrics]:
    """Capture every meshmetrics measurement made during the test (strict mode)."""
    with capture() as captured:
        yield captured
