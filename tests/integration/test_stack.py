"""The whole stack as a user runs it, as plain processes on loopback.

Simulator -> exporter -> real `prometheus` (shipped rules) -> real `prometheus-alertmanager`
(shipped routing) -> a webhook in this test. Checks: PromQL totals equal the exposition, the
exposition passes `promtool check metrics` with all three providers on, a budget alert
reaches the webhook with its figures and resolves when the limit is raised, and every
dashboard panel query returns data.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

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

KEYS = {
    "E2E_OPENAI_KEY": "test-openai-admin-key",
    "E2E_ANTHROPIC_KEY": "test-anthropic-admin-key",
    "E2E_GROQ_KEY": "test-groq-key",
}


class Webhook:
    """Collects Alertmanager webhook notifications."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append({"at": time.time(), **json.loads(body)})
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
        },
        "budgets": [
            {
                "name": "e2e-openai",
                "selector": {"provider": "openai"},
                "period": "month",
                "limit_usd": limit,
            }
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
    now = int(time.time())
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

    with (
        process(
            [
                *exporter_cmd(cfg, "")[:2],
                "exporter.simulator",
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
        started = time.time()
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
    raised = time.time()
    proc = process(
        exporter_cmd(stack["cfg"], f"127.0.0.1:{stack['ports']['exporter']}"),
        stack["tmp"] / "exporter2.log",
        env=KEYS,
    )
    proc.__enter__()
    stack["exporter_proc"] = proc
    resolved = wait_for(lambda: hook.alerts("LLMBudgetThresholdCrossed", "resolved"), timeout=120)
    print(
        f"\nbudget alert: fired {stack['fire_latency']:.1f}s after exporter start, "
        f"resolved {resolved[0][0] - raised:.1f}s after the limit was raised"
    )


@needs_binaries
def test_every_dashboard_panel_query_returns_data(stack: dict[str, Any]) -> None:
    _ready(stack)
    # Usage grows: move the simulator's clock on, so counters step up between scrapes and
    # every increase()-based panel has something to show, as it would in a live deployment.
    before = prom_query(stack["prom"], "sum(llm_tokens_total)")
    http_json(stack["sim"] + "/_sim/control", {"advance": 7200}, method="POST")
    wait_for(
        lambda: prom_query(stack["prom"], f"sum(llm_tokens_total) > {before[0]['value'][1]}"),
        timeout=60,
    )
    wait_for(lambda: prom_query(stack["prom"], "min(llm_source_up) == 1"), timeout=60)
    empty: list[str] = []
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        panels = list(dash.get("panels", []))
        for p in list(panels):
            panels.extend(p.get("panels", []))
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                q = (
                    expr.replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                    .replace("$__range", "1h")
                    .replace("${__range}", "1h")
                )
                q = re.sub(r"\$\{?(provider|account|model|project)(:\w+)?\}?", ".*", q)
                if not prom_query(stack["prom"], q):
                    empty.append(f"{path.name}: {panel.get('title')}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


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
    after = time.time() + 2

    def evaluated() -> bool:
        groups = json.loads(http_get(stack["prom"] + "/api/v1/rules"))["data"]["groups"]
        stamps = [_rfc3339(g["lastEvaluation"]) for g in groups]
        return bool(groups) and min(stamps) > after

    wait_for(evaluated, timeout=30)
    assert alerting() == {"LLMModelUnpriced"}
