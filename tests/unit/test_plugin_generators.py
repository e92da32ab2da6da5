"""A plugin's Grafana dashboard and recording rules: derived from its registry, names from it only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshmetrics import semconv
from meshmetrics._conventions.dashboard import render_plugin_dashboard
from meshmetrics._conventions.loader import Registry, load, load_text
from meshmetrics._conventions.names import prometheus_label
from meshmetrics._conventions.rules import render_plugin_rules
from tests.e2e.servers import require

ROOT = Path(__file__).parents[2]
PLUGIN = ROOT / "examples" / "plugins" / "ratelimit" / "ratelimit.yaml"
SOURCE = "examples/plugins/ratelimit/ratelimit.yaml"
PROMQL_WORDS = {"sum", "max", "min", "by", "rate", "histogram_quantile", "label_values"}
BARE_COUNTER = """
groups:
  - id: metric.acme.jobs
    type: metric
    metric_name: acme.jobs
    instrument: counter
    unit: "{job}"
    stability: development
    brief: Jobs run.
    annotations:
      meshmetrics: {facade: JobMetrics}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load(PLUGIN, builtin=semconv.CONVENTIONS)


def samples(metric: dict) -> set[str]:
    name = metric["prometheus_name"]
    if metric["instrument"] == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses."""
    labels = set()
    for series, label in re.findall(r"label_values\((\w+), (\w+)\)", expr):
        return {series}, {label}
    for group in re.findall(r"by \(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", expr))
    plain = re.sub(r'"[^"]*"|\[[^\]]*\]|\bby \([^)]*\)', " ", expr)
    identifiers = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", plain))
    return identifiers - PROMQL_WORDS - labels, labels


def owner(registry: Registry, expr: str) -> dict:
    """The one metric whose samples ``expr`` reads, checking it reads no other name."""
    metrics, _ = names_in(expr)
    owners = [m for m in registry.metrics if metrics & samples(m)]
    assert len(owners) == 1, f"{expr!r} reads {metrics}, not one metric's samples"
    assert metrics <= samples(owners[0]), f"{expr!r}: {metrics - samples(owners[0])} are not samples"
    return owners[0]


def assert_registry_names(registry: Registry, expr: str) -> None:
    metric = owner(registry, expr)
    _, labels = names_in(expr)
    allowed = {prometheus_label(use["key"]) for use in metric["attributes"]} | {"le"}
    assert labels <= allowed, f"{expr!r}: {labels - allowed} are not labels of {metric['name']}"


def dashboard_of(registry: Registry) -> dict:
    return json.loads(render_plugin_dashboard(registry))


def rules_of(registry: Registry) -> list[dict]:
    document = yaml.safe_load(render_plugin_rules(registry, SOURCE))
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool() -> str:
    return require(shutil.which("promtool"), "promtool (Debian package prometheus)")


def check_rules(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_plugin_rules_pass_promtool(registry, tmp_path):
    check_rules(tmp_path, render_plugin_rules(registry, SOURCE))


def test_plugin_rules_evaluate_in_promtool(registry, tmp_path):
    (tmp_path / "rules.yaml").write_text(render_plugin_rules(registry, SOURCE))
    labels = 'mesh_service="checkout",ratelimit_limiter="writes",ratelimit_outcome="allowed"'
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # two clients at 1/s each: the recorded rate sums them, client dropped
                    {
                        "series": f'ratelimit_decisions_total{{{labels},ratelimit_client="a"}}',
                        "values": "0+60x10",
                    },
                    {
                        "series": f'ratelimit_decisions_total{{{labels},ratelimit_client="b"}}',
                        "values": "0+60x10",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": "mesh_service_ratelimit_limiter_ratelimit_outcome:ratelimit_decisions:rate5m",
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": "mesh_service_ratelimit_limiter_ratelimit_outcome:ratelimit_decisions:rate5m"
                                f"{{{labels}}}",
                                "value": 2,
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "rules.test.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool(), "test", "rules", "rules.test.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_plugin_rules_header_and_names(registry):
    text = render_plugin_rules(registry, SOURCE)
    assert text.startswith(f"# Generated by meshmetrics from {SOURCE}; do not edit.\n")
    for rule in rules_of(registry):
        assert set(rule) == {"record", "expr"}
        level, metric, operation = rule["record"].split(":")
        assert metric in {m["prometheus_name"].removesuffix("_total") for m in registry.metrics}
        kept = [
            label for label in re.findall(r"by \(([^)]*)\)", rule["expr"])[0].split(", ") if label != "le"
        ]
        assert level == "_".join(kept)
        assert operation in {"rate5m", "p50_5m", "p90_5m", "p99_5m", "sum", "max", "min"}


def test_every_rule_per_metric(registry):
    records = [rule["record"] for rule in rules_of(registry)]
    assert len(records) == len(set(records))
    for metric in registry.metrics:
        base = metric["prometheus_name"].removesuffix("_total")
        mine = [r for r in records if r.split(":")[1] == base]
        expected = 3 if metric["instrument"] == "histogram" else 1
        assert len(mine) == expected, (metric["name"], mine)


def test_plugin_queries_use_registry_names_only(registry):
    dashboard = dashboard_of(registry)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    exprs += [rule["expr"] for rule in rules_of(registry)]
    assert exprs
    for expr in exprs:
        assert_registry_names(registry, expr)


def test_a_foreign_name_would_be_caught(registry):
    with pytest.raises(AssertionError):
        assert_registry_names(registry, "sum by (mesh_service) (rate(ratelimit_decision_total[5m]))")
    with pytest.raises(AssertionError):
        assert_registry_names(registry, "sum by (ratelimit_client) (ratelimit_waiting)")


def test_plugin_dashboard_shape(registry):
    dashboard = dashboard_of(registry)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["service"]["includeAll"] is True
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == list(dict.fromkeys(m["facade"] for m in registry.metrics))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    assert all('mesh_service=~"$service"' in t["expr"] for p in panels for t in p["targets"])


def test_one_panel_set_per_metric(registry):
    panels = [p for p in dashboard_of(registry)["panels"] if p["type"] != "row"]
    for metric in registry.metrics:
        mine = [p for p in panels if any(owner(registry, t["expr"]) is metric for t in p["targets"])]
        if metric["instrument"] == "histogram":
            quantiles = [p for p in mine if "histogram_quantile" in p["targets"][0]["expr"]]
            assert len(mine) == 2, metric["name"]
            assert len(quantiles) == 1, metric["name"]
            assert all(t["exemplar"] is True for t in quantiles[0]["targets"])
            assert len(quantiles[0]["targets"]) == 2  # p50 and p99
            assert quantiles[0]["fieldConfig"]["defaults"]["unit"] == "s"
        else:
            assert len(mine) == 1, metric["name"]
            assert not any("exemplar" in t for t in mine[0]["targets"])


def test_a_plugin_without_mesh_service(tmp_path):
    bare = load_text(BARE_COUNTER, "acme.yaml", builtin=semconv.CONVENTIONS)
    dashboard = json.loads(render_plugin_dashboard(bare))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    (panel,) = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panel["targets"][0]["expr"] == "sum (rate(acme_jobs_total[$__rate_interval]))"
    rules = render_plugin_rules(bare, "acme.yaml")
    assert yaml.safe_load(rules)["groups"][0]["rules"] == [
        {"record": "acme_jobs:rate5m", "expr": "sum (rate(acme_jobs_total[5m]))"}
    ]
    check_rules(tmp_path, rules)
