"""The registry is the source of truth: generated code and docs must match it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from meshmetrics import semconv
from meshmetrics._conventions.document import ConventionsError
from meshmetrics._conventions.loader import load
from meshmetrics._conventions.python import render_semconv

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_conventions", ROOT / "tools" / "gen_conventions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_conventions"] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_generated_files_match_the_registry():
    for path, expected in gen.outputs().items():
        assert path.read_text(encoding="utf-8") == expected, f"{path.name} is stale: run `make conventions`"


def test_every_yaml_metric_is_in_semconv_with_same_kind_unit_and_attributes():
    document = yaml.safe_load((ROOT / "conventions" / "registry.yaml").read_text())
    metrics = [group for group in document["groups"] if group["type"] == "metric"]
    assert len(metrics) == len(semconv.METRICS)
    for raw in metrics:
        definition = semconv.METRICS[raw["metric_name"]]
        assert definition.instrument == raw["instrument"]
        assert definition.unit == str(raw["unit"])
        assert [use.key for use in definition.attributes] == [a["ref"] for a in raw["attributes"]]
        buckets = raw["annotations"]["meshmetrics"].get("buckets", [])
        assert list(definition.buckets) == [float(b) for b in buckets]


def test_editing_the_registry_is_detected_as_drift(tmp_path):
    text = (ROOT / "conventions" / "registry.yaml").read_text()
    edited = tmp_path / "registry.yaml"
    edited.write_text(text.replace('unit: "{request}"', 'unit: "{req}"', 1))
    assert render_semconv(load(edited)) != (ROOT / "src/meshmetrics/semconv.py").read_text()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "- {ref: mesh.lb.strategy, requirement_level: required}",
            "- {ref: mesh.lb.nope, requirement_level: required}",
            "not defined",
        ),
        ("instrument: counter", "instrument: meter", "'meter' is not one of counter"),
        ("buckets: [1, 2, 3, 4, 5, 7, 10]", "buckets: [1, 3, 2]", r"strictly increasing \(2 after 3\)"),
        (
            "meshmetrics: {policy: bounded, limit: 50}",
            "meshmetrics: {policy: bounded}",
            "missing key 'limit'",
        ),
    ],
)
def test_registry_rules_are_enforced(tmp_path, old, new, message):
    text = (ROOT / "conventions" / "registry.yaml").read_text()
    assert old in text
    edited = tmp_path / "registry.yaml"
    edited.write_text(text.replace(old, new, 1))
    with pytest.raises(ConventionsError, match=message):
        load(edited)


def test_attribute_constants_and_enums():
    assert semconv.ATTR_MESH_SERVICE == "mesh.service"
    assert semconv.METRIC_MESH_LB_REQUESTS == "mesh.lb.requests"
    assert semconv.MeshRetryOutcomeValues.SUCCESSFUL_WITH_RETRY == "successful_with_retry"
    assert semconv.ATTRIBUTES["mesh.lb.strategy"].allowed_values[-1] == "_OTHER"
    assert semconv.ATTRIBUTES["mesh.instance"].policy == "bounded"


def test_reference_lists_every_metric_with_prometheus_name():
    reference = (ROOT / "conventions" / "README.md").read_text()
    for definition in semconv.METRICS.values():
        assert f"`{definition.name}` | `{definition.prometheus_name}`" in reference
