"""Anthropic and Groq sources against the simulator over real HTTP, alone and with OpenAI.

Same method as test_openai_spine: the exporter runs in-process with the simulator's clock
(frozen, moved by the tests), talks to the simulator over loopback, and its output is compared
with the simulator's exact truth. Anthropic must be exact; Groq is integrated from 5-minute
rates, so it is held to the error bound its adapter documents, and the measured error is
printed (`pytest -s`).
"""

from __future__ import annotations

import datetime as dt
import math
import subprocess
from collections import defaultdict
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import App
from exporter.rows import COST, REQUESTS, TOOL_CALLS
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from tests.helpers import Samples, binary, parse, total

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())  # a Friday afternoon
START = dt.date(2026, 11, 1)
# Groq backfills are the slow part (the simulator evaluates every 5-minute sample), so tests
# that are not about long histories start later.
RECENT = dt.date(2026, 11, 16)
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)

ANTHROPIC_TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
GROQ_STEP = 300  # Groq's rate window, the integration step
WIDTHS = {"1d": 86400, "1h": 3600}

# Usage families whose values must be identical across restarts.
STABLE = ("llm_tokens_total", "llm_model_requests_total", "llm_cost_reported_usd_total",
          "llm_cost_estimated_usd_total", "llm_tool_calls_total", "llm_unpriced_tokens_total",
          "llm_cache_savings_usd_total", "llm_batch_savings_usd_total", "llm_period_")  # fmt: skip

# Environment variable names (the config names them per account with key_env).
OPENAI_ENV = "TEST_OPENAI_KEY"
ANTHROPIC_ENV = "TEST_ANTHROPIC_KEY"
GROQ_ENV = "TEST_GROQ_KEY"


def ts(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    s = SimulatorServer(port=0, seed=11, start=dt.date(2026, 10, 1), now=NOW).start()
    yield s
    s.stop()


def account(name: str, base_url: str, key_env: str, **extra: Any) -> dict[str, Any]:
    return {"account": name, "base_url": base_url, "key_env": key_env, **extra}


def keys(sim: SimulatorServer) -> dict[str, str]:
    return {
        OPENAI_ENV: sim.settings.openai_key,
        ANTHROPIC_ENV: sim.settings.anthropic_key,
        GROQ_ENV: sim.settings.groq_key,
    }


def make_app(
    tmp: Path,
    sim: SimulatorServer,
    providers: Mapping[str, list[dict[str, Any]]],
    env: Mapping[str, str] | None = None,
    history_start: dt.date = START,
    **extra: Any,
) -> App:
    cfg: dict[str, Any] = {
        "history_start": history_start.isoformat(),
        "state_file": str(tmp / "state.db"),
        "providers": dict(providers),
        **extra,
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    settings = load(path, {**keys(sim), **(env or {})})
    return App(settings, clock=lambda: float(sim.now()), retry=FAST_RETRY)


def anthropic_app(tmp: Path, sim: SimulatorServer, **extra: Any) -> App:
    org = account("org", sim.anthropic_base_url, ANTHROPIC_ENV)
    return make_app(tmp, sim, {"anthropic": [org]}, **extra)


def all_three(sim: SimulatorServer, **groq_extra: Any) -> dict[str, list[dict[str, Any]]]:
    return {
        "openai": [account("main", sim.openai_base_url, OPENAI_ENV)],
        "anthropic": [account("org", sim.anthropic_base_url, ANTHROPIC_ENV)],
        "groq": [account("org", sim.groq_base_url, GROQ_ENV, **groq_extra)],
    }


def exposed(app: App) -> Samples:
    return parse(app.exposition.current.body)


def stable(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith(STABLE)}


def values(samples: Samples, name: str, label: str, **match: str) -> set[str]:
    """Distinct values of `label` on the series of `name` that match."""
    return {
        dict(labels).get(label, "")
        for (n, labels), _ in samples.items()
        if n == name and all((k, v) in labels for k, v in match.items())
    }


def up_values(samples: Samples, **match: str) -> list[float]:
    return [
        v
        for (n, labels), v in samples.items()
        if n == "llm_source_up" and all((k, val) in labels for k, val in match.items())
    ]


# --- checks shared by several tests -----------------------------------------------------------


def assert_anthropic_exact(
    got: Samples, sim: SimulatorServer, start: int, now: int, account: str = "org"
) -> None:
    """Tokens by type and tool calls equal the truth up to `now`; cost up to `now - lag`."""
    truth = sim.dataset.totals("anthropic", start, now, operation="messages")
    sel = {"provider": "anthropic", "account": account}
    for tt in ANTHROPIC_TOKEN_TYPES:
        assert total(got, "llm_tokens_total", token_type=tt, **sel) == truth[f"tokens.{tt}"], tt
    assert values(got, "llm_tokens_total", "token_type", **sel) == set(ANTHROPIC_TOKEN_TYPES)
    assert total(got, "llm_tool_calls_total", tool="web_search", **sel) == truth[TOOL_CALLS]
    assert total(got, "llm_tool_calls_total", **sel) == truth[TOOL_CALLS]
    # Anthropic reports no request count; none may be invented.
    assert total(got, "llm_model_requests_total", **sel) == 0
    # The cost report trails usage by the simulator's cost lag; code execution is billed too.
    cost = sim.dataset.totals("anthropic", start, now - sim.settings.cost_lag)[COST]
    assert total(got, "llm_cost_reported_usd_total", **sel) == pytest.approx(float(cost), rel=1e-9)


def assert_openai_exact(got: Samples, sim: SimulatorServer, start: int, account: str) -> None:
    truth = sim.dataset.totals("openai", start, sim.now())
    sel = {"provider": "openai", "account": account}
    for measure, value in truth.items():
        if measure.startswith("tokens."):
            assert total(got, "llm_tokens_total", token_type=measure[7:], **sel) == value, measure
    assert total(got, "llm_model_requests_total", **sel) == truth[REQUESTS]
    assert total(got, "llm_tool_calls_total", **sel) == truth[TOOL_CALLS]
    assert total(got, "llm_images_total", **sel) == truth["images"]
    cost = sim.dataset.totals("openai", start, sim.now() - sim.settings.cost_lag)[COST]
    assert total(got, "llm_cost_reported_usd_total", **sel) == pytest.approx(float(cost), rel=1e-9)


# Groq measure -> how the truth counts it. tokens_in is every prompt token, cached ones
# included (the simulator's documented semantics); without `cache_hits_are_tokens` the adapter
# books all of it as `input`.
GROQ_MEASURES: dict[str, tuple[str, ...]] = {
    "tokens.input": ("tokens.input", "tokens.cache_read"),
    "tokens.output": ("tokens.output",),
    REQUESTS: (REQUESTS,),
}

GroqKey = tuple[str, str]  # (model, project)


def groq_comparison(
    app: App, sim: SimulatorServer, start: int, width: int, account: str = "org"
) -> list[tuple[int, GroqKey, str, int, int]]:
    """(bucket, series, measure, estimate, truth) for every bucket since `start` up to now.

    The truth of a bucket ends at the newest 5-minute boundary: a window that has not ended
    has no sample yet (the adapter documents that the newest bucket settles on later polls).
    """
    now = sim.now()
    last = now - now % GROQ_STEP
    est: dict[tuple[int, GroqKey], Mapping[str, Any]] = {}
    for sr in app.ledger.rows(since=start):
        if sr.provider == "groq" and sr.account == account:
            key = (sr.row.dim("model"), sr.row.dim("project"))
            assert (sr.start, key) not in est, "a (bucket, series) stored twice"
            assert sr.end - sr.start == width
            est[(sr.start, key)] = sr.row.measures
    out: list[tuple[int, GroqKey, str, int, int]] = []
    for b in range(start, now, width):
        truth = (
            sim.dataset.truth("groq", b, min(b + width, last), group=("model", "project"))
            if b < last
            else {}
        )
        series = {k for (s, k) in est if s == b} | {(m, p) for m, p in truth}
        for key in sorted(series):
            t = truth.get(key, {})
            e = est.get((b, key), {})
            for measure, parts in GROQ_MEASURES.items():
                true_value = sum(int(t.get(p, 0)) for p in parts)
                out.append((b, key, measure, int(e.get(measure, 0)), true_value))
    return out


def groq_bound(true_value: int) -> float:
    """The adapter's documented bound with every sample present: 0.5 for the one rounding,
    plus 300 * sum(eps_k) for float64-quoted rates (eps_k <= rate * 2**-52)."""
    return 0.5 + true_value * 2.0**-52


def assert_groq_within_bound(
    app: App, sim: SimulatorServer, start: int, width: int, account: str = "org"
) -> float:
    """Per bucket and series within the bound; the exposition agrees. Returns the max error."""
    rows = groq_comparison(app, sim, start, width, account)
    assert rows, "no Groq buckets to compare"
    assert any(true_value for *_, true_value in rows), "the simulator had no Groq traffic"
    worst = 0
    per_series: dict[tuple[GroqKey, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for b, key, measure, estimate, true_value in rows:
        err = abs(estimate - true_value)
        worst = max(worst, err)
        assert err <= groq_bound(true_value), (b, key, measure, estimate, true_value)
        acc = per_series[(key, measure)]
        acc[0] += estimate
        acc[1] += true_value
        acc[2] += 1
    # Over the whole history the bound adds up per bucket (one rounding each).
    for (key, measure), (estimate, true_value, buckets) in per_series.items():
        assert abs(estimate - true_value) <= buckets * groq_bound(true_value), (key, measure)
    # The exposed counters are the stored estimates, summed.
    got = exposed(app)
    sel = {"provider": "groq", "account": account}
    for measure in GROQ_MEASURES:
        stored = sum(e for (_, m), (e, _, _) in per_series.items() if m == measure)
        if measure == REQUESTS:
            assert total(got, "llm_model_requests_total", **sel) == stored
        else:
            tt = measure.removeprefix("tokens.")
            assert total(got, "llm_tokens_total", token_type=tt, **sel) == stored, measure
    return worst


# --- 1. Anthropic: exact totals --------------------------------------------------------------


@pytest.mark.parametrize("width", ["1d", "1h"])
def test_anthropic_totals_match_the_truth(tmp_path: Path, sim: SimulatorServer, width: str) -> None:
    app = anthropic_app(tmp_path, sim, bucket_width=width)
    app.poll_once()
    got = exposed(app)
    assert_anthropic_exact(got, sim, ts(START), NOW)
    assert up_values(got, provider="anthropic") == [1, 1]  # messages and costs

    # Money is read from the cents strings exactly: the stored Decimals add up to the truth
    # (to the simulator's own 28-digit Decimal rounding of per-second code execution prices).
    stored = sum(
        (
            Decimal(sr.row.measures[COST])
            for sr in app.ledger.rows(since=ts(START))
            if sr.provider == "anthropic" and COST in sr.row.measures
        ),
        Decimal(0),
    )
    cost = sim.dataset.totals("anthropic", ts(START), NOW - sim.settings.cost_lag)[COST]
    assert abs(stored - cost) <= Decimal("1e-12"), (stored, cost)

    # Every page of the messages report was followed, each once.
    log = sim.stats.snapshot(5000)["log"]
    pages = [e for e in log if e["path"].endswith("/usage_report/messages")]
    per_page = {"1d": 31, "1h": 168}[width]
    buckets = -(-(NOW - ts(START)) // WIDTHS[width])
    assert len(pages) == math.ceil(buckets / per_page)
    assert all(e["status"] == 200 for e in pages)
    assert sum(1 for e in pages if any(k == "page" for k, _ in e["query"])) == len(pages) - 1
    if width == "1h":
        assert len(pages) >= 3
    app.stop()


# --- 2. Anthropic: growing bucket (restarts: test_every_provider.py) ------------------------


@pytest.mark.parametrize("width", ["1d", "1h"])
def test_anthropic_growing_current_bucket_is_counted_once(
    tmp_path: Path, sim: SimulatorServer, width: str
) -> None:
    app = anthropic_app(tmp_path, sim, bucket_width=width)
    for _ in range(5):
        app.poll_once()
        sim.clock.advance(8222)  # 2h17m02s: unaligned, and past midnight by the end
    app.poll_once()
    assert sim.now() // 86400 > NOW // 86400
    assert_anthropic_exact(exposed(app), sim, ts(START), sim.now())
    app.stop()


@pytest.mark.parametrize("width", ["1d", "1h"])
def test_groq_integrated_rates_stay_within_the_documented_bound(
    tmp_path: Path, sim: SimulatorServer, width: str
) -> None:
    start = dt.date(2026, 11, 14)
    groq = account("org", sim.groq_base_url, GROQ_ENV)
    app = make_app(tmp_path, sim, {"groq": [groq]}, history_start=start, bucket_width=width)
    app.poll_once()
    assert up_values(exposed(app), provider="groq") == [1]
    first = assert_groq_within_bound(app, sim, ts(start), WIDTHS[width])
    # The clock moves off the 5-minute grid: the open window is not sampled yet, and the
    # bucket that holds it is replaced (not added to) on the next polls.
    for _ in range(2):
        sim.clock.advance(1234)
        app.poll_once()
    later = assert_groq_within_bound(app, sim, ts(start), WIDTHS[width])
    print(
        f"\ngroq {width} buckets: max |estimate - truth| per bucket and series = "
        f"{first} (aligned now), {later} (after two unaligned polls); bound 0.5"
    )
    app.stop()


def test_groq_missing_samples_that_come_back_are_not_counted_twice(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """A NaN window dips a bucket; when the sample returns the counter is the truth again."""
    start = dt.date(2026, 11, 14)
    groq = account("org", sim.groq_base_url, GROQ_ENV)
    app = make_app(tmp_path, sim, {"groq": [groq]}, history_start=start)
    app.poll_once()
    before = total(exposed(app), "llm_tokens_total")
    sim.add_fault("nan", provider="groq", count=-1)
    app.poll_once()
    dipped = exposed(app)
    assert total(dipped, "llm_tokens_total") == before  # the counter keeps its highest value
    assert total(dipped, "llm_usage_revised") > 0  # and says how far below it the data is
    sim.faults.clear()
    app.poll_once()
    again = exposed(app)
    assert total(again, "llm_tokens_total") == before
    assert total(again, "llm_usage_revised") == 0
    app.stop()


# --- 4. several accounts per provider -----------------------------------------------------------


def test_several_accounts_are_told_apart_by_the_account_label(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    providers = {
        "openai": [
            account("prod", sim.openai_base_url, "TEST_OPENAI_PROD_KEY"),
            account("staging", sim.openai_base_url, "TEST_OPENAI_STAGING_KEY"),
        ],
        "anthropic": [account("claude-org", sim.anthropic_base_url, ANTHROPIC_ENV)],
        "groq": [account("groq-org", sim.groq_base_url, GROQ_ENV)],
    }
    env = {"TEST_OPENAI_PROD_KEY": sim.settings.openai_key}
    env["TEST_OPENAI_STAGING_KEY"] = sim.settings.openai_key
    app = make_app(tmp_path, sim, providers, env, history_start=RECENT)
    app.poll_once()
    got = exposed(app)
    start = ts(RECENT)

    assert values(got, "llm_source_up", "account", provider="openai") == {"prod", "staging"}
    assert values(got, "llm_source_up", "account", provider="anthropic") == {"claude-org"}
    assert values(got, "llm_source_up", "account", provider="groq") == {"groq-org"}
    assert all(v == 1 for v in up_values(got))
    for name in ("prod", "staging"):
        assert_openai_exact(got, sim, start, name)
    assert_anthropic_exact(got, sim, start, NOW, account="claude-org")
    assert_groq_within_bound(app, sim, start, 86400, account="groq-org")

    # The two OpenAI accounts read the same organization here, so their usage series are
    # the same numbers under different account labels: nothing was merged or split.
    def of(acc: str) -> Samples:
        return {
            (n, labels - {("account", acc)}): v
            for (n, labels), v in stable(got).items()
            if ("provider", "openai") in labels and ("account", acc) in labels
        }

    assert of("prod") and of("prod") == of("staging")
    app.stop()


# --- 5. one provider failing while the others keep serving --------------------------------------


@pytest.mark.parametrize(
    ("mode", "code", "reason", "attempts"),
    [("500", "500", "server_error", 2), ("auth", "401", "auth", 1)],
)
def test_a_failing_anthropic_does_not_stop_openai_and_groq(
    tmp_path: Path, sim: SimulatorServer, mode: str, code: str, reason: str, attempts: int
) -> None:
    app = make_app(tmp_path, sim, all_three(sim), history_start=RECENT)
    sim.add_fault(mode, provider="anthropic", count=-1, retry_after=0)
    app.poll_once()
    got = exposed(app)
    start = ts(RECENT)

    assert up_values(got, provider="anthropic") == [0, 0]
    sel = {"provider": "anthropic", "reason": reason}
    assert total(got, "llm_source_api_request_failures_total", **sel) == 2 * attempts
    assert (
        total(got, "llm_source_api_requests_total", provider="anthropic", code=code) == 2 * attempts
    )
    assert total(got, "llm_tokens_total", provider="anthropic") == 0
    assert up_values(got, provider="openai") and all(
        v == 1 for v in up_values(got, provider="openai")
    )
    assert up_values(got, provider="groq") == [1]
    assert_openai_exact(got, sim, start, "main")
    assert_groq_within_bound(app, sim, start, 86400)

    # Anthropic catches up by itself once it answers again.
    sim.faults.clear()
    app.poll_once()
    got = exposed(app)
    assert up_values(got, provider="anthropic") == [1, 1]
    assert_anthropic_exact(got, sim, start, NOW)
    app.stop()


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (403, "auth"),
        (404, "not_entitled"),
    ],
)
def test_groq_without_enterprise_is_down_with_a_reason(
    tmp_path: Path, sim: SimulatorServer, status: int, reason: str
) -> None:
    sim.settings.groq_unentitled_status = status
    env = {GROQ_ENV: sim.settings.groq_unentitled_key}
    app = make_app(tmp_path, sim, all_three(sim), env, history_start=RECENT)
    app.poll_once()
    got = exposed(app)
    start = ts(RECENT)

    assert up_values(got, provider="groq") == [0]
    assert total(got, "llm_source_api_requests_total", provider="groq", code=str(status)) == 1
    sel = {"provider": "groq", "endpoint": "usage"}
    assert total(got, "llm_source_api_request_failures_total", reason=reason, **sel) == 1
    assert total(got, "llm_tokens_total", provider="groq") == 0
    groq_status = [s for s in app.status()["sources"] if s["provider"] == "groq"]
    assert "Enterprise" in groq_status[0]["error"]
    assert sim.settings.groq_unentitled_key.encode() not in app.exposition.current.body

    assert all(
        v == 1 for v in up_values(got, provider="openai") + up_values(got, provider="anthropic")
    )
    assert_openai_exact(got, sim, start, "main")
    assert_anthropic_exact(got, sim, start, NOW)
    app.stop()


# --- 6. the exposition passes promtool ------------------------------------------------------------


def test_exposition_with_all_three_providers_passes_promtool(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    promtool = binary("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    providers = all_three(sim)
    providers["anthropic"][0]["options"] = {"claude_code": True}
    app = make_app(tmp_path, sim, providers, history_start=RECENT)
    app.poll_once()
    body = app.exposition.current.body
    got = parse(body)
    for provider in ("openai", "anthropic", "groq"):
        assert total(got, "llm_tokens_total", provider=provider) > 0, provider
    assert all(v == 1 for v in up_values(got))
    out = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert out.returncode == 0, (out.stdout + out.stderr).decode()
    app.stop()
