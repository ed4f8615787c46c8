"""The whole stack as a user runs it, as plain processes on loopback.

Simulator -> exporter -> real `prometheus` (shipped rules) -> real `prometheus-alertmanager`
(shipped routing) -> a webhook in this test. Checks: PromQL totals equal the exposition, the
exposition passes `promtool check metrics` with all three providers on, a budget alert
reaches the webhook with its figures and resolves when the limit is raised, every dashboard
panel query returns data with the variables at All and filters with each variable at one
value, and the Overview shows what it must (model Status against budget scopes, the CPI
column, alert links that select something). The Overview's main panels are drawn from the
live query results into overview.png in the test's temporary directory (path printed).
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import importlib.util
import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import grafana
from tests.clock import real_now
from tests.helpers import (
    ROOT,
    binary,
    exporter_cmd,
    free_port,
    http_get,
    http_json,
    parse,
    process,
    prom_query,
    total,
    wait_for,
)

pytestmark = pytest.mark.e2e

PROMETHEUS = binary("prometheus")
ALERTMANAGER = binary("prometheus-alertmanager", "alertmanager")
needs_binaries = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="needs the prometheus and prometheus-alertmanager binaries (Debian packages)",
)

RESEARCH = "proj_sim_research"  # an OpenAI project of the simulator
KEYS = {
    "E2E_OPENAI_KEY": "test-openai-admin-key",
    "E2E_ANTHROPIC_KEY": "test-anthropic-admin-key",
    "E2E_GROQ_KEY": "test-groq-key",
    # boto3's credentials for the Bedrock account (the simulator's fake, its fake key), and
    # nothing of this machine's own AWS setup.
    "AWS_ACCESS_KEY_ID": "test-aws-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-aws-secret",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class Webhook:
    """Collects Alertmanager webhook notifications."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append({"at": real_now(), **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str, status: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (n["at"], a)
            for n in self.received
            for a in n["alerts"]
            if a["labels"].get("alertname") == name and a["status"] == status
        ]


def gateway_log(path: Path, now: int) -> None:
    """A gateway's cost-tracking log over the last 40 hours (a proxy_log account), on models
    the simulator's organisations use, so the gateway coverage panels have both sides."""
    lines = []
    for i in range(240):
        upstream, model = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-6"))[i % 2]
        ts = dt.datetime.fromtimestamp(now - 40 * 3600 + i * 600, dt.UTC)
        lines.append(
            json.dumps(
                {
                    "timestamp": ts.isoformat().replace("+00:00", "Z"),
                    "request_id": f"chatcmpl-e2e-{i}",
                    "user_id": f"token:sk-e2e-{i % 4}",
                    "ip_address": "192.0.2.1",
                    "provider": upstream,
                    "model": model,
                    "endpoint": f"/{upstream}/v1/chat/completions",
                    "input_tokens": 1000 + i,
                    "output_tokens": 100,
                    "total_tokens": 1100 + i,
                    "total_cost": "0.0125",
                    "finish_reason": "stop",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")


def exporter_config(path: Path, sim: str, state: Path, limit: float) -> None:
    cfg = {
        "poll_interval": "2s",
        "bucket_width": "1d",
        "state_file": str(state),
        "providers": {
            "openai": [{"account": "e2e", "base_url": f"{sim}/v1", "key_env": "E2E_OPENAI_KEY"}],
            "anthropic": [{"account": "e2e", "base_url": sim, "key_env": "E2E_ANTHROPIC_KEY"}],
            "groq": [
                {
                    "account": "e2e",
                    "base_url": f"{sim}/groq/v1/metrics/prometheus",
                    "key_env": "E2E_GROQ_KEY",
                }
            ],
            "proxy_log": [
                {"account": "gateway", "options": {"path": str(path.parent / "gateway.jsonl*")}}
            ],
            # Its callers' throttles and errors feed the failed-requests panel.
            "bedrock": [
                {
                    "account": "e2e",
                    "options": {
                        "regions": ["us-east-1", "eu-west-1"],
                        "endpoint_url": f"{sim}/aws",
                    },
                }
            ],
        },
        "budgets": [
            {
                "name": "e2e-openai",
                "selector": {"provider": "openai"},
                "period": "month",
                "limit_usd": limit,
            },
            # Over its limit on purpose, without thresholds (so no alert): the model Status
            # must mark only models used in this project, not every model.
            {
                "name": "e2e-research",
                "selector": {"project": RESEARCH},
                "period": "month",
                "limit_usd": 0.01,
                "thresholds": [],
            },
            # A typo'd provider: it matches nothing, which LLMBudgetMatchesNothing must say.
            {
                "name": "e2e-typo",
                "selector": {"provider": "opnai"},
                "period": "month",
                "thresholds": [],
            },
        ],
    }
    path.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if PROMETHEUS is None or ALERTMANAGER is None:
        pytest.skip("needs the prometheus and prometheus-alertmanager binaries")
    tmp = tmp_path_factory.mktemp("stack")
    ports = {k: free_port() for k in ("sim", "exporter", "prom", "am")}
    sim = f"http://127.0.0.1:{ports['sim']}"
    now = int(real_now())
    hook = Webhook()

    # Alertmanager: the shipped config, pointed at this test's webhook and with short waits.
    am_cfg = (ROOT / "prometheus/alertmanager.yml").read_text()
    assert "http://webhook:9099/alerts" in am_cfg
    am_cfg = am_cfg.replace("http://webhook:9099/alerts", hook.url)
    am_cfg = re.sub(r"group_wait: \S+", "group_wait: 1s", am_cfg)
    am_cfg = re.sub(r"group_interval: \S+", "group_interval: 1s", am_cfg)
    (tmp / "alertmanager.yml").write_text(am_cfg)

    # Prometheus: the shipped rule files, a fast scrape of the exporter.
    shutil.copytree(ROOT / "prometheus/rules", tmp / "rules")
    prom_cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports['am']}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": "llm-cost-exporter",
                "static_configs": [{"targets": [f"127.0.0.1:{ports['exporter']}"]}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
    cfg = tmp / "exporter.yml"
    exporter_config(cfg, sim, tmp / "state.db", limit=1.0)
    gateway_log(tmp / "gateway.jsonl", now)

    with (
        process(
            [
                *exporter_cmd(cfg, "")[:2],
                "simulator",
                "--listen",
                f"127.0.0.1:{ports['sim']}",
                "--seed",
                "5",
                "--now",
                str(now),
            ],
            tmp / "sim.log",
        ),
        process(
            [
                ALERTMANAGER,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'am'}",
                f"--web.listen-address=127.0.0.1:{ports['am']}",
                "--cluster.listen-address=",
            ],
            tmp / "am.log",
        ),
        process(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prom'}",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
            ],
            tmp / "prom.log",
            cwd=tmp,
        ),
    ):
        wait_for(lambda: http_get(f"{sim}/_sim/stats"))
        started = real_now()
        ctx: dict[str, Any] = {
            "tmp": tmp,
            "ports": ports,
            "sim": sim,
            "hook": hook,
            "cfg": cfg,
            "started": started,
            "prom": f"http://127.0.0.1:{ports['prom']}",
            "exporter": f"http://127.0.0.1:{ports['exporter']}",
        }
        exporter = process(
            exporter_cmd(cfg, f"127.0.0.1:{ports['exporter']}"), tmp / "exporter.log", env=KEYS
        )
        ctx["exporter_proc"] = exporter
        exporter.__enter__()
        try:
            yield ctx
        finally:
            ctx["exporter_proc"].__exit__(None, None, None)
            hook.server.shutdown()


def _rfc3339(text: str) -> float:
    """Prometheus' nanosecond RFC 3339 times (Python parses microseconds at most)."""
    base, _, frac = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(base).replace(tzinfo=dt.UTC).timestamp() + float(
        "0." + (frac or "0")
    )


def _ready(ctx: dict[str, Any]) -> bytes:
    def poll_done() -> bytes | None:
        # Accounts poll on their own schedules: ready once every account has been polled.
        http_get(ctx["exporter"] + "/-/ready")
        body = http_get(ctx["exporter"] + "/metrics")
        got = parse(body)
        endpoints = [v for (n, _), v in got.items() if n == "llm_source_up"]
        return body if endpoints and all(v == 1 for v in endpoints) else None

    result: bytes = wait_for(poll_done, timeout=120)
    return result


@needs_binaries
def test_exposition_is_clean_and_prometheus_sees_the_same_totals(stack: dict[str, Any]) -> None:
    body = _ready(stack)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    got = parse(body)
    for provider in ("openai", "anthropic", "groq"):
        assert total(got, "llm_tokens_total", provider=provider) > 0, provider
    expected = total(got, "llm_tokens_total", provider="openai")
    matched = {
        dict(labels)["budget"]: v
        for (n, labels), v in got.items()
        if n == "llm_budget_matched_series"
    }
    assert matched["e2e-typo"] == 0 and matched["e2e-openai"] > 0, matched

    def prom_total() -> float | None:
        res = prom_query(stack["prom"], 'sum(llm_tokens_total{provider="openai"})')
        return float(res[0]["value"][1]) if res else None

    # The simulator's clock is frozen, so after the backfill the totals are stable.
    assert wait_for(lambda: prom_total() == expected, timeout=60)


@needs_binaries
def test_budget_alert_reaches_the_webhook_and_resolves(stack: dict[str, Any]) -> None:
    hook: Webhook = stack["hook"]
    firing = wait_for(lambda: hook.alerts("LLMBudgetThresholdCrossed", "firing"), timeout=120)
    at, alert = firing[0]
    stack["fire_latency"] = at - stack["started"]
    assert alert["labels"]["budget"] == "e2e-openai"
    assert alert["labels"]["severity"] == "critical"
    spent = float(
        parse(http_get(stack["exporter"] + "/metrics"))[
            ("llm_budget_spent_usd", frozenset({("budget", "e2e-openai")}))
        ]
    )
    assert spent > 1.0
    assert "e2e-openai" in alert["annotations"]["description"]
    assert f"{spent:.2f}" in alert["annotations"]["description"]
    # Inhibition: the critical alert silences the lower thresholds of the same budget.
    assert {a["labels"]["severity"] for _, a in firing} == {"critical"}

    # Raising the limit (a config change and restart, same state file) resolves it.
    stack["exporter_proc"].__exit__(None, None, None)
    exporter_config(stack["cfg"], stack["sim"], stack["tmp"] / "state.db", limit=1e9)
    raised = real_now()
    proc = process(
        exporter_cmd(stack["cfg"], f"127.0.0.1:{stack['ports']['exporter']}"),
        stack["tmp"] / "exporter2.log",
        env=KEYS,
    )
    proc.__enter__()
    stack["exporter_proc"] = proc
    resolved = wait_for(lambda: hook.alerts("LLMBudgetThresholdCrossed", "resolved"), timeout=120)
    # Firing and resolved messages agree with themselves: the percentage is spent / limit of
    # the same message (the figures come from one scrape), with scope, forecast and reset.
    for _, a in (firing[0], resolved[0]):
        text = a["annotations"]["description"]
        m = re.search(r"has spent \$([\d.]+) of its \$([\d.]+) limit .*?\(([\d.]+)%\)", text)
        assert m, text
        spent_usd, limit_usd, percent = (float(x) for x in m.groups())
        assert percent == pytest.approx(100 * spent_usd / limit_usd, rel=0.01), text
        assert "(scope: provider=openai)" in text, text
        assert re.search(
            r"Forecast at the end of the period: \$[\d.]+ \(80% band \$[\d.]+ to", text
        )
        assert "The period resets at " in text and "n/a" not in text, text
    print(
        f"\nbudget alert: fired {stack['fire_latency']:.1f}s after exporter start, "
        f"resolved {resolved[0][0] - raised:.1f}s after the limit was raised"
    )


# Queries about last month: they need data older than this test's Prometheus holds
# (minutes), so they may come back empty here; they must still run. (Per-day figures come
# from the exporter's exact-day gauges and must have data from the first scrape.)
HISTORY_BOUND = ("offset 7d", "@ end()")
LAST_MONTH = {
    "Month to date vs last month, same point",
    "Last month total",
    "What changed, by provider",
}
AGE = "date:llm_daily_cost_estimated_usd:age_days"
VARIABLES = ("provider", "account", "model", "project", "budget")


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    return panels


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text())
        for p in sorted((ROOT / "grafana/dashboards").glob("*.json"))
    }


def _query(expr: str, values: dict[str, str] | None = None) -> str:
    """A panel expression as Grafana sends it: ranges as for a 1h dashboard, every variable
    at All (.*) unless `values` sets it (a regex-escaped single value)."""
    q = (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("${__range}", "1h")
        .replace("$__range", "1h")
    )
    values = values or {}

    def value(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            return ".*"
        # A regex-escaped value inside a PromQL string (whose own escape is a backslash).
        return re.sub(r"([.+*?()\[\]{}|^$\\])", r"\\\\\1", values[m.group(1)])

    return re.sub(r"\$\{?(" + "|".join(VARIABLES) + r")(:\w+)?\}?", value, q)


def _run(prom: str, expr: str, where: str) -> list[dict[str, Any]]:
    """prom_query, failing with Prometheus's own error message and the panel."""
    try:
        return prom_query(prom, expr)
    except urllib.error.HTTPError as exc:
        pytest.fail(f"{where}: {exc.read().decode()}\n{expr}")


def _advance(stack: dict[str, Any]) -> None:
    """Move the simulator's clock on once, so counters step up between scrapes and every
    increase()-based panel has something to show, as it would in a live deployment."""
    if stack.get("advanced"):
        return
    _ready(stack)
    # Prometheus has scraped the first poll (it may lag the exporter by a scrape).
    before = wait_for(lambda: prom_query(stack["prom"], "sum(llm_tokens_total)"), timeout=60)
    moved = real_now()
    http_json(stack["sim"] + "/_sim/control", {"advance": 7200}, method="POST")
    wait_for(
        lambda: prom_query(stack["prom"], f"sum(llm_tokens_total) > {before[0]['value'][1]}"),
        timeout=60,
    )
    wait_for(lambda: prom_query(stack["prom"], "min(llm_source_up) == 1"), timeout=60)
    # Every account has been polled since (the accounts poll on their own schedules) and
    # Prometheus has scraped that: its total and the exposition's agree.
    wait_for(lambda: _prom_has_the_exposition(stack, moved), timeout=60)
    # Every rule group has evaluated after that scrape.
    settled = real_now() + 1
    wait_for(lambda: _rules_evaluated_after(stack["prom"], settled), timeout=30)
    # The recording rules the dashboards read have evaluated on the new data.
    rules: tuple[str, ...] = (
        AGE,
        "provider_account_weekday_hour:llm_cost_estimated_usd:increase1h",
        "provider_account_project_model:llm_period_cost_estimated_usd:month",
        "provider_account:llm_period_cost_estimated_usd:month_end_run_rate",
    )
    for rule in rules:

        def recorded(rule: str = rule) -> list[dict[str, Any]]:
            return prom_query(stack["prom"], rule)

        wait_for(recorded, timeout=60)
    stack["advanced"] = True


def _prom_has_the_exposition(stack: dict[str, Any], since: float) -> bool:
    """Every endpoint has succeeded after `since`, and Prometheus's last scrape holds the
    exporter's current token total."""
    got = parse(http_get(stack["exporter"] + "/metrics"))
    polled = [v for (n, _), v in got.items() if n == "llm_source_last_success_timestamp_seconds"]
    if not polled or min(polled) <= since:
        return False
    res = prom_query(stack["prom"], "sum(llm_tokens_total)")
    return bool(res) and float(res[0]["value"][1]) == total(got, "llm_tokens_total")


def _rules_evaluated_after(prom: str, moment: float) -> bool:
    """Every rule group's last evaluation is later than `moment`."""
    groups = json.loads(http_get(prom + "/api/v1/rules"))["data"]["groups"]
    return bool(groups) and min(_rfc3339(g["lastEvaluation"]) for g in groups) > moment


def _names_each_value(panel: dict[str, Any]) -> bool:
    """Whether a stat shows each value with a name: text mode with the name, and a legend
    on every target (one that cannot read "(, Python" when a label is empty)."""
    legends = [t.get("legendFormat") for t in panel.get("targets", [])]
    return panel["options"].get("textMode") in ("value_and_name", "name") and all(
        legend not in (None, "", "__auto") and "(," not in legend for legend in legends
    )


def _variable_value(stack: dict[str, Any], dash: dict[str, Any], name: str) -> str | None:
    """The first value Grafana would offer for variable `name` (its label_values query)."""
    for v in dash["templating"]["list"]:
        if v["name"] != name:
            continue
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["definition"])
        assert m, v["definition"]
        match = _query(m.group(1))
        url = f"{stack['prom']}/api/v1/label/{m.group(2)}/values?" + urllib.parse.urlencode(
            {"match[]": match}
        )
        got = [x for x in json.loads(http_get(url))["data"] if x]
        return sorted(got)[0] if got else None
    return None


@needs_binaries
def test_every_dashboard_panel_query_returns_data(stack: dict[str, Any]) -> None:
    """Every target asked as Grafana asks it (tests/grafana.py: range or instant, its step,
    start and end rounded down to the step, its intervals): the request is valid PromQL and
    returns data, except a range whose last point is before the stack's first minute, when
    the exporter had not been scraped yet (Grafana draws that one empty too)."""
    _advance(stack)
    empty: list[str] = []
    young: list[str] = []
    history: set[str] = set()
    invented: list[str] = []
    unnamed: list[str] = []
    now = real_now()
    for name, dash in _dashboards().items():
        for panel in _panels(dash):
            shown = 0
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                ask = grafana.request(dash, panel, target, now)
                try:
                    res = _grafana_run(stack["prom"], ask)
                except urllib.error.HTTPError as exc:
                    pytest.fail(f"{name}: {panel.get('title')}: {exc.read().decode()}\n{ask}")
                shown += len(res)
                # Forward-looking windows (daily bars, the trend) must have data even so.
                ahead = "offset -1d" in expr
                if not res and not ask.instant and not ahead and ask.end < stack["started"] + 60:
                    young.append(panel["title"])
                    continue
                if res and panel.get("title") in LAST_MONTH and "@ end()" in expr:
                    # This Prometheus holds minutes: a last-month figure can only be this
                    # month's read as last month's (an `or` chain guarded on its last operand).
                    invented.append(f"{panel['title']} {target['refId']}: {res[:2]}")
                if res:
                    continue
                if any(h in expr for h in HISTORY_BOUND):
                    history.add(panel["title"])
                else:
                    empty.append(f"{name}: {panel.get('title')}: {expr}")
            if panel.get("type") == "stat" and shown > 1 and not _names_each_value(panel):
                unnamed.append(f"{name}: {panel['title']} ({shown} values)")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # A stat showing several values ("1  1", five bare dollar figures) names each of them.
    assert not unnamed, "stats showing several values without names:\n" + "\n".join(unnamed)
    # Only the last-month figures of the Overview's "What changed" row (its weeks are exact
    # days from the exporter and must show at once).
    assert history <= LAST_MONTH, history
    assert not invented, "last-month figures without a last month:\n" + "\n".join(invented)
    print(f"\nrange targets whose last point precedes the first scrape: {sorted(set(young))}")


@needs_binaries
def test_one_headline_that_the_other_month_figures_add_up_to(stack: dict[str, Any]) -> None:
    """ "Spent this month" had four answers on one screen; now one headline, and What
    changed's this-month column and Spend by project's bars sum to it exactly, while the
    reported and the estimated figure beside it are each at most it."""
    _ready(stack)
    prom = stack["prom"]

    def values(title: str, ref: str = "A") -> list[float]:
        t = next(t for t in _overview_panel(title)["targets"] if t["refId"] == ref)
        return [float(r["value"][1]) for r in prom_query(prom, _query(t["expr"]))]

    def agree() -> tuple[float, float, float, float, float] | None:
        [headline] = values("Spent this month")
        column = sum(values("What changed, by provider"))
        bars = sum(values("Spend by project (month to date)"))
        [reported] = values("Reported and estimated this month")
        [estimated] = values("Reported and estimated this month", "B")
        got = (headline, column, bars, reported, estimated)
        same = column == pytest.approx(headline, rel=1e-9) and bars == pytest.approx(
            headline, rel=1e-9
        )
        return got if same else None

    headline, _, _, reported, estimated = wait_for(agree, timeout=60)
    assert headline > 0 and max(reported, estimated) <= headline * (1 + 1e-12)
    assert headline <= reported + estimated


TOP_N = (
    # (dashboard, panel, n, the series ranked, the unranked total the panel must keep)
    (
        "llm-cost-usage.json",
        "Tokens by model (hourly, top 10)",
        10,
        "count by (provider, model) (llm_tokens_total)",
        "sum(max without (instance, pod) (increase(llm_tokens_total[1h])))",
    ),
    (
        "llm-cost-overview.json",
        "Reported cost by line item (selected range)",
        10,
        "count by (provider, line_item) (llm_cost_reported_usd_total)",
        None,
    ),
    (
        "llm-cost-overview.json",
        "Daily reported cost by line item",
        8,
        "count by (provider, line_item) (llm_cost_reported_usd_total)",
        None,
    ),
    (
        "llm-cost-overview.json",
        "Daily estimated cost by model",
        10,
        "count by (provider, model) (llm_daily_cost_estimated_usd)",
        "sum(max without (instance, pod) (llm_daily_cost_estimated_usd))",
    ),
)


@needs_binaries
@pytest.mark.parametrize(
    ("board", "title", "n", "ranked", "whole"), TOP_N, ids=[t[1] for t in TOP_N]
)
def test_top_n_panels_show_the_same_n_and_fold_the_rest(
    stack: dict[str, Any], board: str, title: str, n: int, ranked: str, whole: str | None
) -> None:
    """A top-N ranks once for the whole panel (a topk in a range query ranked at each step:
    22 series in a "top 10"), and the rest is folded into other (one per provider), so
    nothing is lost."""
    _advance(stack)
    dash = _dashboards()[board]
    panel = next(p for p in _panels(dash) if p.get("title") == title)
    many = len(prom_query(stack["prom"], ranked)) > n

    def ask_panel() -> tuple[grafana.Request, list[Any], set[Any], list[Any]] | None:
        now = real_now()
        ask = grafana.request(dash, panel, panel["targets"][0], now)
        if not ask.instant and ask.end < stack["started"] + 60:
            # A range whose last point precedes the stack (Grafana's end is rounded down to
            # the step): the same query over the stack's life, a point a minute, to now.
            ask = grafana.Request(ask.expr, False, stack["started"], now, 60)
        res = _grafana_run(stack["prom"], ask)
        names = {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "date")) for r in res}
        others = [k for k in names if ("model", "other") in k or ("line_item", "other") in k]
        # The 1h increases need two samples of a series: wait for the data, not for luck.
        return (ask, res, names, others) if res and (others or not many) else None

    ask, res, names, others = wait_for(ask_panel, timeout=90, interval=1)
    providers = {dict(k).get("provider") for k in names}
    assert len(names) - len(others) <= n and len(others) <= len(providers), sorted(names)
    assert len(names) > len(others), sorted(names)  # the ranking found its top series
    if whole is None:
        return
    if ask.instant:
        drawn = sum(float(r["value"][1]) for r in res)
        [want] = prom_query(stack["prom"], whole, at=ask.end)
    else:  # the last point of the range
        last = max(float(r["values"][-1][0]) for r in res)
        drawn = sum(float(v) for r in res for t, v in r["values"] if float(t) == last)
        [want] = prom_query(stack["prom"], whole, at=last)
    assert drawn == pytest.approx(float(want["value"][1]), rel=1e-9)


@needs_binaries
def test_spend_by_project_shows_each_project_once(stack: dict[str, Any]) -> None:
    """It listed every project twice, once reported and once estimated; now one bar each,
    the larger of the two per provider account and project, summed."""
    _ready(stack)
    [t] = _overview_panel("Spend by project (month to date)")["targets"]

    def compared() -> list[tuple[str, float, float]]:
        res = prom_query(stack["prom"], _query(t["expr"]))
        projects = [r["metric"]["project"] for r in res]
        assert projects and len(projects) == len(set(projects)), projects
        month = _month_sides(parse(http_get(stack["exporter"] + "/metrics")))
        rows = []
        for r in res:
            project = "" if r["metric"]["project"] == "(none)" else r["metric"]["project"]
            want = sum(max(sides.values()) for k, sides in month.items() if k[2] == project)
            rows.append((project, float(r["value"][1]), want))
        return rows

    def equal() -> bool:
        return all(got == pytest.approx(want, rel=1e-6) for _, got, want in compared())

    # The panel reads a recording rule, which may lag the exporter by a scrape and an
    # evaluation after the simulator's clock moved (an earlier test may have moved it);
    # the clock is frozen, so the two settle to the same values.
    with contextlib.suppress(TimeoutError):
        wait_for(equal, timeout=60, interval=0.5)
    for project, got, want in compared():
        assert got == pytest.approx(want, rel=1e-6), (project, want)


def _month_sides(got: dict[Any, float]) -> dict[tuple[str, str, str], dict[str, float]]:
    """Month-to-date reported and estimated cost, by (provider, account, project)."""
    month: dict[tuple[str, str, str], dict[str, float]] = {}
    for (name, labels), v in got.items():
        lab = dict(labels)
        if name in ("llm_period_cost_reported_usd", "llm_period_cost_estimated_usd") and (
            lab.get("period") == "month"
        ):
            key = (lab["provider"], lab["account"], lab.get("project", ""))
            side = month.setdefault(key, {})
            side[name] = side.get(name, 0.0) + v
    return month


@needs_binaries
@pytest.mark.parametrize("variable", VARIABLES)
def test_every_panel_filters_by_each_variable(stack: dict[str, Any], variable: str) -> None:
    """Each variable at one value (the others at All): every query runs, and no series it
    returns carries another value of that label."""
    _advance(stack)
    checked = 0
    for name, dash in _dashboards().items():
        value = _variable_value(stack, dash, variable)
        if value is None:
            assert variable == "budget" and name != "llm-cost-overview.json", (name, variable)
            continue
        for panel in _panels(dash):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr or f"${variable}" not in expr:
                    continue
                res = _run(
                    stack["prom"],
                    _query(expr, {variable: value}),
                    f"{name}: {panel['title']} ({variable}={value})",
                )
                wrong = {
                    r["metric"][variable]
                    for r in res
                    # "other": a top-N panel's fold of the rest (here: of nothing shown).
                    if r["metric"].get(variable, value) not in (value, "(none)", "other")
                }
                assert not wrong, f"{name}: {panel['title']}: {variable}={value} shows {wrong}"
                checked += 1
    assert checked > 0


def _exact_days(
    samples: dict[Any, float], metric: str, *by: str, **match: str
) -> dict[tuple[str, ...], float]:
    """The exporter's exact-day gauge summed by `by` labels (a single replica here)."""
    out: dict[tuple[str, ...], float] = {}
    for (name, labels), v in samples.items():
        lab = dict(labels)
        if name == metric and all(lab.get(k) == val for k, val in match.items()):
            key = tuple(lab.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + v
    return out


def _same(want: dict[Any, float], have: dict[Any, float]) -> bool:
    return set(want) == set(have) and all(
        have[k] == pytest.approx(v, rel=1e-9, abs=1e-9) for k, v in want.items()
    )


@needs_binaries
def test_daily_panels_equal_the_exporters_exact_days(stack: dict[str, Any]) -> None:
    """The daily-spend bars, the model table's yesterday/today columns and the 7-day
    sparkline return, per date, exactly the exporter's own llm_daily_* figures: the same
    exposition summed by the panel's query (replicas de-duplicated, days picked by age)."""
    _advance(stack)
    prom = stack["prom"]

    def rows(res: list[dict[str, Any]], *by: str) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"].get(b, "") for b in by): float(r["value"][1]) for r in res}

    checked: dict[str, int] = {}
    for title, metric in (
        ("Daily spend by provider (reported)", "llm_daily_cost_reported_usd"),
        ("Daily estimated cost by provider", "llm_daily_cost_estimated_usd"),
    ):
        panel = _overview_panel(title)
        assert panel["type"] == "barchart" and panel["targets"][0]["instant"], title
        expr = _query(panel["targets"][0]["expr"])

        def compare(metric: str = metric, expr: str = expr) -> dict[Any, float] | None:
            want = _exact_days(
                parse(http_get(stack["exporter"] + "/metrics")), metric, "date", "provider"
            )
            have = rows(prom_query(prom, expr), "date", "provider")
            return want if _same(want, have) else None

        want = wait_for(compare, timeout=60)
        providers = {p for _, p in want}
        dates = {d for d, _ in want}
        checked[title] = len(want)
        # Every provider with cost of this kind, on many days (the simulator backfills weeks).
        assert providers >= (
            {"openai", "anthropic"} if "reported" in title else {"openai", "anthropic", "groq"}
        ), providers
        assert len(dates) >= 14, sorted(dates)

    # Ages: today's date is the exporter's day start (UTC in this stack), yesterday the day
    # before, and every exposed date has an age.
    got = parse(http_get(stack["exporter"] + "/metrics"))
    day_start = total(got, "llm_period_start_timestamp_seconds", period="day")
    today = dt.datetime.fromtimestamp(day_start, dt.UTC).date()
    ages = {r["metric"]["date"]: int(float(r["value"][1])) for r in prom_query(prom, AGE)}
    for date, age in ages.items():
        assert dt.date.fromisoformat(date) == today - dt.timedelta(days=age), (date, age)
    exposed_dates = {d for (d,) in _exact_days(got, "llm_daily_cost_estimated_usd", "date")}
    assert exposed_dates <= set(ages)

    # The model table: Cost (yesterday), Calls (yesterday) and Cost (today), exact.
    table = {t["refId"]: t for t in _overview_panel("Model cost breakdown")["targets"]}
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    for ref, metric, date in (
        ("A", "llm_daily_cost_estimated_usd", yesterday),
        ("B", "llm_daily_model_requests", yesterday),
        ("I", "llm_daily_cost_estimated_usd", today.isoformat()),
    ):

        def differ(ref: str = ref, metric: str = metric, date: str = date) -> dict[Any, Any]:
            """Where the column and the exposition differ ({} when equal). The exposition
            and Prometheus's last scrape may be a poll apart: retried until they agree."""
            samples = parse(http_get(stack["exporter"] + "/metrics"))
            want = _exact_days(samples, metric, "provider", "model", date=date)
            have = rows(prom_query(prom, _query(table[ref]["expr"])), "provider", "model")
            assert want, (ref, date)
            return {
                k: (want.get(k), have.get(k))
                for k in set(want) | set(have)
                if want.get(k) != pytest.approx(have.get(k), rel=1e-9, abs=1e-9)
            }

        last: dict[Any, Any] = {}

        def agree(differ: Any = differ) -> bool:
            nonlocal last
            last = differ()
            return not last

        try:
            wait_for(agree, timeout=60)
        except TimeoutError:
            pytest.fail(f"model table column {ref} differs from the exposition: {last}")

    # The 7-day trend, requested as Grafana requests it (a range query at a 1-day step, end
    # rounded down to midnight): one point a day, the point at midnight D showing the day
    # before D, the last 7 complete days oldest to newest, exact, although Prometheus holds
    # only minutes of data, all of them after that midnight.
    overview = _dashboards()["llm-cost-overview.json"]
    trend_panel = _overview_panel("Model cost breakdown")

    def trend_differs() -> list[Any]:
        wrong: list[Any] = []
        samples = parse(http_get(stack["exporter"] + "/metrics"))
        # A browser in UTC, 9 hours east and 5 hours west: Grafana ends the range at its
        # midnight, before or after the exporter's (UTC) day start.
        for offset in (0, 9 * 3600, -5 * 3600):
            ask = grafana.request(overview, trend_panel, table["E"], real_now(), utc_offset=offset)
            assert ask.step == 86400 and (ask.end + offset) % 86400 == 0, ask
            res = _grafana_run(prom, ask)
            wrong += [] if res else [(offset, "no series")]
            week = {(today - dt.timedelta(days=k)).isoformat() for k in range(1, 8)}
            for r in res:
                key = (r["metric"]["provider"], r["metric"]["model"])
                # The last point is yesterday, each point before it a day earlier.
                points = {
                    (
                        today - dt.timedelta(days=round((ask.end - float(t)) / 86400) + 1)
                    ).isoformat(): float(v)
                    for t, v in r["values"]
                }
                if not set(points) <= week:
                    wrong.append((offset, key, sorted(points)))
                for date, value in points.items():
                    day = _exact_days(
                        samples, "llm_daily_cost_estimated_usd", "provider", "model", date=date
                    )
                    if value != pytest.approx(day.get(key), rel=1e-9):
                        wrong.append((offset, key, date, value, day.get(key)))
            # A model used every day has all 7 points.
            if max((len(r["values"]) for r in res), default=0) != 7:
                wrong.append((offset, "no series with 7 daily points"))
        return wrong

    trend: list[Any] = []

    def trend_agrees() -> bool:
        nonlocal trend
        trend = trend_differs()
        return not trend

    try:
        wait_for(trend_agrees, timeout=60)
    except TimeoutError:
        pytest.fail(f"7-day trend differs from the exposition: {trend}")
    print(f"\nexact-day panels equal the exposition: {checked}, {len(ages)} dates aged")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "grafana" / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _overview_panel(title: str) -> dict[str, Any]:
    dash = _dashboards()["llm-cost-overview.json"]
    return next(p for p in _panels(dash) if p.get("title") == title)


def _by_provider_model(res: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(r["metric"]["provider"], r["metric"]["model"]): float(r["value"][1]) for r in res}


def _expected_status(stack: dict[str, Any]) -> dict[tuple[str, str], int]:
    """The model Status computed here from raw series, the way the panel describes it."""
    prom = stack["prom"]
    models = set(_by_provider_model(prom_query(prom, _query(_generator().model_rows()))))
    unpriced = set(
        _by_provider_model(prom_query(prom, "group by (provider, model) (llm_unpriced_model_info)"))
    )
    failing = {
        r["metric"]["provider"]
        for r in prom_query(
            prom,
            "group by (provider) ((time() - max without (instance, pod) "
            "(llm_source_last_success_timestamp_seconds) > 3600) or "
            "(max without (instance, pod) (llm_source_up) == 0))",
        )
    }
    usage = [
        r["metric"]
        for r in prom_query(
            prom, "provider_account_project_model:llm_period_cost_estimated_usd:month"
        )
    ]
    ratios = {
        r["metric"]["budget"]: float(r["value"][1])
        for r in prom_query(prom, "max without (instance, pod) (llm_budget_spent_ratio)")
    }
    worst: dict[tuple[str, str], float] = {}
    for info in prom_query(prom, "max without (instance, pod) (llm_budget_info)"):
        scope = {k: info["metric"].get(k, "") for k in ("provider", "account", "project", "model")}
        if any(v.startswith("~") for v in scope.values()):
            continue  # regex scopes are not matched by the panel (its description says so)
        for u in usage:
            if all(v == "" or u.get(k, "") == v for k, v in scope.items()):
                key = (u["provider"], u["model"])
                worst[key] = max(worst.get(key, 0.0), ratios[info["metric"]["budget"]])
    out = {}
    for key in models:
        if key in unpriced:
            out[key] = 4
        elif key[0] in failing:
            out[key] = 3
        elif worst.get(key, 0.0) >= 1:
            out[key] = 2
        elif worst.get(key, 0.0) >= 0.8:
            out[key] = 1
        else:
            out[key] = 0
    return out


@needs_binaries
def test_overview_shows_what_it_must(stack: dict[str, Any]) -> None:
    _advance(stack)
    prom = stack["prom"]
    table = {t["refId"]: t["expr"] for t in _overview_panel("Model cost breakdown")["targets"]}

    # Status: the research-project budget is over its limit and marks only the models used
    # in that project; the OpenAI budget (limit raised by the alert test) marks nothing.
    ratios = {
        r["metric"]["budget"]: float(r["value"][1])
        for r in prom_query(prom, "max without (instance, pod) (llm_budget_spent_ratio)")
    }
    assert ratios["e2e-research"] > 1, ratios

    def status_matches() -> dict[tuple[str, str], int] | None:
        got = {
            k: int(v) for k, v in _by_provider_model(prom_query(prom, _query(table["F"]))).items()
        }
        want = _expected_status(stack)
        return got if got == want else None

    status = wait_for(status_matches, timeout=30)
    in_research = {
        (u["provider"], u["model"])
        for u in (
            r["metric"]
            for r in prom_query(
                prom,
                "provider_account_project_model:llm_period_cost_estimated_usd:month"
                f'{{project="{RESEARCH}"}}',
            )
        )
    }
    over = {k for k, v in status.items() if v == 2}
    assert over and over <= in_research, (over, in_research)
    outside = {k for k in status if k not in in_research}
    assert {p for p, _ in outside} >= {"anthropic", "groq", "openai"}
    assert all(status[k] != 2 for k in outside)
    # Every row has a Status, also models without tokens (speech, transcription, images).
    rows = set(_by_provider_model(prom_query(prom, _query(table["A"]))))
    assert rows <= set(status), rows - set(status)
    assert 4 in status.values()  # the simulator's unknown model

    # CPI column = estimated cost this month / tokens this month x 1000, per model.
    cpi = _by_provider_model(prom_query(prom, _query(table["H"])))
    cost = _by_provider_model(prom_query(prom, _query(table["G"])))
    tokens = _by_provider_model(
        prom_query(
            prom,
            "sum by (provider, model) (max without (instance, pod) "
            '(llm_period_tokens{period="month"}))',
        )
    )
    assert len(cpi) >= 5
    for key, value in cpi.items():
        assert value == pytest.approx(cost[key] / tokens[key] * 1000, rel=1e-9), key

    # Alert links: every variable they set exists in the target dashboard, and the budget
    # link of this stack's budget alert selects that budget's panels.
    dashboards = {d["uid"]: d for d in _dashboards().values()}
    for path in sorted((ROOT / "prometheus/rules").glob("*.alerts.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                url = rule["annotations"]["dashboard_url"]
                uid, _, query = url.removeprefix("http://localhost:3000/d/").partition("?")
                names = {v["name"] for v in dashboards[uid]["templating"]["list"]}
                for var in re.findall(r"var-(\w+)=", query):
                    assert var in names, f"{rule['alert']}: {uid} has no variable {var}"
    forecast = _overview_panel("Budget forecast: $budget")
    for t in forecast["targets"]:
        if "limit" in t["expr"] or "spent" in t["expr"] or "forecast" in t["expr"]:
            res = prom_query(prom, _query(t["expr"], {"budget": "e2e-openai"}))
            assert {r["metric"]["budget"] for r in res} == {"e2e-openai"}, t["expr"]
    # The band brackets the forecast.
    band = {
        r["metric"]["__name__"]: float(r["value"][1])
        for r in prom_query(
            prom,
            '{__name__=~"llm_budget_forecast(_lower|_upper)?_usd", budget="e2e-openai",'
            ' instance!=""}',
        )
    }
    assert (
        band["llm_budget_forecast_lower_usd"]
        <= band["llm_budget_forecast_usd"]
        <= band["llm_budget_forecast_upper_usd"]
    )


@needs_binaries
def test_render_every_dashboard_png(stack: dict[str, Any]) -> None:
    """Draw all four dashboards from live results, each panel asked as Grafana asks it
    (Grafana cannot run here): tests/render_dashboards.py, the script behind the README's
    picture. Every panel with a query is drawn; look at the PNGs in the stack's folder."""
    pytest.importorskip("matplotlib")
    from tests.render_dashboards import draw

    _advance(stack)
    now = real_now()
    for name, dash in _dashboards().items():
        out = stack["tmp"] / name.replace(".json", ".png")
        counts = draw(dash, now, lambda ask: _grafana_run(stack["prom"], ask), out)
        queried = {p["title"] for p in _panels(dash) if p.get("targets")}
        assert set(counts) == queried, queried ^ set(counts)
        assert out.stat().st_size > 20_000
        empty = sorted(t for t, n in counts.items() if n == 0)
        print(f"\n{out}: {len(counts)} panels drawn, empty: {empty}")


def _grafana_run(base: str, ask: grafana.Request) -> list[Any]:
    """Prometheus's answer to a request as Grafana sends it (tests/grafana.py)."""
    res = json.loads(http_get(ask.url(base)))
    assert res["status"] == "success", res
    return list(res["data"]["result"])


@needs_binaries
def test_no_alert_is_pending_on_healthy_data_but_the_true_ones(stack: dict[str, Any]) -> None:
    """Every shipped alert evaluated on a healthy stack: only real conditions are pending."""
    _ready(stack)

    def alerting() -> set[str]:
        res = prom_query(stack["prom"], 'ALERTS{alertstate=~"pending|firing"}')
        return {r["metric"]["alertname"] for r in res}

    # The simulator's unknown model has no price: that one is true and must show.
    assert wait_for(lambda: "LLMModelUnpriced" in alerting(), timeout=60)
    # Let every rule group evaluate twice more, then nothing else may be pending or firing.
    after = real_now() + 2

    def evaluated() -> bool:
        groups = json.loads(http_get(stack["prom"] + "/api/v1/rules"))["data"]["groups"]
        stamps = [_rfc3339(g["lastEvaluation"]) for g in groups]
        return bool(groups) and min(stamps) > after

    wait_for(evaluated, timeout=30)
    # The typo'd budget matches nothing: pending from the first evaluation (for: 1h).
    expected = {"LLMModelUnpriced", "LLMBudgetMatchesNothing"}
    # The simulator spends more than the default expected $10000 a month on some accounts:
    # from day 3 of a month, the forecast-without-budget alert is true too. Computed here
    # from the exposition: month to date / elapsed share of the month, per account.
    got = parse(http_get(stack["exporter"] + "/metrics"))
    start = total(got, "llm_period_start_timestamp_seconds", period="month")
    first = dt.datetime.fromtimestamp(start + 86400, dt.UTC)
    days = calendar.monthrange(first.year, first.month)[1]
    elapsed = (real_now() - start) / (days * 86400)
    accounts = {
        (dict(labels)["provider"], dict(labels)["account"])
        for (name, labels) in got
        if name == "llm_period_cost_estimated_usd"
    }
    run_rates = {
        (p, a): total(got, "llm_period_cost_estimated_usd", provider=p, account=a, period="month")
        / elapsed
        for p, a in accounts
    }
    if real_now() - start >= 2 * 86400 and max(run_rates.values()) > 10000:
        expected.add("LLMSpendForecastAboveExpectation")
    assert alerting() == expected, run_rates
    nothing = prom_query(stack["prom"], 'ALERTS{alertname="LLMBudgetMatchesNothing"}')
    assert {r["metric"]["budget"] for r in nothing} == {"e2e-typo"}
