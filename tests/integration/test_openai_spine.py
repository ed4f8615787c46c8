"""The exporter against the simulator over real HTTP: exact totals, pagination, failures.

Restarts, revisions and a failing endpoint are tested for every provider at once in
test_every_provider.py.

The exporter runs in-process (its clock is the simulator's, so the current bucket grows
deterministically) and talks to the simulator over loopback HTTP, as it would to OpenAI.
"""

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
from tests.helpers import Samples, parse, total

START = dt.date(2026, 11, 1)
START_TS = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())
FAST_RETRY = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05, retry_after_max=0.05)

# Usage families whose values must be identical across restarts and replicas.
STABLE = ("llm_tokens_total", "llm_model_requests_total", "llm_cost_reported_usd_total",
          "llm_cost_estimated_usd_total", "llm_images_total", "llm_characters_total",
          "llm_audio_seconds_total", "llm_code_interpreter_sessions_total", "llm_tool_calls_total",
          "llm_vector_store_bytes", "llm_unpriced_tokens_total", "llm_period_")  # fmt: skip


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    s = SimulatorServer(
        port=0, seed=7, start=dt.date(2026, 10, 1), now=NOW, openai_amount_format="number"
    ).start()
    yield s
    s.stop()


def write_config(tmp: Path, sim: SimulatorServer, state: Path, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "history_start": START.isoformat(),
        "state_file": str(state),
        "providers": {"openai": [{"account": "main", "base_url": sim.openai_base_url}]},
    }
    cfg.update(extra)
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_app(tmp: Path, sim: SimulatorServer, state: Path | None = None, **extra: Any) -> App:
    state = state or tmp / "state.db"
    settings = load(
        write_config(tmp, sim, state, **extra), {"OPENAI_ADMIN_KEY": sim.settings.openai_key}
    )
    return App(settings, clock=lambda: float(sim.now()), retry=FAST_RETRY)


def stable(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith(STABLE)}


def exposed(app: App) -> Samples:
    return parse(app.exposition.current.body)


def test_totals_match_the_providers_truth(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim)
    app.poll_once()
    got = exposed(app)
    truth = sim.dataset.totals("openai", START_TS, NOW)
    for measure, value in truth.items():
        if measure.startswith("tokens."):
            assert total(got, "llm_tokens_total", token_type=measure[7:]) == value, measure
    assert total(got, "llm_model_requests_total") == truth["requests"]
    assert total(got, "llm_images_total") == truth["images"]
    assert total(got, "llm_characters_total") == truth["characters"]
    assert total(got, "llm_audio_seconds_total") == truth["audio_seconds"]
    assert total(got, "llm_code_interpreter_sessions_total") == truth["sessions"]
    assert total(got, "llm_tool_calls_total") == truth["tool_calls"]
    assert total(got, "llm_vector_store_bytes") == truth["storage_bytes"]
    # Costs lag usage: the reported total is what the costs endpoint shows now.
    cost_truth = sim.dataset.totals("openai", START_TS, NOW - sim.settings.cost_lag)["cost"]
    assert total(got, "llm_cost_reported_usd_total") == pytest.approx(float(cost_truth), rel=1e-9)
    assert all(v == 1 for (n, _), v in got.items() if n == "llm_source_up")
    app.stop()


def test_growing_current_bucket_is_counted_once(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim)
    for _ in range(4):
        app.poll_once()
        sim.clock.advance(1800)
    app.poll_once()
    got = exposed(app)
    truth = sim.dataset.totals("openai", START_TS, sim.now())
    assert total(got, "llm_tokens_total", token_type="output") == truth["tokens.output"]
    assert total(got, "llm_model_requests_total") == truth["requests"]
    app.stop()


def test_closed_buckets_are_not_fetched_again(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim)
    app.poll_once()
    sim.stats.reset()
    sim.clock.advance(600)
    app.poll_once()
    starts = [
        int(v) for e in sim.stats.snapshot(1000)["log"] for k, v in e["query"] if k == "start_time"
    ]
    assert starts, "second poll made no usage requests"
    horizon_floor = (NOW - 5 * 86400) // 86400 * 86400
    assert min(starts) >= horizon_floor
    requests = total(exposed(app), "llm_source_poll_api_requests")
    assert requests == 11  # one page per endpoint for the open window
    app.stop()


def test_pagination_is_followed_to_the_end(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim, bucket_width="1h")  # 19.6 days of hours: several pages
    app.poll_once()
    got = exposed(app)
    truth = sim.dataset.totals("openai", START_TS, NOW)
    assert total(got, "llm_tokens_total", token_type="input") == truth["tokens.input"]
    pages = [e for e in sim.stats.snapshot(5000)["log"] if e["path"].endswith("/usage/completions")]
    assert len(pages) >= 3 and all(e["status"] == 200 for e in pages)
    app.stop()


def test_rate_limits_are_retried_and_counted(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim)
    sim.add_fault("429", provider="openai", endpoint="completions", count=2, retry_after=0)
    app.poll_once()
    got = exposed(app)
    assert total(got, "llm_source_api_requests_total", endpoint="completions", code="429") == 2
    assert total(got, "llm_source_up", endpoint="completions") == 1
    assert (
        total(
            got,
            "llm_source_api_request_failures_total",
            endpoint="completions",
            reason="rate_limited",
        )
        == 2
    )
    app.stop()


def test_a_failing_endpoint_does_not_stop_the_others(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim)
    sim.add_fault("500", provider="openai", endpoint="images", count=-1)
    app.poll_once()
    got = exposed(app)
    assert total(got, "llm_source_up", endpoint="images") == 0
    assert total(got, "llm_source_up", endpoint="completions") == 1
    assert total(got, "llm_images_total") == 0
    truth = sim.dataset.totals("openai", START_TS, NOW)
    assert total(got, "llm_tokens_total", token_type="output") == truth["tokens.output"]
    # it catches up by itself once the provider recovers
    sim.faults.clear()
    app.poll_once()
    got = exposed(app)
    assert total(got, "llm_source_up", endpoint="images") == 1
    assert total(got, "llm_images_total") == truth["images"]
    app.stop()


def test_revoked_key_is_an_auth_failure_not_retried(tmp_path: Path, sim: SimulatorServer) -> None:
    state = tmp_path / "state.db"
    settings = load(write_config(tmp_path, sim, state), {"OPENAI_ADMIN_KEY": "test-wrong-key"})
    app = App(settings, clock=lambda: float(sim.now()), retry=FAST_RETRY)
    app.poll_once()
    got = exposed(app)
    assert total(got, "llm_source_up") == 0
    assert total(got, "llm_source_api_requests_total", code="401") == 11  # once per endpoint
    assert total(got, "llm_source_api_request_failures_total", reason="auth") == 11
    assert b"test-wrong-key" not in app.exposition.current.body
    app.stop()


def test_estimated_cost_matches_the_price_card_per_model(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """The simulator prices tokens with genai-prices, so our estimate must agree per model."""
    app = make_app(tmp_path, sim)
    app.poll_once()
    got = exposed(app)
    truth = sim.dataset.truth("openai", START_TS, NOW, group=("model",), operation="completions")
    checked = 0
    for (model,), measures in truth.items():
        est = total(got, "llm_cost_estimated_usd_total", operation="completions", model=model)
        if model == "acme-internal-1":  # unknown to the price database: unpriced, never $0
            assert est == 0
            assert total(got, "llm_unpriced_tokens_total", model=model) > 0
            continue
        assert est == pytest.approx(float(measures["cost"]), rel=1e-9), model
        checked += 1
    assert checked >= 3
    app.stop()


def test_changing_grouping_or_width_refetches_instead_of_double_counting(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    app = make_app(tmp_path, sim)
    app.poll_once()
    app.stop()
    truth = sim.dataset.totals("openai", START_TS, NOW)
    for extra in ({"group_by": ["model", "project", "user"]}, {"bucket_width": "1h"}):
        again = make_app(tmp_path, sim, **extra)  # same state file, new shape
        again.poll_once()
        got = exposed(again)
        assert total(got, "llm_tokens_total", token_type="output") == truth["tokens.output"], extra
        assert total(got, "llm_model_requests_total") == truth["requests"], extra
        assert total(got, "llm_usage_revised") == 0, extra
        again.stop()


def test_twelve_hour_cache_writes_are_counted_billed_and_unpriced(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """The simulator's 12 hour cache writes (on the model the price database lacks) arrive
    as their own token type, with their own reported line item, and without a price they
    are unpriced tokens, never estimated at another type's price."""
    app = make_app(tmp_path, sim)
    app.poll_once()
    got = exposed(app)
    truth = sim.dataset.totals("openai", START_TS, NOW, "completions")
    tokens = truth["tokens.cache_write_12h"]
    assert tokens > 0
    assert total(got, "llm_tokens_total", token_type="cache_write_12h") == tokens
    assert total(got, "llm_unpriced_tokens_total", token_type="cache_write_12h") == tokens
    assert total(got, "llm_cost_estimated_usd_total", token_type="cache_write_12h") == 0
    lines = sim.dataset.truth("openai", START_TS, NOW - sim.settings.cost_lag, group=("line_item",))
    [(item, billed)] = [(k[0], m) for k, m in lines.items() if k[0].endswith("cache writes - 12hr")]
    reported = total(got, "llm_cost_reported_usd_total", line_item=item)
    assert reported == pytest.approx(float(billed["cost"]), rel=1e-9) and reported > 0
    app.stop()


def test_grouping_by_api_source_labels_completions(tmp_path: Path, sim: SimulatorServer) -> None:
    """With api_source in group_by, completions usage carries the label (agents_api or
    unlabeled), partitions the same totals, and other operations have no such label."""
    app = make_app(tmp_path, sim, group_by=["model", "project", "api_source"])
    app.poll_once()
    got = exposed(app)
    truth = sim.dataset.truth(
        "openai", START_TS, NOW, group=("api_source",), operation="completions"
    )
    assert {k[0] for k in truth} == {"agents_api", "unlabeled"}
    for (source,), measures in truth.items():
        for tt in ("input", "output"):
            assert (
                total(
                    got,
                    "llm_tokens_total",
                    operation="completions",
                    api_source=source,
                    token_type=tt,
                )
                == measures[f"tokens.{tt}"]
            ), (source, tt)
        assert (
            total(got, "llm_model_requests_total", operation="completions", api_source=source)
            == measures["requests"]
        )
    labelled = {
        dict(ls).get("operation") for (n, ls), _ in got.items()
        if n == "llm_tokens_total" and dict(ls).get("api_source")
    }  # fmt: skip
    assert labelled == {"completions"}
    app.stop()
