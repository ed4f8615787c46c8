"""The opt-in Claude Code report: its own metrics, never added to tokens, e-mails opt-in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import App
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from tests.helpers import parse, total

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())
START = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    s = SimulatorServer(port=0, seed=3, start=dt.date(2026, 10, 1), now=NOW).start()
    yield s
    s.stop()


def poll(
    tmp: Path, sim: SimulatorServer, options: dict[str, Any]
) -> tuple[bytes, dict[Any, float]]:
    acc = {"account": "a", "base_url": sim.anthropic_base_url, "key_env": "K", "options": options}
    cfg = {
        "history_start": "2026-11-01",
        "state_file": str(tmp / "s.db"),
        "providers": {"anthropic": [acc]},
    }
    (tmp / "c.yml").write_text(yaml.safe_dump(cfg))
    app = App(
        load(tmp / "c.yml", {"K": sim.settings.anthropic_key}),
        clock=lambda: float(sim.now()),
        retry=RETRY,
    )
    app.poll_once()
    body = app.exposition.current.body
    app.stop()
    return body, parse(body)


def test_claude_code_is_off_by_default(tmp_path: Path, sim: SimulatorServer) -> None:
    body, got = poll(tmp_path, sim, {})
    assert b"llm_claude_code_" not in body
    assert total(got, "llm_tokens_total") > 0


def test_claude_code_metrics_without_personal_data(tmp_path: Path, sim: SimulatorServer) -> None:
    (tmp_path / "off").mkdir()
    _, off = poll(tmp_path / "off", sim, {})
    body, got = poll(tmp_path, sim, {"claude_code": True})
    # The report's tokens are the same requests as the messages report: tokens are unchanged.
    assert total(got, "llm_tokens_total") == total(off, "llm_tokens_total")
    truth = sim.dataset.totals("anthropic", START, NOW, operation="claude_code")
    assert total(got, "llm_claude_code_sessions_total") == truth["sessions"]
    assert total(got, "llm_claude_code_tokens_total", token_type="output") == truth["tokens.output"]
    assert total(got, "llm_claude_code_lines_total", change="added") > 0
    assert total(got, "llm_claude_code_estimated_cost_usd_total") > 0
    assert b"@" not in body  # no e-mail address unless the user turns it on


def test_actor_emails_only_when_enabled(tmp_path: Path, sim: SimulatorServer) -> None:
    body, _ = poll(tmp_path, sim, {"claude_code": True, "claude_code_actor_emails": True})
    assert b"@" in body
