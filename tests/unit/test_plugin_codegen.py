"""What a registry can put into generated Python: only what is safe, and the series limit it declares."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import meshmetrics
from meshmetrics.__main__ import main
from meshmetrics.plugins import ConventionsError, load_conventions
from meshmetrics.testing import CapturedMetrics
from tests.conftest import import_path

REGISTRY = """\
groups:
  - id: registry.cache
    type: attribute_group
    brief: Cache attributes.
    attributes:
      - id: cache.key_prefix
        type: string
        stability: development
        brief: {brief}
        annotations:
          meshmetrics: {{policy: unbounded}}
      - id: cache.tier
        stability: development
        brief: Tier.
        type:
          members:
            - {{id: hot, value: hot, brief: Hot.}}
            - {{id: one, value: "1", brief: The first.}}
        annotations:
          meshmetrics: {{policy: enum}}
  - id: metric.cache.hits
    type: metric
    metric_name: cache.hits
    instrument: counter
    unit: "{{hit}}"
    stability: development
    brief: Cache hits.
    attributes:
      - {{ref: cache.key_prefix, requirement_level: required}}
      - {{ref: cache.tier, requirement_level: required}}
    annotations:
      meshmetrics: {{facade: {facade}, method: {method}, cardinality_limit: 3}}
  - id: metric.cache.misses
    type: metric
    metric_name: cache.misses
    instrument: counter
    unit: "{{miss}}"
    stability: development
    brief: Cache misses.
    attributes:
      - {{ref: cache.tier, requirement_level: required}}
    annotations:
      meshmetrics: {{facade: CacheMetrics, method: count_miss}}
"""


def _registry(
    tmp_path: Path, *, brief: str = "Prefix.", facade: str = "CacheMetrics", method: str = "count_hit"
) -> Path:
    path = tmp_path / "cache.yaml"
    path.write_text(REGISTRY.format(brief=brief, facade=facade, method=method), encoding="utf-8")
    return path


def _generate(tmp_path: Path, registry: Path) -> ModuleType:
    output = tmp_path / "cache_metrics.py"
    assert main(["generate", str(registry), "--output", str(output)]) == 0
    return import_path(output, f"cache_metrics_{abs(hash(tmp_path))}")


def test_a_brief_cannot_break_out_of_its_docstring(tmp_path):
    brief = textwrap.dedent('''\
        'Ends here """; import os; os.exit(3) """ and a \\\\ backslash.'
    ''').strip()
    module = _generate(tmp_path, _registry(tmp_path, brief=brief))
    declared = module.ATTRIBUTES["cache.key_prefix"].brief
    assert '"""' in declared and "\\" in declared  # the brief as written reached the module intact
    assert declared in " ".join(module.CacheMetrics.count_hit.__doc__.split())  # inside the docstring


def test_an_enum_value_that_starts_with_a_digit_gets_a_usable_constant(tmp_path):
    module = _generate(tmp_path, _registry(tmp_path))
    assert module.CacheTierValues.VALUE_1 == "1"
    assert module.CacheTierValues.HOT == "hot"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"method": "count_miss"},
            "metric 'cache.misses': the method of CacheMetrics 'count_miss' is taken by 'cache.hits'",
        ),
        ({"method": "class"}, "not a Python keyword"),
        ({"method": "conventions"}, "not a Python keyword"),
        ({"facade": "CONVENTIONS"}, "a class name of your own"),
        ({"facade": "PluginFacade"}, "a class name of your own"),
    ],
)
def test_names_a_generated_module_cannot_hold_are_refused(tmp_path, change, words):
    path = _registry(tmp_path, **change)
    with pytest.raises(ConventionsError, match=words) as refused:
        load_conventions(path)
    assert str(refused.value).startswith(f"{path}:")


def test_two_attributes_that_would_be_one_label_or_constant_are_refused(tmp_path):
    path = _registry(tmp_path)
    text = path.read_text().replace(
        "      - id: cache.tier\n",
        "      - id: cache.key.prefix\n        type: string\n        stability: development\n"
        "        brief: Clash.\n        annotations:\n          meshmetrics: {policy: unbounded}\n"
        "      - id: cache.tier\n",
    )
    path.write_text(text)
    with pytest.raises(
        ConventionsError,
        match=re.escape("the Prometheus label cache_key_prefix is taken by 'cache.key_prefix'"),
    ):
        load_conventions(path)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "sdk"])
def test_the_declared_series_limit_bounds_a_plugin_metric_on_both_paths(tmp_path, fast_path):
    path = _registry(tmp_path)
    module = _generate(tmp_path, path)
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader],
        conventions=[path],
        prometheus=False,
        fast_path=fast_path,
        set_global=False,
        environ={},
    )
    try:
        cache = module.CacheMetrics()
        for prefix in range(10):  # unbounded attribute, but the metric keeps at most 3 series
            cache.count_hit(f"user:{prefix}", "hot")
        cache.count_hit("x\x00\n" + "y" * 1000, "hot")  # sanitised before any exporter sees it
        captured = CapturedMetrics(reader)
        series = captured.series("cache.hits")
        assert len(series) <= 4  # the limit, and the one overflow series
        assert captured.value("cache.hits") == 11  # folded into the overflow series, never lost
        assert all(
            len(str(value)) <= 128 and "\x00" not in str(value) for s in series for value in s.values()
        )
    finally:
        handle.shutdown()


def _with(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_enum_values_and_units_stay_data_in_the_generated_module(tmp_path):
    path = _registry(tmp_path)
    _with(
        path,
        "{id: hot, value: hot, brief: Hot.}",
        """{id: hot, value: 'x" + str(exit(3)) + "', brief: Hot.}""",
    )
    _with(path, 'unit: "{{hit}}"'.replace("{{", "{").replace("}}", "}"), """unit: '{"+str(exit(4))+"}'""")
    module = _generate(tmp_path, path)  # importing it runs nothing
    values = [value for name, value in vars(module.CacheTierValues).items() if not name.startswith("__")]
    assert 'x" + str(exit(3)) + "' in values
    assert module.METRICS["cache.hits"].unit == '{"+str(exit(4))+"}'


def test_two_enum_values_that_would_be_one_constant_are_refused(tmp_path):
    path = _with(
        _registry(tmp_path),
        "{id: hot, value: hot, brief: Hot.}",
        "{id: hot, value: HOT, brief: Hot.}\n            - {id: h, value: hot, brief: Hot.}",
    )
    with pytest.raises(ConventionsError, match="two values are the one Python constant HOT"):
        load_conventions(path)


@pytest.mark.parametrize("word", ["duration", "real", "int", "error_type", "amount", "self"])
def test_an_attribute_named_like_what_a_method_uses_does_not_shadow_it(tmp_path, word):
    path = _with(_registry(tmp_path), "cache.key_prefix", f"cache.{word}")
    text = path.read_text().replace("cache.key_prefix", f"cache.{word}")
    path.write_text(
        text.replace(
            "      - {ref: cache.tier, requirement_level: required}\n    annotations:\n      meshmetrics: {facade: CacheMetrics, method: count_hit",
            "      - {ref: cache.tier, requirement_level: required}\n      - {ref: error.type, requirement_level: recommended}\n    annotations:\n      meshmetrics: {facade: CacheMetrics, method: count_hit",
        )
    )
    module = _generate(tmp_path, path)
    reader = InMemoryMetricReader()
    handle = meshmetrics.configure(
        readers=[reader], prometheus=False, strict=True, set_global=False, environ={}
    )
    try:
        cache = module.CacheMetrics()
        cache.count_hit("p", "hot", 2, error=TimeoutError())  # strict: any internal failure would raise
        captured = CapturedMetrics(reader)
        ((attributes, point),) = captured.points("cache.hits")
        assert point.value == 2
        assert attributes[f"cache.{word}"] == "p"
        assert attributes["error.type"] == "timeout"
    finally:
        handle.shutdown()


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("brief: Prefix.", 'brief: "Lone \\ud800"', "must be printable text"),
        (
            "      - id: cache.tier\n",
            "      - id: mesh_lb.strategy\n        type: string\n        stability: development\n        brief: Mine.\n        annotations:\n          meshmetrics: {policy: unbounded}\n      - id: cache.tier\n",
            "in Prometheus, mesh_ and meshmetrics_",
        ),
        (
            "metric_name: cache.misses",
            'metric_name: "cache.hits.total"',
            "the Prometheus name 'cache_hits_total' is taken by 'cache.hits'",
        ),
        ("metric_name: cache.misses", 'metric_name: "cache.misses\\n"', "must be dotted lower-case words"),
    ],
)
def test_what_would_corrupt_the_exposition_is_refused(tmp_path, old, new, words):
    path = _registry(tmp_path)
    text = path.read_text()
    if "metric_name: cache.misses" in old:
        text = text.replace(
            "id: metric.cache.misses", "id: metric." + new.split(": ", 1)[1].strip('"').replace("\\n", "")
        )
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConventionsError, match=re.escape(words)):
        load_conventions(path)


def test_a_histogram_and_a_gauge_cannot_share_a_sample_name(tmp_path):
    path = _registry(tmp_path)
    more = [
        "  - id: metric.cache.lat",
        "    type: metric",
        "    metric_name: cache.lat",
        "    instrument: histogram",
        "    unit: s",
        "    stability: development",
        "    brief: Latency.",
        "    annotations:",
        "      meshmetrics: {facade: CacheMetrics, buckets: [0.1, 1]}",
        "  - id: metric.cache.lat.seconds.count",
        "    type: metric",
        "    metric_name: cache.lat.seconds.count",
        "    instrument: gauge",
        '    unit: "{x}"',
        "    stability: development",
        "    brief: Not a count of the histogram.",
        "    annotations:",
        "      meshmetrics: {facade: CacheMetrics, multiprocess: last}",
    ]
    path.write_text(path.read_text() + "\n".join(more) + "\n")
    with pytest.raises(
        ConventionsError,
        match=re.escape("the Prometheus name 'cache_lat_seconds_count' is taken by 'cache.lat'"),
    ):
        load_conventions(path)
