"""Ledger rows -> families -> exposition: sums, labels, revisions, periods, folding, promtool."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from exporter.exposition import Family, format_value, render
from exporter.health import Health
from exporter.ledger import Revision, StoredRow
from exporter.model import ModelInput, PriceEntry, RowEstimate, build, opt_labels_for
from exporter.rows import COST, STORAGE_BYTES, Row


class DataInfo(NamedTuple):
    source: str
    version: str
    timestamp: float | None
    refresh: str = "off"
    refresh_time: float | None = None


DAY = 86400
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
T0 = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())


def sr(
    day: int,
    op: str,
    dims: Mapping[str, str],
    measures: Mapping[str, int | Decimal],
    account: str = "main",
) -> StoredRow:
    start = T0 + day * DAY
    return StoredRow("openai", account, op, start, start + DAY, Row.make(op, dims, measures))


def samples(fams: Iterable[Family], name: str) -> dict[tuple[str, ...], object]:
    for f in fams:
        if f.spec.name == name:
            return dict(f.samples)
    return {}


def inp(rows: list[StoredRow], **kw: object) -> ModelInput:
    args: dict[str, object] = dict(
        rows=rows,
        revisions=[],
        health=Health(),
        now=NOW,
        tz=ZoneInfo("UTC"),
        history_start=T0,
        opt_labels=("project",),
    )
    args.update(kw)
    return ModelInput(**args)  # type: ignore[arg-type]


def test_tokens_sum_over_buckets_by_label() -> None:
    rows = [
        sr(
            0,
            "completions",
            {"model": "m", "project": "p"},
            {"tokens.input": 10, "tokens.output": 3, "requests": 2},
        ),
        sr(
            1,
            "completions",
            {"model": "m", "project": "p"},
            {"tokens.input": 5, "tokens.output": 1, "requests": 1},
        ),
        sr(1, "completions", {"model": "m", "project": "q", "user": "u1"}, {"tokens.input": 7}),
    ]
    fams = build(inp(rows))
    toks = samples(fams, "llm_tokens_total")
    assert toks[("openai", "main", "completions", "m", "p", "input")] == 15
    assert toks[("openai", "main", "completions", "m", "p", "output")] == 4
    # user is not an enabled label: its rows fold into the project's series
    assert toks[("openai", "main", "completions", "m", "q", "input")] == 7
    assert (
        samples(fams, "llm_model_requests_total")[("openai", "main", "completions", "m", "p")] == 3
    )


def test_reported_cost_is_decimal_exact_and_currency_checked() -> None:
    rows = [
        sr(
            0,
            "costs",
            {"project": "p", "line_item": "x, input", "currency": "usd"},
            {COST: Decimal("0.1")},
        ),
        sr(
            1,
            "costs",
            {"project": "p", "line_item": "x, input", "currency": "usd"},
            {COST: Decimal("0.2")},
        ),
        sr(
            1,
            "costs",
            {"project": "p", "line_item": "x, input", "currency": "eur"},
            {COST: Decimal("99")},
        ),
    ]
    cost = samples(build(inp(rows)), "llm_cost_reported_usd_total")
    assert cost == {("openai", "main", "p", "", "x, input"): Decimal("0.3")}
    assert format_value(Decimal("0.3")) == "0.3"


def test_revisions_keep_counters_monotonic() -> None:
    rows = [sr(0, "costs", {"project": "p", "currency": "usd"}, {COST: Decimal("9.00")})]
    revs = [
        Revision(
            "openai",
            "main",
            "costs",
            T0,
            T0 + DAY,
            (("currency", "usd"), ("project", "p")),
            COST,
            Decimal("1.00"),
        )
    ]
    fams = build(inp(rows, revisions=revs))
    key = ("openai", "main", "p", "", "")
    assert samples(fams, "llm_cost_reported_usd_total")[key] == Decimal("10.00")
    assert samples(fams, "llm_cost_reported_revised_usd")[key] == Decimal("1.00")


def test_period_gauges_follow_timezone() -> None:
    tz = ZoneInfo("America/Los_Angeles")
    # 2026-11-23 12:00 UTC is Monday 04:00 in Los Angeles.
    rows = [
        sr(22, "completions", {"model": "m"}, {"tokens.input": 1}),  # the Nov 23 UTC day
        sr(21, "completions", {"model": "m"}, {"tokens.input": 10}),  # Nov 22
        sr(0, "completions", {"model": "m"}, {"tokens.input": 100}),  # Nov 1
    ]
    period = samples(build(inp(rows, tz=tz)), "llm_period_tokens")
    # A daily bucket is a UTC day and counts as the local day of the same date.
    assert period[("openai", "main", "", "m", "input", "day")] == 1
    assert period[("openai", "main", "", "m", "input", "week")] == 1  # the week began Monday
    assert period[("openai", "main", "", "m", "input", "month")] == 111


def test_hourly_buckets_count_in_their_local_day() -> None:
    tz = ZoneInfo("America/Los_Angeles")
    hour = 3600
    today_utc = T0 + 22 * DAY  # Nov 23 00:00 UTC = Nov 22 16:00 in Los Angeles

    def hourly(start: int, n: int) -> StoredRow:
        return StoredRow(
            "openai",
            "main",
            "completions",
            start,
            start + hour,
            Row.make("completions", {"model": "m"}, {"tokens.input": n}),
        )

    rows = [
        hourly(today_utc + 7 * hour, 5),
        hourly(today_utc + 8 * hour, 7),
        hourly(today_utc + 11 * hour, 1),
    ]
    period = samples(build(inp(rows, tz=tz)), "llm_period_tokens")
    # 07:00 UTC is Nov 22 23:00 local (yesterday); 08:00 and 11:00 UTC are today.
    assert period[("openai", "main", "", "m", "input", "day")] == 8
    assert period[("openai", "main", "", "m", "input", "month")] == 13


def test_storage_is_latest_level_not_a_sum() -> None:
    rows = [
        sr(0, "vector_stores", {"project": "p"}, {STORAGE_BYTES: 500}),
        sr(1, "vector_stores", {"project": "p"}, {STORAGE_BYTES: 700}),
    ]
    assert samples(build(inp(rows)), "llm_vector_store_bytes") == {("openai", "main", "p"): 700}


def test_long_tail_of_projects_is_folded_into_other() -> None:
    rows = [
        sr(0, "completions", {"model": "m", "project": f"p{i}"}, {"tokens.input": 100 - i})
        for i in range(5)
    ]
    toks = samples(build(inp(rows, max_values=2)), "llm_tokens_total")
    assert toks[("openai", "main", "completions", "m", "p0", "input")] == 100
    assert toks[("openai", "main", "completions", "m", "p1", "input")] == 99
    assert toks[("openai", "main", "completions", "m", "other", "input")] == 98 + 97 + 96
    assert sum(toks.values()) == sum(100 - i for i in range(5))  # folding loses nothing


class FakeEstimator:
    def estimate_dims(
        self, provider: str, dims: Mapping[str, str], token_counts: Mapping[str, int], day: dt.date
    ) -> RowEstimate:
        if dims.get("model") == "unknown":
            return RowEstimate(unpriced=dict(token_counts))
        return RowEstimate(
            costs={
                tt: (Decimal(n) * Decimal("0.000001"), "database") for tt, n in token_counts.items()
            }
        )

    def estimate_units(
        self, provider: str, dims: Mapping[str, str], unit_counts: Mapping[str, int], day: dt.date
    ) -> dict[str, tuple[Decimal, str]]:
        return {}

    def price_table(
        self, provider_models: Iterable[tuple[str, str]], day: dt.date
    ) -> list[PriceEntry]:
        return [
            PriceEntry(p, m, "input", Decimal("0.000001"), "database")
            for p, m in provider_models
            if m != "unknown"
        ]

    def data_info(self) -> DataInfo:
        return DataInfo("genai-prices", "test", None)


def test_estimates_and_unpriced_are_separate_metrics() -> None:
    rows = [
        sr(0, "completions", {"model": "m"}, {"tokens.input": 1_000_000, "requests": 3}),
        sr(0, "completions", {"model": "unknown"}, {"tokens.input": 500, "requests": 2}),
    ]
    fams = build(inp(rows, estimator=FakeEstimator()))
    est = samples(fams, "llm_cost_estimated_usd_total")
    assert est == {
        ("openai", "main", "completions", "m", "", "input", "database"): Decimal("1.000000")
    }
    assert samples(fams, "llm_unpriced_tokens_total") == {
        ("openai", "main", "unknown", "input"): 500
    }
    assert samples(fams, "llm_unpriced_model_requests_total") == {("openai", "main", "unknown"): 2}
    assert samples(fams, "llm_unpriced_model_info") == {("openai", "unknown"): 1}


def test_opt_labels_are_the_union_in_fixed_order() -> None:
    assert opt_labels_for([["model", "user"], ["project"]]) == ("project", "user")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_exposition_passes_promtool_check_metrics() -> None:
    h = Health()
    rec = h.recorder("openai", "main")
    rec.request("completions", "200", 0.3)
    rec.failure("completions", "rate_limited")
    h.register("openai", "main", "completions", ("auth",), 2 * DAY)
    h.success("openai", "main", "completions", 1.0, T0, T0 + DAY, 3)
    rows = [
        sr(
            0,
            "completions",
            {"model": "m", "project": 'we"ird\\name'},
            {"tokens.input": 10, "requests": 1},
        ),
        sr(0, "costs", {"project": "p", "currency": "usd"}, {COST: Decimal("1.5")}),
        sr(0, "vector_stores", {"project": "p"}, {STORAGE_BYTES: 5}),
    ]
    body = render(build(inp(rows, health=h, estimator=FakeEstimator())))
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert b'project="we\\"ird\\\\name"' in body


def test_price_refresh_result_and_time_are_exposed() -> None:
    class Refreshing(FakeEstimator):
        def data_info(self) -> DataInfo:
            return DataInfo("genai-prices", "0.2.3", None, "failed", 1795000000.0)

    rows = [sr(0, "completions", {"model": "m"}, {"tokens.input": 1})]
    fams = build(inp(rows, estimator=Refreshing()))
    assert samples(fams, "llm_price_data_info") == {("genai-prices", "0.2.3", "failed"): 1}
    assert samples(fams, "llm_price_data_refresh_attempt_timestamp_seconds") == {(): 1795000000.0}


def test_folding_never_moves_history_between_series() -> None:
    """A big newcomer does not displace a kept project: no series, "other" included, goes down."""
    day0 = [
        sr(0, "completions", {"model": "m", "project": f"p{i}"}, {"tokens.input": 10 - i})
        for i in range(3)
    ]
    before = samples(build(inp(day0, max_values=2)), "llm_tokens_total")
    newcomer = [sr(5, "completions", {"model": "m", "project": "big"}, {"tokens.input": 10_000})]
    more = [sr(5, "completions", {"model": "m", "project": "p2"}, {"tokens.input": 1})]
    after = samples(build(inp(day0 + newcomer + more, max_values=2)), "llm_tokens_total")
    for key, value in before.items():
        assert after[key] >= value, key  # type: ignore[operator]
    assert after[("openai", "main", "completions", "m", "p0", "input")] == 10
    assert after[("openai", "main", "completions", "m", "other", "input")] == 8 + 1 + 10_000


def test_budgets_see_projects_that_the_cardinality_guard_folds() -> None:
    from exporter.settings import BudgetSettings

    rows = [
        sr(
            22,
            "completions",
            {"model": "m", "project": f"p{i}"},
            {"tokens.input": 1_000_000 * (5 - i)},
        )
        for i in range(5)
    ]
    budget = BudgetSettings(name="small", selector={"project": "p4"}, period="month", limit_usd=100)
    fams = build(inp(rows, max_values=2, estimator=FakeEstimator(), budgets=[budget]))
    assert ("openai", "main", "completions", "m", "p4", "input") not in samples(
        fams, "llm_tokens_total"
    )
    assert samples(fams, "llm_budget_spent_usd")[("small",)] == Decimal("1.000000")


def test_a_budget_is_not_shown_as_zero_before_its_accounts_are_known() -> None:
    from exporter.settings import BudgetSettings

    budget = BudgetSettings(name="b", selector={"provider": "openai"}, limit_usd=10)
    h = Health()
    h.register("openai", "main", "completions", ("auth",), 2 * DAY)
    fresh = build(inp([], health=h, budgets=[budget]))  # empty state, no poll succeeded yet
    assert samples(fresh, "llm_budget_spent_usd") == {}
    h.success("openai", "main", "completions", 1.0, T0, None, 0)
    polled = build(inp([], health=h, budgets=[budget]))  # polled: the provider reports nothing
    assert samples(polled, "llm_budget_spent_usd") == {("b",): 0}


def test_daily_gauges_hold_each_days_exact_total_for_the_last_days() -> None:
    """A day's total sits on its own date, however late it arrived; only the window shows."""
    rows = [
        sr(20, "completions", {"model": "m", "project": "p"}, {"tokens.input": 7, "requests": 2}),
        sr(20, "completions", {"model": "m", "project": "q"}, {"tokens.input": 5, "requests": 1}),
        sr(21, "completions", {"model": "m", "project": "p"}, {"tokens.input": 11, "requests": 4}),
        sr(21, "costs", {"project": "p", "line_item": "m, input"}, {COST: Decimal("1.25")}),
        # 12 Oct: 42 days before "now" (23 Nov), past the 35 days exposed
        sr(-20, "completions", {"model": "m", "project": "p"}, {"tokens.input": 99}),
    ]
    fams = build(inp(rows, tz=ZoneInfo("UTC"), history_start=T0 - 40 * DAY))
    tokens = samples(fams, "llm_daily_tokens")
    assert tokens == {
        ("openai", "main", "p", "m", "input", "2026-11-21"): 7,
        ("openai", "main", "q", "m", "input", "2026-11-21"): 5,
        ("openai", "main", "p", "m", "input", "2026-11-22"): 11,
    }
    assert (
        samples(fams, "llm_daily_model_requests")[("openai", "main", "p", "m", "2026-11-22")] == 4
    )
    assert samples(fams, "llm_daily_cost_reported_usd") == {
        ("openai", "main", "p", "", "2026-11-22"): Decimal("1.25")
    }
    narrow = samples(
        render_model_days(rows, 1), "llm_daily_tokens"
    )  # one day: today (the 23rd) has no data
    assert narrow == {}


def render_model_days(rows: list[StoredRow], days: int) -> list[Family]:
    from exporter.aggregates import Aggregates
    from exporter.fold import FoldContext
    from exporter.model import RenderInput, render_model

    agg = Aggregates(FoldContext(ZoneInfo("UTC"), ("project",)), daily_days=days)
    agg.roll(NOW)
    agg.fold(rows)
    return render_model(
        agg, RenderInput(Health(), NOW, ZoneInfo("UTC"), ("project",), daily_days=days)
    )


def test_budget_matched_series_counts_what_the_selector_matches() -> None:
    """A selector with a typo or a regex that cannot match shows 0 (its spend would stay at
    $0 without a word); the count is over the usage and cost series, token types aside."""
    from exporter.settings import BudgetSettings

    rows = [
        sr(20, "completions", {"model": "m1", "project": "p"}, {"tokens.input": 10}),
        sr(21, "completions", {"model": "m1", "project": "p"}, {"tokens.output": 4}),
        sr(21, "completions", {"model": "m2", "project": "q"}, {"tokens.input": 3}),
        sr(21, "completions", {"model": "unknown", "project": "q"}, {"tokens.input": 2}),
        sr(21, "costs", {"project": "p", "line_item": "m1, input"}, {COST: Decimal("1.25")}),
    ]
    selectors: dict[str, dict[str, str]] = {
        "typo": {"provider": "opnai"},
        "never": {"model": "~claude-.*"},
        "apart": {"model": "m2", "project": "p"},
        "all": {},
        "openai": {"provider": "openai"},
        "m1": {"model": "m1"},
        "unpriced": {"model": "unknown"},
        "proj": {"project": "~p|x"},
    }
    budgets = [BudgetSettings(name=n, selector=s, limit_usd=10) for n, s in selectors.items()]
    fams = build(inp(rows, estimator=FakeEstimator(), budgets=budgets))
    assert samples(fams, "llm_budget_matched_series") == {
        ("typo",): 0,
        ("never",): 0,
        ("apart",): 0,
        # (completions m1 p), (completions m2 q), unpriced (unknown), reported cost (p)
        ("all",): 4,
        ("openai",): 4,
        ("m1",): 1,
        ("unpriced",): 1,
        ("proj",): 2,  # the estimated series of m1 in p, and p's reported cost
    }
    assert samples(fams, "llm_budget_spent_usd")[("typo",)] == 0
    body = render(fams).decode()
    assert "# TYPE llm_budget_matched_series gauge\n" in body
    assert 'llm_budget_matched_series{budget="typo"} 0\n' in body
    assert 'llm_budget_matched_series{budget="openai"} 4\n' in body


def test_budget_matched_series_is_not_shown_before_the_accounts_are_known() -> None:
    from exporter.settings import BudgetSettings

    budget = BudgetSettings(name="b", selector={"provider": "openai"}, limit_usd=10)
    h = Health()
    h.register("openai", "main", "completions", ("auth",), 2 * DAY)
    assert samples(build(inp([], health=h, budgets=[budget])), "llm_budget_matched_series") == {}
    h.success("openai", "main", "completions", 1.0, T0, None, 0)
    polled = build(inp([], health=h, budgets=[budget]))  # polled, nothing stored: no match
    assert samples(polled, "llm_budget_matched_series") == {("b",): 0}


def test_a_backfill_writes_the_budget_gauges_but_not_matched_series() -> None:
    """`for:` counts from live samples: a past count would add series and nothing else."""
    from exporter.aggregates import Aggregates
    from exporter.fold import FoldContext
    from exporter.model import RenderInput, history_families
    from exporter.settings import BudgetSettings

    budget = BudgetSettings(name="b", selector={"provider": "opnai"}, limit_usd=10)
    ctx = FoldContext(ZoneInfo("UTC"), ("project",), FakeEstimator(), [budget])
    agg = Aggregates(ctx, history_start=T0)
    agg.fold([sr(20, "completions", {"model": "m", "project": "p"}, {"tokens.input": 10})])
    inp = RenderInput(Health(), NOW, ZoneInfo("UTC"), ("project",), budgets=[budget])
    fams = history_families(agg, inp, {})
    assert samples(fams, "llm_budget_spent_usd") == {("b",): 0}
    assert samples(fams, "llm_budget_matched_series") == {}
