"""A budget selector that matches nothing says so, end to end against the simulator.

The exporter polls the simulator once at a fixed moment (its clock and the simulator's are
the same fixed `now`) with three budgets: one over a provider with a typo, one whose model
regex no model fits, and a good one. Over HTTP, `llm_budget_matched_series` is 0 for the
first two (their spend stays at $0, which alone would look like an idle budget) and counts
series for the good one. `--config.check` against the state file that poll left names the
two budgets, the values nothing carries and the values seen.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from exporter.app import App
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from tests.helpers import config_check, http_get, parse, total

RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def test_a_selector_that_matches_nothing_shows_zero_series_and_is_warned_about(
    tmp_path: Path,
) -> None:
    sim = SimulatorServer(port=0, seed=5, now=int(NOW.timestamp())).start()
    state = tmp_path / "state.db"
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "bucket_width": "1d",
                "history_start": (NOW.date() - dt.timedelta(days=3)).isoformat(),
                "state_file": str(state),
                "providers": {"openai": [{"account": "sel", "base_url": sim.openai_base_url}]},
                "budgets": [
                    {"name": "typo", "selector": {"provider": "opnai"}, "limit_usd": 10},
                    {"name": "never", "selector": {"model": "~no-such-model-.*"}},
                    {"name": "good", "selector": {"provider": "openai"}, "limit_usd": 1e9},
                ],
            }
        )
    )
    env = {"OPENAI_ADMIN_KEY": sim.settings.openai_key}
    try:
        app = App(load(cfg, env), clock=lambda: float(sim.now()), retry=RETRY)
        try:
            app.poll_once()
            port = app.serve("127.0.0.1:0").server_address[1]
            got = parse(http_get(f"http://127.0.0.1:{port}/metrics"))
        finally:
            app.stop()
    finally:
        sim.stop()

    assert total(got, "llm_budget_matched_series", budget="typo") == 0
    assert total(got, "llm_budget_matched_series", budget="never") == 0
    assert total(got, "llm_budget_matched_series", budget="good") > 0
    assert total(got, "llm_budget_spent_usd", budget="typo") == 0
    assert total(got, "llm_budget_spent_usd", budget="good") > 0

    out = config_check(cfg, env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        "warning: budgets[0] (budget 'typo'): the selector matches nothing in the state file, "
        "so the budget would stay at $0: provider 'opnai' matches no value seen (seen: openai)"
    ) in out.stderr
    assert (
        "warning: budgets[1] (budget 'never'): the selector matches nothing in the state file, "
        "so the budget would stay at $0: model '~no-such-model-.*' matches no value seen (seen: "
    ) in out.stderr
    assert "'good'" not in out.stderr
    assert "Traceback" not in out.stderr
