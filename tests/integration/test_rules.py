"""The Prometheus/Alertmanager bundle: the real tools validate it, Python checks the rest.

promtool and amtool check syntax and run the rule tests. They cannot see our conventions:
every alert's annotations and links, a firing and a quiet test per alert, recording-rule
names, replica dedupe, and that every metric an expression reads is one the exporter
exposes (exporter/names.py) or a rule records. Those checks are here, so a renamed metric,
a missing runbook heading or an untested alert fails the suite.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.names import BY_NAME, HISTOGRAM, OPT
from exporter.settings import GROUPABLE

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "prometheus"
CONFIG = PROM / "prometheus.yml"
ALERTMANAGER = PROM / "alertmanager.yml"
RUNBOOK = PROM / "runbook.md"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
DASHBOARDS = ROOT / "grafana" / "dashboards"

RUNBOOK_URL = (
    "https://github.com/llm-cost-exporter/llm-cost-exporter/blob/main/prometheus/runbook.md#"
)
GRAFANA_URL = "http://localhost:3000/d/"
WEBHOOK_URL = "http://webhook:9099/alerts"  # the e2e test rewrites this string
SEVERITIES = {"critical", "warning", "info"}
REPLICA_DEDUPE = "max without (instance, pod)"
# The only metric not exposed by the exporter that rules may read: Prometheus's own.
PROMETHEUS_METRICS = {"up"}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


def _rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of the given kind ("alert" or "record") across the rule files."""
    out: list[dict[str, Any]] = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            out += [r for r in group["rules"] if kind in r]
    return out


ALERTS = _rules("alert")
RECORDS = _rules("record")
RECORDED = {r["record"] for r in RECORDS}
ALERT_NAMES = sorted({r["alert"] for r in ALERTS})


def _metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (strings, matchers, ranges, groupings removed).

    A small tokenizer is enough for our rules: what is left after stripping those parts is
    operators, numbers, function names (followed by "(") and metric names.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()", expr):
        if m.group(0).lower() not in _KEYWORDS:
            names.add(m.group(0))
    return names


def _template_queries(text: str) -> list[str]:
    """The PromQL inside `printf "..." ... | query` of an annotation template."""
    return re.findall(r'printf\s+"((?:[^"\\]|\\.)*)"[^}]*\|\s*query', text)


def _is_known_metric(name: str) -> bool:
    if name in BY_NAME or name in PROMETHEUS_METRICS or name in RECORDED:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in BY_NAME and BY_NAME[base].type == HISTOGRAM:
            return True
    return False


# Labels the recording rules themselves add (label_replace): the spend heatmap's hour of day
# and weekday.
RULE_LABELS = {"hour", "weekday"}


def _exposed_labels() -> set[str]:
    labels = {label for spec in BY_NAME.values() for label in spec.labels if label != OPT}
    return labels | set(GROUPABLE) | RULE_LABELS  # GROUPABLE: the labels `{opt}` stands for


def _split_level(level: str, labels: set[str]) -> bool:
    """True if `level` is labels joined by "_" (labels may contain "_" themselves)."""
    if not level:
        return True
    return any(
        level == label
        or (level.startswith(label + "_") and _split_level(level[len(label) + 1 :], labels))
        for label in labels
    )


def _github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lower case, punctuation dropped, spaces to "-"."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def _dashboard_uids() -> set[str]:
    return {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}


def _dashboard_variables(uid: str) -> set[str]:
    for p in DASHBOARDS.glob("*.json"):
        dash = json.loads(p.read_text())
        if dash["uid"] == uid:
            return {v["name"] for v in dash["templating"]["list"]}
    return set()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


# --- the real tools --------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    """Also loads rules/*.yml relative to the config file, as Prometheus will."""
    out = _run(_tool("promtool"), "check", "config", str(CONFIG.relative_to(ROOT)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(RULE_FILES)} rule files found" in out.stdout


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    out = _run(_tool("promtool"), "check", "rules", str(path.relative_to(ROOT)))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    out = _run(_tool("promtool"), "test", "rules", str(path.relative_to(ROOT)))
    assert out.returncode == 0, out.stdout + out.stderr


def test_amtool_check_config() -> None:
    out = _run(_tool("amtool"), "check-config", str(ALERTMANAGER.relative_to(ROOT)))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["alertname=LLMBudgetThresholdCrossed", "budget=team", "severity=info"], "null"),
        (["alertname=LLMBudgetThresholdCrossed", "budget=team", "severity=warning"], "llm-finops"),
        # A budget at 100% is a FinOps ticket, never a page.
        (["alertname=LLMBudgetThresholdCrossed", "budget=team", "severity=critical"], "llm-finops"),
        (["alertname=LLMBudgetForecastOverrun", "budget=team", "severity=info"], "null"),
        (["alertname=LLMBudgetForecastOverrun", "budget=team", "severity=warning"], "llm-finops"),
        (["alertname=LLMExporterDown", "severity=critical"], "llm-critical"),
        (["alertname=LLMExporterDown", "severity=warning"], "llm-warning"),
        (
            ["alertname=LLMSourceAuthFailing", "provider=openai", "account=a", "severity=warning"],
            "llm-warning",
        ),
        (
            ["alertname=LLMSourceDown", "provider=openai", "account=a", "severity=warning"],
            "llm-warning",
        ),
    ],
)
def test_alertmanager_routes(labels: list[str], receivers: str) -> None:
    """Budget alerts reach FinOps only, other critical ones page, info goes nowhere."""
    out = _run(
        _tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receivers


# --- alerts ------------------------------------------------------------------------------------


def test_alert_names_are_prefixed_camel_case() -> None:
    assert ALERT_NAMES
    for name in ALERT_NAMES:
        assert re.fullmatch(r"LLM(?:[A-Z][a-z0-9]+)+", name), name


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    notes = rule["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url", "dashboard_url"}

    summary = notes["summary"]
    assert "{{" not in summary, "summary must be a static headline"
    assert summary.endswith("."), summary

    description = notes["description"]
    assert "{{" in description, "description must be templated"
    if "absent(" not in rule["expr"]:  # an absent series has no figure to give
        assert "$value" in description or "| query" in description, "description needs figures"

    anchor = notes["runbook_url"].removeprefix(RUNBOOK_URL)
    assert notes["runbook_url"] == RUNBOOK_URL + rule["alert"].lower(), notes["runbook_url"]
    assert anchor in _github_anchors(RUNBOOK.read_text()), f"no heading for #{anchor}"

    m = re.fullmatch(re.escape(GRAFANA_URL) + r"([a-z0-9-]+)(\?.*)?", notes["dashboard_url"])
    assert m, notes["dashboard_url"]
    assert m.group(1) in _dashboard_uids(), f"no dashboard with uid {m.group(1)}"
    for param in (m.group(2) or "?").lstrip("?").split("&"):
        if param:
            link = re.fullmatch(r"var-(\w+)=\{\{ \$labels\.(\w+) \| urlquery \}\}", param)
            assert link, param
            # The link filters something: the target dashboard has that variable...
            assert link.group(1) in _dashboard_variables(m.group(1)), (
                f"{m.group(1)} has no variable {link.group(1)}: {notes['dashboard_url']}"
            )
            assert link.group(1) == link.group(2), param


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    annotated: dict[str, set[str]] = {}
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for test in case.get("alert_rule_test", []):
                name = test["alertname"]
                assert name in ALERT_NAMES, f"{path.name} tests an unknown alert {name}"
                (firing if test.get("exp_alerts") else quiet).add(name)
                for exp in test.get("exp_alerts") or []:
                    assert "severity" in exp["exp_labels"], name
                    annotated.setdefault(name, set()).update(exp.get("exp_annotations", {}))
    for name in ALERT_NAMES:
        assert name in firing, f"{name} has no firing test"
        assert name in quiet, f"{name} has no non-firing test"
        keys = {"summary", "description", "runbook_url", "dashboard_url"}
        assert annotated[name] == keys, f"{name}: assert every rendered annotation"


def test_runbook_has_a_section_per_alert_and_no_stray_ones() -> None:
    text = RUNBOOK.read_text()
    sections = set(re.findall(r"^## (LLM\w+)\s*$", text, flags=re.MULTILINE))
    assert sections == set(ALERT_NAMES)


# --- expressions -------------------------------------------------------------------------------


def test_metric_name_extraction_sees_through_promql() -> None:
    """The tokenizer the next test relies on: functions, matchers, offsets and strings."""
    expr = (
        'sum by (provider) (max without (instance, pod) (increase(llm_tokens_total{model="x"}[1h]'
        ' offset 1w))) / on (provider) group_left label_replace(up, "a", "b", "", "") > 0.5'
    )
    assert _metric_names(expr) == {"llm_tokens_total", "up"}


@pytest.mark.parametrize(
    "rule", ALERTS + RECORDS, ids=lambda r: r.get("alert") or r.get("record") or "?"
)
def test_expressions_read_only_known_metrics(rule: dict[str, Any]) -> None:
    names = _metric_names(rule["expr"])
    assert names, "no metric found: extend _metric_names"
    unknown = {n for n in names if not _is_known_metric(n)}
    assert not unknown, f"not in exporter/names.py, not recorded, not `up`: {unknown}"
    for text in rule.get("annotations", {}).values():
        for query in _template_queries(text):
            bad = {n for n in _metric_names(query) if not _is_known_metric(n)}
            assert not bad, f"annotation query reads unknown metrics {bad}: {query}"


@pytest.mark.parametrize(
    "rule", ALERTS + RECORDS, ids=lambda r: r.get("alert") or r.get("record") or "?"
)
def test_exporter_metrics_are_deduped_across_replicas(rule: dict[str, Any]) -> None:
    """Replicas expose identical values: anything reading an exposed metric dedupes first."""
    if any(n in BY_NAME for n in _metric_names(rule["expr"])):
        assert REPLICA_DEDUPE in " ".join(rule["expr"].split())


# --- recording rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r["record"])
def test_recording_rule_names_are_level_metric_operations(rule: dict[str, Any]) -> None:
    level, metric, ops = rule["record"].split(":")
    assert re.fullmatch(r"[a-z0-9_]+", ops), ops
    assert _split_level(level, _exposed_labels()), f"level {level!r} is not a list of labels"
    assert not metric.endswith("_total"), "drop _total from counters in rule names"
    if metric in BY_NAME:
        assert BY_NAME[metric].type != "counter", "a counter keeps no name without _total"
    elif metric + "_total" in BY_NAME:
        assert ops.startswith(("increase", "rate")), f"counter {metric} needs rate/increase"
    else:
        numerator, _, _denominator = metric.partition("_per_")
        assert _denominator and "ratio" in ops, f"{metric} is no metric and no a_per_b ratio"
        assert any(n.startswith(numerator + "_") for n in BY_NAME), numerator


def test_every_recording_rule_says_why() -> None:
    for path in RULE_FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith("- record:"):
                assert lines[i - 1].lstrip().startswith("#"), f"{path.name}:{i + 1} needs a comment"


# --- Alertmanager ------------------------------------------------------------------------------


def _walk_routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in _walk_routes(child))]


def test_alertmanager_uses_matchers_and_groups_by_budget_and_account() -> None:
    am = yaml.safe_load(ALERTMANAGER.read_text())
    assert am["route"]["group_by"] == ["alertname", "budget", "provider", "account"]
    deprecated = {"match", "match_re", "source_match", "source_match_re", "target_match"}
    for route in _walk_routes(am["route"]):
        assert not deprecated & set(route), route
    for rule in am["inhibit_rules"]:
        assert not deprecated & set(rule) and "target_match_re" not in rule, rule


def test_alertmanager_inhibits_lower_severities_and_stale_data_of_a_down_source() -> None:
    rules = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    as_tuples = {
        (tuple(r["source_matchers"]), tuple(r["target_matchers"]), tuple(r["equal"])) for r in rules
    }
    assert (
        ('alertname=~"LLM.*"', 'severity="critical"'),
        ('alertname=~"LLM.*"', 'severity=~"warning|info"'),
        ("alertname", "budget"),
    ) in as_tuples
    assert (
        ('alertname="LLMSourceDown"',),
        ('alertname="LLMSourceDataStale"',),
        ("provider", "account", "endpoint"),
    ) in as_tuples
    # Every rule is scoped to this bundle's alerts, so it can join an existing Alertmanager.
    for r in rules:
        for side in ("source_matchers", "target_matchers"):
            assert any(m.startswith("alertname") for m in r[side]), r


def test_every_webhook_uses_the_one_overridable_url() -> None:
    """The e2e test replaces this exact string to receive every notification."""
    am = yaml.safe_load(ALERTMANAGER.read_text())
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and set(urls) == {WEBHOOK_URL}
