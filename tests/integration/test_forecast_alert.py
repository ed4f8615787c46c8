"""The forecast alert fires from an empty Prometheus, on the backfilled history.

A daily budget whose limit sits between today's spend and the low end of today's forecast:
spend has not reached the limit, but even the optimistic forecast passes it. The exporter's
time zone is chosen so that it is about noon there (the period guard holds and the day still
has spend to come, whatever the time of the run). The history is backfilled, a real
Prometheus starts empty with the shipped rules, and LLMBudgetForecastOverrun ("will") must
fire within seconds: before Prometheus could have scraped ten samples itself (it scrapes
every 10s here), so the hour it needs comes from the backfill.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import yaml

from exporter.app import App
from exporter.backfill import main as backfill
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from tests.clock import real_now
from tests.helpers import (
    binary,
    free_port,
    parse,
    prom_query,
    prometheus_scraping,
    promtool_blocks,
    total,
    wait_for,
)

PROMETHEUS = binary("prometheus")
PROMTOOL = binary("promtool")
ROOT = Path(__file__).resolve().parents[2]
RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        PROMETHEUS is None or PROMTOOL is None,
        reason="needs the prometheus and promtool binaries (Debian package prometheus)",
    ),
]


def noon_zone() -> str:
    """An IANA fixed-offset zone where it is between 11:00 and 13:00 now."""
    offset = 12 - dt.datetime.fromtimestamp(real_now(), dt.UTC).hour  # -11 .. +12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-5 is UTC+5


def write_config(path: Path, sim: SimulatorServer, state: Path, zone: str, limit: float) -> None:
    today = dt.datetime.fromtimestamp(real_now(), dt.UTC).date()
    path.write_text(
        yaml.safe_dump(
            {
                "timezone": zone,
                "bucket_width": "1h",
                "history_start": (today - dt.timedelta(days=10)).isoformat(),
                "state_file": str(state),
                "providers": {"openai": [{"account": "fc", "base_url": sim.openai_base_url}]},
                "budgets": [
                    {
                        "name": "fc-daily",
                        "selector": {"provider": "openai"},
                        "period": "day",
                        "basis": "estimated",
                        "limit_usd": limit,
                    }
                ],
            }
        )
    )


def test_forecast_alert_fires_at_once_on_backfilled_history(tmp_path: Path) -> None:
    sim = SimulatorServer(port=0, seed=11).start()
    env = {"OPENAI_ADMIN_KEY": sim.settings.openai_key}
    cfg, state, zone = tmp_path / "exporter.yml", tmp_path / "state.db", noon_zone()
    try:
        # A first run with no real limit, to read today's spend and forecast band.
        write_config(cfg, sim, state, zone, 1e9)
        probe = App(load(cfg, env), retry=RETRY)
        probe.poll_once()
        body = parse(probe.exposition.current.body)
        probe.stop()
        spent = total(body, "llm_budget_spent_usd", budget="fc-daily")
        lower = total(body, "llm_budget_forecast_lower_usd", budget="fc-daily")
        assert lower > spent > 0, (spent, lower)
        limit = spent + 0.3 * (lower - spent)  # not reached, yet even the low end passes it
        write_config(cfg, sim, state, zone, limit)
        app = App(load(cfg, env), retry=RETRY)
        app.poll_once()
        port = free_port()
        app.serve(f"127.0.0.1:{port}")

        out = tmp_path / "history"
        assert (
            backfill([f"--config.file={cfg}", f"--output={out}/", f"--instance=127.0.0.1:{port}"])
            == 0
        )
        promtool_blocks(out, tmp_path / "prom")
        with prometheus_scraping(
            tmp_path, f"127.0.0.1:{port}", "10s", rules=ROOT / "prometheus/rules"
        ) as base:
            began = time.monotonic()
            firing = 'ALERTS{alertname="LLMBudgetForecastOverrun", alertstate="firing"}'
            alerts = wait_for(lambda: prom_query(base, firing), timeout=60, interval=0.5)
            took = time.monotonic() - began
            live = prom_query(base, 'count_over_time(up{job="llm-cost-exporter"}[1h])')
        app.stop()
    finally:
        sim.stop()
    labels = alerts[0]["metric"]
    assert labels["budget"] == "fc-daily" and labels["outlook"] == "will"
    assert labels["severity"] == "warning"
    # Fewer than ten live scrapes had happened: the hour of samples came from the backfill.
    assert float(live[0]["value"][1]) < 10, (took, live)
