"""Hostile values into every parameter of every public facade and tracker method, a plugin's too.

In strict mode nothing but ``InvalidMeasurement`` may come out; in production
mode nothing at all. After each method's sweep the exposition parses and
passes ``promtool check metrics``, an OTLP export to a real receiver (rotel)
succeeds, and valid measurements recorded around every hostile call are exact.
Both paths: the fast path and the SDK path.
"""

from __future__ import annotations

import decimal
import inspect
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import meshmetrics
from meshmetrics import semconv
from tests.conftest import import_path
from tests.e2e.servers import require, rotel_receiver

pytestmark = pytest.mark.e2e

try:  # numpy scalars and arrays are hostile in their own ways (truth of an array raises)
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the dev extra
    np = None


class RaisingGetattr:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")


class RaisingBool:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth")


class RaisingStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


class RaisingHash:
    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    __hash__ = object.__hash__


class HostileStr(str):  # noqa: SLOT000 - hostile on purpose
    def lower(self) -> str:  # type: ignore[override]
        raise RuntimeError("no lower")

    def strip(self, chars: str | None = None) -> str:  # type: ignore[override]
        raise RuntimeError("no strip")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class HostileInt(int):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__

    def __index__(self) -> int:
        raise RuntimeError("no index")


class HostileFloat(float):
    def __float__(self) -> float:
        raise RuntimeError("no float")


HOSTILE: list[object] = [
    RaisingGetattr(),
    RaisingBool(),
    RaisingStr(),
    RaisingHash(),
    RaisingEq(),
    HostileStr("api"),
    HostileInt(3),
    HostileFloat(0.5),
    2**1024,
    2**63,
    -(2**63) - 1,
    10**5000,  # its repr raises ValueError
    math.nan,
    math.inf,
    -math.inf,
    -0.5,
    b"\xff\xfe\x00",
    bytearray(b"ok"),
    None,
    True,
    1.0,
    decimal.Decimal(1),
    "x" * 1_000_000,
    "\x00\n\u2028\ud800",
    "",
    object(),
    [1],
    {"a": 1},
]
if np is not None:
    HOSTILE += [np.int64(1), np.float64("nan"), np.float64(0.5), np.array([1, 2]), np.bool_(True)]

_REASONS = [v for a in semconv.ATTRIBUTES.values() if "reason" in a.key for v in a.allowed_values]
CANDIDATES: dict[str, list[object]] = {
    "service": ["api"],
    "instance": ["api-1"],
    "strategy": ["round_robin"],
    "operation": ["get"],
    "duration": [0.1],
    "delay": [0.1],
    "seconds": [0.1],
    "error": ["timeout"],
    "score": [0.5],
    "rate": [0.5],
    "healthy": [1],
    "degraded": [1],
    "unhealthy": [1],
    "unknown": [1],
    "attempt": [1],
    "attempts": [1],
    "succeeded": [True],
    "success": [True],
    "reason": _REASONS,
    "state": ["open", "healthy", "closed"],
    "previous_state": ["closed"],
    "initial_state": ["closed"],
    "outcome": ["success", "allowed"],
    "retries": [3],
    # the example plugin's generated facade (examples/plugins/ratelimit)
    "limiter": ["search"],
    "client": ["tenant-1"],
    "amount": [1],
    "value": [1.0],
}


def _plugin_facade() -> type:
    path = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "ratelimit" / "ratelimit_metrics.py"
    return import_path(path, "ratelimit_metrics_hostile").RateLimiterMetrics


FACADES = [
    meshmetrics.LoadBalancerMetrics,
    meshmetrics.RetryMetrics,
    meshmetrics.ServiceMeshMetrics,
    meshmetrics.CircuitBreakerMetrics,
    _plugin_facade(),  # adopted by each runtime on its first call: configure() is not told of it
]


def _parameters(function: Callable[..., Any]) -> list[str]:
    return [
        name
        for name, p in inspect.signature(function).parameters.items()
        if name not in ("self", "clock") and p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL
    ]


def _run(result: object) -> None:
    """Finish what a method returned: a tracker is used as a context manager."""
    if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
        with result:  # type: ignore[attr-defined]
            pass


def _baseline(method: Callable[..., Any]) -> dict[str, object] | None:
    """Valid arguments for ``method`` (checked in strict mode), or None if a parameter has no candidate."""
    arguments: dict[str, object] = {}
    for name in _parameters(method):
        if name not in CANDIDATES:
            return None
        arguments[name] = CANDIDATES[name][0]
    for name in _parameters(method):
        for candidate in CANDIDATES[name]:
            arguments[name] = candidate
            try:
                _run(method(**arguments))
                break
            except ValueError:
                continue
    return arguments


def _methods() -> Iterator[tuple[str, Callable[[], Any], str]]:
    """(label, factory of the bound method, owner) for every public facade and tracker method."""
    for facade in FACADES:
        for name, _ in inspect.getmembers(facade, inspect.isfunction):
            if not name.startswith("_"):
                yield f"{facade.__name__}.{name}", (lambda f=facade, n=name: getattr(f(), n)), "facade"
    trackers = {
        "LoadBalancerMetrics.track_request": lambda: meshmetrics.LoadBalancerMetrics().track_request(
            "api", "api-1", "round_robin"
        ),
        "RetryMetrics.track_call": lambda: meshmetrics.RetryMetrics().track_call("api", "get"),
        "ServiceMeshMetrics.track_call": lambda: meshmetrics.ServiceMeshMetrics().track_call("api", "get"),
        "CircuitBreakerMetrics.tracker": lambda: meshmetrics.CircuitBreakerMetrics().tracker("api"),
        "LoadBalancerMetrics.outlier_tracker": lambda: meshmetrics.LoadBalancerMetrics().outlier_tracker(
            "api"
        ),
    }
    for label, make in trackers.items():
        for name, _ in inspect.getmembers(type(make()), inspect.isfunction):
            if not name.startswith("_"):
                yield f"{label}().{name}", (lambda m=make, n=name: getattr(m(), n)), "tracker"


METHODS = list(_methods())


@contextmanager
def _configured(strict: bool, fast_path: bool, otlp_endpoint: str) -> Iterator[meshmetrics.MetricsHandle]:
    handle = meshmetrics.configure(
        prometheus_port=0,
        prometheus_host="127.0.0.1",
        otlp_endpoint=otlp_endpoint,
        export_interval=3600,
        strict=strict,
        fast_path=fast_path,
        set_global=False,
        environ={},
    )
    try:
        yield handle
    finally:
        handle.shutdown()


def _call(method: Callable[..., Any], arguments: dict[str, object], strict: bool) -> None:
    try:
        _run(method(**arguments))
    except meshmetrics.InvalidMeasurement:
        if not strict:
            raise


def _check_outputs(handle: meshmetrics.MetricsHandle, promtool: str, sentinels: int) -> None:
    assert handle.prometheus_url is not None
    with urlopen(handle.prometheus_url, timeout=10) as response:
        text = response.read().decode()
    found = 0.0
    for family in text_string_to_metric_families(text):  # parses, or raises
        for sample in family.samples:
            if sample.name == "mesh_lb_requests_total" and sample.labels.get("mesh_instance") == "sentinel":
                found += sample.value
    assert found == sentinels  # nothing valid was lost around the hostile calls
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    problems = [line for line in (checked.stdout + checked.stderr).splitlines() if "error" in line.lower()]
    assert problems == [], problems
    assert handle.force_flush(timeout=10) is True  # the real receiver took the export


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "sdk"])
@pytest.mark.parametrize("strict", [False, True], ids=["production", "strict"])
def test_every_parameter_of_every_method_survives_hostile_values(strict, fast_path):
    promtool = require(shutil.which("promtool"), "promtool (Debian package prometheus)")
    with rotel_receiver() as rotel, _configured(strict, fast_path, rotel.grpc_endpoint) as handle:
        sentinel = meshmetrics.LoadBalancerMetrics()
        sentinels = 0
        failures: list[str] = []
        for label, bound, _ in METHODS:
            arguments = _baseline(bound())
            assert arguments is not None, f"{label}: add its parameters to CANDIDATES"
            for name in arguments:
                for value in HOSTILE:
                    try:
                        _call(bound(), {**arguments, name: value}, strict)
                    except Exception as error:  # every escape is listed below
                        failures.append(f"{label}({name}={type(value).__name__}) raised {error!r}")
                    sentinel.record_request("api", "sentinel", "round_robin")
                    sentinels += 1
            _check_outputs(handle, promtool, sentinels)
        assert failures == [], "\n".join(failures)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            st.sampled_from(METHODS),
            st.data(),
            st.one_of(
                st.sampled_from(range(len(HOSTILE))).map(HOSTILE.__getitem__),  # hypothesis hashes samples
                st.text(),
                st.binary(),
                st.integers(),
                st.floats(),
                st.none(),
                st.booleans(),
            ),
        )
        def any_value_anywhere(method, data, value):
            _, bound, _ = method
            arguments = _baseline(bound()) or {}
            if not arguments:
                return
            name = data.draw(st.sampled_from(sorted(arguments)))
            _call(bound(), {**arguments, name: value}, strict)

        any_value_anywhere()
        _check_outputs(handle, promtool, sentinels)
