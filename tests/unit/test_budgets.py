"""Budgets: calendar periods in a time zone, selectors, spend basis, evaluated state."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.budgets import (
    ScopePart,
    Selector,
    compile_selector,
    daily_spend,
    evaluate,
    matched_series,
    matches,
    part_spend,
    period_bounds,
    spent_ratio,
)
from exporter.settings import BudgetSettings

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
LA = ZoneInfo("America/Los_Angeles")
D = Decimal


def length(bounds: tuple[dt.datetime, dt.datetime]) -> dt.timedelta:
    start, end = bounds
    return end.astimezone(UTC) - start.astimezone(UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def days(first: dt.date, n: int, value: Decimal) -> dict[dt.date, Decimal]:
    return {first + dt.timedelta(days=i): value for i in range(n)}


# --- periods -------------------------------------------------------------------------------


def test_month_boundary_paris() -> None:
    # 2024-03-31 23:30 in Paris is 21:30 UTC: still March there, though UTC says the same day.
    start, end = period_bounds("month", utc(2024, 3, 31, 21, 30), PARIS)
    assert start == dt.datetime(2024, 3, 1, tzinfo=PARIS)
    assert end == dt.datetime(2024, 4, 1, tzinfo=PARIS)
    assert start.astimezone(UTC) == utc(2024, 2, 29, 23)
    assert end.astimezone(UTC) == utc(2024, 3, 31, 22)  # CEST from 31 March
    assert length((start, end)) == dt.timedelta(days=31, hours=-1)
    # Half an hour later (00:30 on 1 April in Paris) it is April, though UTC still says March.
    start, end = period_bounds("month", utc(2024, 3, 31, 22, 30), PARIS)
    assert start == dt.datetime(2024, 4, 1, tzinfo=PARIS)
    assert end == dt.datetime(2024, 5, 1, tzinfo=PARIS)


def test_month_boundary_los_angeles() -> None:
    # 2024-11-01 06:30 UTC is 23:30 PDT on 31 October.
    start, end = period_bounds("month", utc(2024, 11, 1, 6, 30), LA)
    assert (start, end) == (
        dt.datetime(2024, 10, 1, tzinfo=LA),
        dt.datetime(2024, 11, 1, tzinfo=LA),
    )
    start, end = period_bounds("month", utc(2024, 11, 1, 7), LA)  # exactly midnight PDT
    assert start == dt.datetime(2024, 11, 1, tzinfo=LA)
    assert end.astimezone(UTC) == utc(2024, 12, 1, 8)  # PST
    assert length((start, end)) == dt.timedelta(days=30, hours=1)


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (PARIS, dt.date(2024, 3, 31), 23),
        (PARIS, dt.date(2024, 10, 27), 25),
        (LA, dt.date(2024, 3, 10), 23),
        (LA, dt.date(2024, 11, 3), 25),
        (PARIS, dt.date(2024, 6, 15), 24),
    ],
)
def test_dst_day_length(tz: ZoneInfo, day: dt.date, hours: int) -> None:
    for hour in (0, 5, 12, 23):
        now = dt.datetime.combine(day, dt.time(hour), tzinfo=tz)
        start, end = period_bounds("day", now, tz)
        assert start == dt.datetime.combine(day, dt.time(), tzinfo=tz)
        assert length((start, end)) == dt.timedelta(hours=hours)


def test_day_whose_midnight_does_not_exist() -> None:
    # Chile starts DST at midnight: 2024-09-08 begins at 01:00 local.
    tz = ZoneInfo("America/Santiago")
    start, end = period_bounds("day", dt.datetime(2024, 9, 8, 12, tzinfo=tz), tz)
    assert start.hour == 1
    assert start.utcoffset() == dt.timedelta(hours=-3)
    assert length((start, end)) == dt.timedelta(hours=23)


def test_week_is_iso_monday_to_monday() -> None:
    sunday = dt.datetime(2024, 3, 31, 23, 59, tzinfo=PARIS)
    start, end = period_bounds("week", sunday, PARIS)
    assert start == dt.datetime(2024, 3, 25, tzinfo=PARIS)
    assert start.weekday() == 0
    assert end == dt.datetime(2024, 4, 1, tzinfo=PARIS)
    assert length((start, end)) == dt.timedelta(days=7, hours=-1)
    monday = dt.datetime(2024, 4, 1, tzinfo=PARIS)
    assert period_bounds("week", monday, PARIS)[0] == monday
    # A week spanning a year end.
    start, end = period_bounds("week", dt.datetime(2025, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))
    assert (start.date(), end.date()) == (dt.date(2024, 12, 30), dt.date(2025, 1, 6))


@pytest.mark.parametrize(
    ("now", "first", "after"),
    [
        (dt.datetime(2024, 5, 15, 12), dt.date(2024, 4, 1), dt.date(2024, 7, 1)),
        (dt.datetime(2024, 12, 31, 23, 59), dt.date(2024, 10, 1), dt.date(2025, 1, 1)),
        (dt.datetime(2025, 1, 1), dt.date(2025, 1, 1), dt.date(2025, 4, 1)),
        (dt.datetime(2024, 9, 30, 23), dt.date(2024, 7, 1), dt.date(2024, 10, 1)),
    ],
)
def test_quarter(now: dt.datetime, first: dt.date, after: dt.date) -> None:
    start, end = period_bounds("quarter", now.replace(tzinfo=LA), LA)
    assert (start, end) == (
        dt.datetime.combine(first, dt.time(), tzinfo=LA),
        dt.datetime.combine(after, dt.time(), tzinfo=LA),
    )


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        period_bounds("month", dt.datetime(2024, 1, 1), PARIS)


@given(
    now=st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    period=st.sampled_from(["day", "week", "month", "quarter"]),
    tz=st.sampled_from([PARIS, LA, ZoneInfo("UTC"), ZoneInfo("Asia/Kolkata")]),
)
def test_periods_tile_time(now: dt.datetime, period: str, tz: ZoneInfo) -> None:
    start, end = period_bounds(period, now, tz)  # type: ignore[arg-type]
    assert start <= now < end
    assert start.astimezone(tz).time() == dt.time() == end.astimezone(tz).time()
    assert period_bounds(period, end, tz)[0] == end  # type: ignore[arg-type]
    assert period_bounds(period, end - dt.timedelta(microseconds=1), tz) == (start, end)  # type: ignore[arg-type]


# --- selectors -----------------------------------------------------------------------------


def test_selector_equality_and_regex() -> None:
    sel = compile_selector({"provider": "openai", "project": "~prod-.*"})
    assert isinstance(sel, Selector)
    assert sel.matches({"provider": "openai", "project": "prod-eu", "model": "gpt-4o"})
    assert not sel.matches({"provider": "anthropic", "project": "prod-eu"})
    assert not sel.matches({"provider": "openai", "project": "preprod-eu"})  # anchored start
    assert not sel.matches({"provider": "openai", "project": "prod"})  # anchored: needs "-"
    assert not sel.matches({"provider": "openai2", "project": "prod-eu"})  # equality is exact


def test_regex_is_anchored_at_both_ends() -> None:
    assert not matches({"model": "~gpt-4o"}, {"model": "gpt-4o-mini"})
    assert matches({"model": "~gpt-4o(-mini)?"}, {"model": "gpt-4o-mini"})


def test_missing_label_is_empty_string() -> None:
    assert matches({"project": ""}, {"provider": "groq"})
    assert not matches({"project": "p1"}, {"provider": "groq"})
    assert matches({"project": "~.*"}, {})
    assert not matches({"project": "~.+"}, {})
    assert not matches({"project": "~prod-.*"}, {})


def test_empty_selector_matches_everything() -> None:
    assert matches({}, {})
    assert matches({}, {"provider": "openai", "model": "x"})


def test_matched_series_counts_the_label_sets_in_scope() -> None:
    series = [
        {"provider": "openai", "account": "main", "model": "gpt-4o", "project": "p"},
        {"provider": "openai", "account": "main", "model": "gpt-4o-mini", "project": "q"},
        {"provider": "anthropic", "account": "main", "model": "claude-x"},
    ]
    assert matched_series({}, series) == 3
    assert matched_series({"provider": "openai"}, series) == 2
    assert matched_series(compile_selector({"model": "~gpt-4o.*"}), series) == 2
    assert matched_series({"provider": "opnai"}, series) == 0  # a typo
    assert matched_series({"model": "~opnai"}, series) == 0  # a regex nothing fits
    assert matched_series({"provider": "anthropic", "project": "p"}, series) == 0
    assert matched_series({"provider": "openai"}, []) == 0


def test_unknown_selector_label_is_refused_with_the_budget_and_the_valid_labels() -> None:
    with pytest.raises(ValueError, match=r"modell: unknown label\(s\) \['modell'\] in the "
                       r"selector of budget 'b'; choose from \['provider', 'account'"):  # fmt: skip
        BudgetSettings(name="b", selector={"modell": "x"})
    for label in ("provider", "account", "operation", "model", "project", "user", "api_key"):
        assert BudgetSettings(name="b", selector={label: "x"}).selector == {label: "x"}


def test_invalid_regex_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"selector\.project.*invalid regex"):
        compile_selector({"provider": "openai", "project": "~prod-(.*"})


def test_compiled_selector_is_reusable() -> None:
    sel = compile_selector({"account": "~a|b"})
    assert [matches(sel, {"account": a}) for a in ("a", "b", "ab", "")] == [
        True,
        True,
        False,
        False,
    ]


# --- basis ---------------------------------------------------------------------------------

DAY1, DAY2, DAY3, DAY4 = (dt.date(2024, 5, d) for d in (1, 2, 3, 4))
PART = ScopePart(
    daily_reported={DAY1: D("10"), DAY2: D("12"), DAY3: D("3")},
    daily_estimated={DAY1: D("11"), DAY2: D("9"), DAY3: D("8"), DAY4: D("5")},
    reported_through=DAY3,
    unpriced_tokens=1000,
)


def test_reported_and_estimated_bases() -> None:
    assert part_spend(PART, "reported") == PART.daily_reported
    assert part_spend(PART, "estimated") == PART.daily_estimated


def test_blended_switches_at_reported_through() -> None:
    blended = part_spend(PART, "blended")
    # Closed days: the invoice wins, whether the estimate was higher (day 1) or lower (day 2).
    assert blended[DAY1] == D("10")
    assert blended[DAY2] == D("12")
    # Open days: the larger of the partial reported cost and the estimate.
    assert blended[DAY3] == D("8")
    assert blended[DAY4] == D("5")
    # Moving the watermark one day later closes day 3 on its reported value.
    later = ScopePart(PART.daily_reported, PART.daily_estimated, reported_through=DAY4)
    assert part_spend(later, "blended")[DAY3] == D("3")


def test_blended_open_day_keeps_a_reported_line_item_the_estimate_lacks() -> None:
    part = ScopePart({DAY3: D("7")}, {DAY3: D("5")}, reported_through=DAY3)
    assert part_spend(part, "blended")[DAY3] == D("7")


def test_blended_without_cost_api_is_all_estimated() -> None:
    groq = ScopePart(daily_estimated={DAY1: D("2"), DAY2: D("4")}, reported_through=None)
    assert part_spend(groq, "blended") == {DAY1: D("2"), DAY2: D("4")}
    assert part_spend(groq, "reported") == {}


def test_parts_are_blended_separately_then_summed() -> None:
    groq = ScopePart(daily_estimated={DAY1: D("2"), DAY2: D("4")})
    total = daily_spend([PART, groq], "blended")
    assert total == {DAY1: D("12"), DAY2: D("16"), DAY3: D("8"), DAY4: D("5")}
    assert daily_spend([], "blended") == {}


# --- ratio and evaluation --------------------------------------------------------------------


def test_ratio_definitions() -> None:
    assert spent_ratio(D("50"), None) is None
    assert spent_ratio(D("50"), D("200")) == D("0.25")
    assert spent_ratio(D("300"), D("200")) == D("1.5")
    assert spent_ratio(D("0"), D("0")) == 0
    assert spent_ratio(D("-3"), D("0")) == 0
    assert spent_ratio(D("0.01"), D("0")) == 1


@given(
    spent=st.decimals(min_value=-(10**6), max_value=10**9, places=6, allow_nan=False),
    limit=st.one_of(st.none(), st.decimals(min_value=0, max_value=10**9, places=2)),
)
def test_ratio_is_never_inf_or_nan(spent: Decimal, limit: Decimal | None) -> None:
    ratio = spent_ratio(spent, limit)
    assert (ratio is None) == (limit is None)
    if ratio is not None:
        assert isinstance(ratio, Decimal)
        assert ratio.is_finite()


NOW = dt.datetime(2024, 5, 10, 12, tzinfo=PARIS)  # a Friday, noon


def flat_part(value: str = "10", unpriced: int = 0) -> ScopePart:
    history = days(dt.date(2024, 3, 1), 71, D(value))  # 1 March .. 9 May
    history[dt.date(2024, 5, 10)] = D(value) / 2  # half of today so far
    return ScopePart(daily_estimated=history, unpriced_tokens=unpriced)


def test_evaluate_month_budget() -> None:
    budget = BudgetSettings(name="team-a", limit_usd=250, thresholds=[0.5, 0.2, 0.8])
    state = evaluate(budget, NOW, PARIS, [flat_part()])
    assert state.period_start == dt.datetime(2024, 5, 1, tzinfo=PARIS)
    assert state.period_end == dt.datetime(2024, 6, 1, tzinfo=PARIS)
    assert state.limit == D("250")
    assert state.spent == D("95")  # 9 days of 10 + half of today
    assert state.ratio == D("0.38")
    assert state.thresholds_crossed == (0.2,)
    # Flat spend: the rest of today and 21 more days at 10 a day.
    assert state.forecast == D("310")
    # 250 is reached 15.5 days after noon today: 26 May, midnight.
    assert state.exhaustion == dt.datetime(2024, 5, 26, tzinfo=PARIS)
    assert state.forecast_method == "weekday"
    assert state.history_days == 56


def test_budget_without_limit_still_has_spent_and_forecast() -> None:
    state = evaluate(BudgetSettings(name="all"), NOW, PARIS, [flat_part()])
    assert state.limit is None
    assert state.ratio is None
    assert state.exhaustion is None
    assert state.thresholds_crossed == ()
    assert state.spent == D("95")
    assert state.forecast == D("310")


def test_unknown_spend_is_visible_not_zero() -> None:
    state = evaluate(
        BudgetSettings(name="b", limit_usd=100),
        NOW,
        PARIS,
        [flat_part(unpriced=1500), ScopePart(unpriced_tokens=2500)],
    )
    assert state.unpriced_tokens == 4000
    assert state.spent == D("95")  # unpriced tokens add no invented cost
    only_unpriced = evaluate(
        BudgetSettings(name="b", limit_usd=100), NOW, PARIS, [ScopePart(unpriced_tokens=7)]
    )
    assert only_unpriced.unpriced_tokens == 7
    assert only_unpriced.spent == 0
    assert only_unpriced.forecast == 0


def test_limit_float_becomes_exact_decimal() -> None:
    state = evaluate(BudgetSettings(name="b", limit_usd=0.1), NOW, PARIS, [])
    assert state.limit == D("0.1")
    assert state.ratio == 0


def test_zero_limit_with_spend_is_over_not_infinite() -> None:
    state = evaluate(BudgetSettings(name="b", limit_usd=0), NOW, PARIS, [flat_part()])
    assert state.ratio == 1
    assert state.thresholds_crossed == (0.5, 0.8, 0.9, 1.0)
    # Spend became positive at the very start of the month.
    assert state.exhaustion == state.period_start


def test_evaluate_uses_basis_and_explicit_history() -> None:
    today = NOW.date()
    part = ScopePart(
        daily_reported={today - dt.timedelta(days=1): D("40")},
        daily_estimated={today - dt.timedelta(days=1): D("30"), today: D("6")},
        reported_through=today,
    )
    day_budget = BudgetSettings(name="d", period="day", limit_usd=100)
    state = evaluate(day_budget, NOW, PARIS, [part])
    assert state.spent == D("6")
    # History is one day (yesterday, reported 40): the rest of today expects half of 40.
    assert state.forecast == D("26")
    override = {today - dt.timedelta(days=i): D("20") for i in range(1, 15)}
    state = evaluate(day_budget, NOW, PARIS, [part], history=override)
    assert state.forecast == D("16")
    assert state.forecast_method == "trimmed_mean"
    est = evaluate(day_budget.model_copy(update={"basis": "estimated"}), NOW, PARIS, [part])
    assert est.forecast == D("21")


def test_threshold_crossing_is_exact_at_the_boundary() -> None:
    part = ScopePart(daily_estimated={NOW.date(): D("80")})
    budget = BudgetSettings(name="b", period="day", limit_usd=100, thresholds=[0.8, 0.9])
    assert evaluate(budget, NOW, PARIS, [part]).thresholds_crossed == (0.8,)
