"""The dashboard and the Prometheus rules use only names the registry produces; promtool agrees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshmetrics import semconv
from tests.e2e.servers import require

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "conventions" / "dashboards" / "mesh-overview.json"
RULES = ROOT / "conventions" / "prometheus" / "rules.yaml"
NAME = re.compile(r"(?<![:\w])((?:mesh|meshmetrics)_[a-z0-9_]+)(?![:\w])")


def series_names() -> set[str]:
    names = set()
    for definition in semconv.METRICS.values():
        if definition.instrument == "histogram":
            names |= {definition.prometheus_name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(definition.prometheus_name)
    return names


def label_names() -> set[str]:
    return {key.replace(".", "_") for key in semconv.ATTRIBUTES}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def rule_queries() -> tuple[list[str], set[str]]:
    document = yaml.safe_load(RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    return [rule["expr"] for rule in rules], {rule["record"] for rule in rules if "record" in rule}


def test_every_query_uses_registry_names_only():
    rule_exprs, recorded = rule_queries()
    known = series_names() | label_names()
    for expr in dashboard_queries() + rule_exprs:
        for name in NAME.findall(expr):
            assert name in known, f"{name!r} in {expr!r} is not produced by the registry"
        for name in re.findall(r"([a-z_:][a-z0-9_:]*)\s*\{", expr):
            if name.startswith(("mesh", "meshmetrics")):
                assert name in series_names() | recorded, f"{name!r} is not a series"


def test_a_renamed_metric_would_be_caught():
    assert "mesh_lb_request_total" not in series_names() | label_names()
    assert NAME.findall('rate(mesh_lb_request_total{mesh_service="a"}[5m])') == [
        "mesh_lb_request_total",
        "mesh_service",
    ]


def test_dashboard_shape():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["service"]["includeAll"] is True
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Golden signals",
        "Load balancing",
        "Retries",
        "Circuit breakers",
        "Registry and health",
        "meshmetrics itself",
    ]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(
        'mesh_service=~"$service"' in t["expr"]
        for p in panels
        for t in p["targets"]
        if "meshmetrics_" not in t["expr"]
    )
    # every mesh metric of the registry is on the dashboard
    used = {name for expr in dashboard_queries() for name in NAME.findall(expr)}
    for definition in semconv.METRICS.values():
        assert any(name.startswith(definition.prometheus_name) for name in used), definition.name


def promtool() -> str:
    return require(shutil.which("promtool"), "promtool (Debian package prometheus)")


def test_promtool_check_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests():
    result = subprocess.run(
        [promtool(), "test", "rules", "rules.test.yaml"],
        capture_output=True,
        text=True,
        cwd=RULES.parent,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_and_a_firing_test():
    document = yaml.safe_load(RULES.read_text())
    alerts = [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    runbook = (RULES.parent / "README.md").read_text()
    tests = yaml.safe_load((RULES.parent / "rules.test.yaml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    for rule in alerts:
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        assert f"### {rule['alert']}\n" in runbook
        assert rule["alert"] in fired, f"no promtool test shows {rule['alert']} firing"


@pytest.mark.parametrize("objective", [0.99, 0.9995])
def test_objective_is_configurable(tmp_path, objective):
    out = tmp_path / "rules.yaml"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "gen_rules.py"),
            "--objective",
            str(objective),
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    text = out.read_text()
    budget = 1 - objective
    assert f"> {14.4 * budget:.6g}" in text


def test_runbook_base_is_configurable(tmp_path):
    out = tmp_path / "rules.yaml"
    base = "https://wiki.example.com/mesh-runbooks.md"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_rules.py"), "--runbook-base", base, "--output", str(out)],
        check=True,
        capture_output=True,
    )
    alerts = [rule for group in yaml.safe_load(out.read_text())["groups"] for rule in group["rules"]]
    urls = {rule["alert"]: rule["annotations"]["runbook_url"] for rule in alerts if "alert" in rule}
    assert urls["MeshCircuitBreakerOpenShare"] == f"{base}#meshcircuitbreakeropenshare"
    assert all(url == f"{base}#{name.lower()}" for name, url in urls.items())
    default = yaml.safe_load(RULES.read_text())["groups"][1]["rules"][0]["annotations"]["runbook_url"]
    assert default.startswith("conventions/prometheus/README.md#")


def test_generators_and_top_share_the_generated_prometheus_names():
    for name, definition in semconv.METRICS.items():
        assert semconv.PROMETHEUS_NAMES[name] == definition.prometheus_name
        samples = semconv.PROMETHEUS_SAMPLES[name]
        assert samples[0].startswith(definition.prometheus_name)
        assert len(samples) == (3 if definition.instrument == "histogram" else 1)
    assert set(semconv.PROMETHEUS_LABELS.values()) == label_names()
    assert semconv.PROMETHEUS_LABELS["error.type"] == "error_type"
