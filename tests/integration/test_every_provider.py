"""What every provider must get right, run once per provider (`provider_case` in
tests/conftest.py): restarts expose the same values, a downward revision never makes a
counter go down, and a failing endpoint loses nothing, counts nothing twice and stops no
other endpoint. Each test ends where a fresh exporter that never saw the trouble would.

Provider-specific behaviour (exact totals against the fake's truth, pagination, options)
stays in each provider's own tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.app import App
from tests.conftest import ProviderCase, case_app
from tests.helpers import Samples, parse, total

# Usage families whose values must be identical across restarts and replicas.
STABLE = ("llm_tokens_total", "llm_model_requests_total", "llm_cost_reported_usd_total",
          "llm_cost_estimated_usd_total", "llm_images_total", "llm_characters_total",
          "llm_audio_seconds_total", "llm_code_interpreter_sessions_total", "llm_tool_calls_total",
          "llm_vector_store_bytes", "llm_unpriced_tokens_total", "llm_cache_savings_usd_total",
          "llm_batch_savings_usd_total", "llm_period_", "llm_daily_")  # fmt: skip
COUNTERS = ("llm_tokens_total", "llm_model_requests_total", "llm_cost_reported_usd_total")


def exposed(app: App) -> Samples:
    return parse(app.exposition.current.body)


def stable(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith(STABLE)}


def counters(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] in COUNTERS}


def went_down(before: Samples, after: Samples) -> list[str]:
    """Counter series that went down (or vanished) between two expositions."""
    return [f"{k}: {v} -> {after.get(k)}" for k, v in before.items() if after.get(k, -1) < v]


def fresh_values(tmp: Path, case: ProviderCase) -> Samples:
    """What an exporter that never saw the earlier polls exposes now."""
    fresh = case_app(tmp, case)
    fresh.poll_once()
    values = stable(exposed(fresh))
    fresh.stop()
    return values


def test_a_restart_serves_the_same_values_before_and_after_its_first_poll(
    tmp_path: Path, provider_case: ProviderCase
) -> None:
    app = case_app(tmp_path, provider_case)
    app.poll_once()
    before = stable(exposed(app))
    assert total(before, "llm_tokens_total") > 0
    app.stop()
    again = case_app(tmp_path, provider_case)
    again.rebuild()  # from the state file alone
    assert stable(exposed(again)) == before
    again.poll_once()
    assert stable(exposed(again)) == before
    again.stop()


def test_a_deleted_state_file_is_backfilled_to_the_same_values(
    tmp_path: Path, provider_case: ProviderCase
) -> None:
    app = case_app(tmp_path / "a", provider_case)
    provider_case.advance(-2 * 86400)
    app.poll_once()
    provider_case.advance(2 * 86400)
    app.poll_once()  # incremental: only the open windows are fetched again
    before = stable(exposed(app))
    app.stop()
    (tmp_path / "a" / "state.db").unlink()
    assert fresh_values(tmp_path / "a", provider_case) == before


def test_a_downward_revision_never_lowers_a_counter(
    tmp_path: Path, provider_case: ProviderCase
) -> None:
    app = case_app(tmp_path, provider_case, bucket_width="1d")
    app.poll_once()
    before = exposed(app)
    provider_case.revise_closed_days("0.5")
    provider_case.advance(60)
    app.poll_once()
    after = exposed(app)
    assert not went_down(counters(before), counters(after))
    # The drop is not lost: it is what the revision gauges show, for each report that is
    # still re-read after a day (a usage report that settles within hours is not).
    assert total(after, "llm_source_revisions_total") > 0
    if provider_case.usage_reread_after_a_day:
        assert total(after, "llm_usage_revised") > 0
    if total(before, "llm_cost_reported_usd_total") > 0:
        assert total(after, "llm_cost_reported_revised_usd") > 0
    app.stop()


@pytest.mark.parametrize(("mode", "reason"), [("429", "rate_limited"), ("500", "server_error")])
def test_a_failing_endpoint_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, provider_case: ProviderCase, mode: str, reason: str
) -> None:
    app = case_app(tmp_path / "a", provider_case)
    app.poll_once()
    before = counters(exposed(app))
    provider_case.advance(3 * 3600)
    endpoint = provider_case.fault_endpoint
    provider_case.fail(endpoint, mode)
    app.poll_once()
    during = exposed(app)
    provider_case.recover()
    assert not went_down(before, counters(during))
    assert total(during, "llm_source_up", endpoint=endpoint) == 0
    failures = "llm_source_api_request_failures_total"
    assert total(during, failures, endpoint=endpoint, reason=reason) >= 1
    others = {
        dict(labels)["endpoint"]
        for (name, labels), _ in during.items()
        if name == "llm_source_up" and dict(labels)["endpoint"] != endpoint
    }
    for other in others:
        assert total(during, "llm_source_up", endpoint=other) == 1, other
    app.poll_once()
    after = exposed(app)
    assert not went_down(counters(during), counters(after))
    assert total(after, "llm_source_up", endpoint=endpoint) == 1
    assert stable(after) == fresh_values(tmp_path / "b", provider_case)
    app.stop()
