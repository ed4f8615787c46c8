"""Estimated vs reported cost against the simulator, whose price card is genai-prices'."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
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
    s = SimulatorServer(port=0, seed=11, start=dt.date(2026, 10, 1), now=NOW).start()
    yield s
    s.stop()


def exposition(tmp: Path, sim: SimulatorServer, **extra: Any) -> dict[Any, float]:
    cfg: dict[str, Any] = {
        "history_start": "2026-11-01",
        "state_file": str(tmp / "state.db"),
        "providers": {
            "openai": [{"account": "o", "base_url": sim.openai_base_url, "key_env": "K_OPENAI"}],
            "anthropic": [
                {"account": "a", "base_url": sim.anthropic_base_url, "key_env": "K_ANTHROPIC"}
            ],
        },
        **extra,
    }
    (tmp / "c.yml").write_text(yaml.safe_dump(cfg))
    env = {"K_OPENAI": sim.settings.openai_key, "K_ANTHROPIC": sim.settings.anthropic_key}
    app = App(load(tmp / "c.yml", env), clock=lambda: float(sim.now()), retry=RETRY)
    app.poll_once()
    got = parse(app.exposition.current.body)
    app.stop()
    return got


def ratio(got: dict[Any, float], **labels: str) -> float:
    name = (
        "llm_model_cost_reconciliation_ratio"
        if "model" in labels
        else "llm_cost_reconciliation_ratio"
    )
    found = [
        v
        for (n, ls), v in got.items()
        if n == name and all((k, v2) in ls for k, v2 in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_ratio_is_one_when_the_price_card_is_the_database(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    got = exposition(tmp_path, sim)
    for provider in ("openai", "anthropic"):
        assert ratio(got, provider=provider) == pytest.approx(1.0, abs=1e-9)
    models = [ls for (n, ls), _ in got.items() if n == "llm_model_cost_reconciliation_ratio"]
    assert len(models) >= 6
    for (n, ls), v in got.items():
        if n == "llm_model_cost_reconciliation_ratio":
            assert v == pytest.approx(1.0, abs=1e-9), ls
    # image, storage and tool costs, and the unknown model's cost, are not part of the ratio
    assert not any(("model", "acme-internal-1") in ls for ls in models)
    assert total(got, "llm_unpriced_tokens_total", model="acme-internal-1") > 0


def test_an_override_shows_up_as_the_expected_ratio(tmp_path: Path, sim: SimulatorServer) -> None:
    override = {"provider": "openai", "model": "gpt-4o", "multiplier": 0.8}
    got = exposition(tmp_path, sim, prices={"overrides": [override]})
    assert ratio(got, provider="openai", model="gpt-4o") == pytest.approx(0.8, abs=1e-9)
    assert ratio(got, provider="openai", model="gpt-4o-mini") == pytest.approx(1.0, abs=1e-9)
    assert 0.8 < ratio(got, provider="openai") < 1.0
    assert total(got, "llm_cost_estimated_usd_total", model="gpt-4o", price_source="override") > 0
    assert total(got, "llm_cost_estimated_usd_total", model="gpt-4o", price_source="database") == 0


def test_non_token_units_are_estimated_at_database_prices(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """Characters (tts), seconds (whisper) and web searches have database prices too."""
    got = exposition(tmp_path, sim)
    for operation in ("audio_speeches", "audio_transcriptions", "web_search_calls"):
        truth = sim.dataset.truth("openai", START, NOW, group=("model",), operation=operation)
        checked = 0
        for (model,), measures in truth.items():
            est = total(
                got, "llm_cost_estimated_usd_total", operation=operation, model=model, token_type=""
            )
            if est == 0:
                continue  # no unit price in the database: shown as unpriced below
            assert est == pytest.approx(float(measures["cost"]), rel=1e-9), (operation, model)
            checked += 1
        assert checked >= 1, operation
    # a transcription model the database has no per-second price for is unpriced, not $0
    unpriced = {dict(ls)["model"] for (n, ls), _ in got.items() if n == "llm_unpriced_model_info"}
    assert "acme-internal-1" in unpriced


ACME = "acme-internal-1"  # the simulator's model unknown to the price database


def acme_prices(sim: SimulatorServer, **usd_per_mtok: float) -> dict[str, Any]:
    """An override giving the unknown model the simulator's own card prices (the card is the
    same on every day for it), some replaced by `usd_per_mtok`."""
    day = dt.date(2026, 11, 2)
    card = {
        tt: float(price * 1_000_000)
        for tt in ("input", "cache_read", "cache_write_12h", "output")
        if (price := sim.dataset.card.unit_price("openai", ACME, f"tokens.{tt}", day))
    }
    return {"provider": "openai", "model": ACME, "usd_per_mtok": {**card, **usd_per_mtok}}


def test_twelve_hour_cache_writes_are_reconciled_once_priced(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """The unknown model's usage has 12 hour cache writes, billed on their own line item:
    priced by an override at the card's prices it reconciles to 1, and the ratio moves by
    exactly what a different 12 h price adds, so that line is part of it."""
    at_card = acme_prices(sim)
    assert at_card["usd_per_mtok"]["cache_write_12h"] > 0
    (tmp_path / "card").mkdir()
    got = exposition(tmp_path / "card", sim, prices={"overrides": [at_card]})
    assert ratio(got, provider="openai", model=ACME) == pytest.approx(1.0, abs=1e-9)
    assert total(got, "llm_unpriced_tokens_total", provider="openai", model=ACME) == 0
    twelve = total(
        got,
        "llm_cost_estimated_usd_total",
        provider="openai",
        model=ACME,
        token_type="cache_write_12h",
    )
    assert twelve > 0
    assert total(got, "llm_cost_reported_usd_total", provider="openai", model=ACME) > 0
    # twice the 12 h price: estimated = reported + the 12 h line's reported amount
    newest = (NOW - sim.settings.cost_lag) // 86400 * 86400  # the open cost day
    lines = sim.dataset.truth("openai", START, newest, group=("model", "line_item"))
    reported = sum((m["cost"] for (model, _), m in lines.items() if model == ACME), Decimal(0))
    line_12h = lines[(ACME, f"{ACME}, cache writes - 12hr")]["cost"]
    doubled = acme_prices(sim, cache_write_12h=2 * at_card["usd_per_mtok"]["cache_write_12h"])
    tmp = tmp_path / "doubled"
    tmp.mkdir()
    got = exposition(tmp, sim, prices={"overrides": [doubled]})
    expected = float((reported + line_12h) / reported)
    assert ratio(got, provider="openai", model=ACME) == pytest.approx(expected, abs=1e-9)
