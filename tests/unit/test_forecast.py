"""Forecast: daily profile fit, period projection, exhaustion time."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.budgets import period_bounds
from exporter.forecast import (
    DailyProfile,
    Projection,
    exhaustion_time,
    fit_profile,
    forecast_period,
    local_midnight,
    median,
    project,
    trimmed_mean,
)

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
D = Decimal
TODAY = dt.date(2024, 5, 10)  # a Friday
NOON = dt.datetime(2024, 5, 10, 12, tzinfo=PARIS)
MAY = period_bounds("month", NOON, PARIS)


def series(last: dt.date, values: list[Decimal]) -> dict[dt.date, Decimal]:
    """`values` on consecutive days ending at `last`."""
    first = last - dt.timedelta(days=len(values) - 1)
    return {first + dt.timedelta(days=i): v for i, v in enumerate(values)}


def noisy(n: int, seed: int = 7, base: int = 100) -> list[Decimal]:
    """Deterministic daily spend around `base` (±20 %), in cents."""
    rng = random.Random(seed)
    return [D(rng.randint(base * 80, base * 120)) / 100 for _ in range(n)]


def month_forecast(history: dict[dt.date, Decimal], spent_today: Decimal) -> Projection:
    in_period = {d: v for d, v in history.items() if d >= MAY[0].date() and d < TODAY}
    in_period[TODAY] = spent_today
    return forecast_period(in_period, history, *MAY, NOON, PARIS)


# --- helpers -------------------------------------------------------------------------------


def test_median_and_trimmed_mean() -> None:
    assert median([]) == 0
    assert median([D(3), D(1), D(2)]) == 2
    assert median([D(4), D(1), D(2), D(3)]) == D("2.5")
    assert trimmed_mean([D(1), D(2)]) == D("1.5")
    assert trimmed_mean([D(1), D(2), D(100)]) == 2  # one dropped at each end
    values = [D(10)] * 26 + [D(1000), D(0)]
    assert trimmed_mean(values) == 10  # 28 values: 3 dropped at each end


# --- profile -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "method"), [(0, "none"), (3, "mean"), (10, "trimmed_mean"), (30, "weekday")]
)
def test_flat_history_forecast_is_exact_extrapolation(n: int, method: str) -> None:
    history = series(TODAY - dt.timedelta(days=1), [D(10)] * n)
    projection = month_forecast(history, D("4"))
    assert projection.profile.method == method
    spent = D(10) * min(n, 9) + 4  # 1..9 May plus today so far
    assert projection.spent == spent
    # Nothing to go on: the forecast is the spend so far, never a partial day extrapolated.
    expected = spent if n == 0 else spent + D("0.5") * 10 + 21 * 10
    assert projection.forecast == expected


def test_few_days_use_a_plain_mean() -> None:
    profile = fit_profile(series(TODAY - dt.timedelta(days=1), [D(10), D(20), D(60)]), TODAY)
    assert profile.method == "mean"
    assert profile.weekday_expected == (D(30),) * 7
    assert profile.days == 3


def test_missing_days_inside_history_count_as_zero() -> None:
    history = {TODAY - dt.timedelta(days=4): D(40), TODAY - dt.timedelta(days=1): D(20)}
    assert fit_profile(history, TODAY).weekday_expected == (D(15),) * 7


def test_days_from_today_on_are_ignored_by_the_fit() -> None:
    history = series(TODAY - dt.timedelta(days=1), [D(10)] * 5)
    spoiled = {**history, TODAY: D(999), TODAY + dt.timedelta(days=1): D(999)}
    assert fit_profile(spoiled, TODAY) == fit_profile(history, TODAY)


def test_weekday_profile_weekends_low() -> None:
    last = TODAY - dt.timedelta(days=1)
    history = {
        last - dt.timedelta(days=i): D(20)
        if (last - dt.timedelta(days=i)).weekday() >= 5
        else D(100)
        for i in range(56)
    }
    profile = fit_profile(history, TODAY)
    assert profile.method == "weekday"
    assert profile.weekday_expected == (D(100),) * 5 + (D(20),) * 2
    assert sum(profile.factors) == pytest.approx(7)
    assert profile.factors[0] > 1 > profile.factors[6]
    week = period_bounds("week", NOON, PARIS)
    projection = forecast_period({TODAY: D(50)}, history, *week, NOON, PARIS)
    # Friday half done, then a low Saturday and Sunday.
    assert projection.forecast - projection.spent == D(50) + D(20) + D(20)


def test_weekday_profile_follows_the_recent_level() -> None:
    # Eight weeks of weekday 100 / weekend 20, then the last four weeks at double.
    last = TODAY - dt.timedelta(days=1)
    history: dict[dt.date, Decimal] = {}
    for i in range(56):
        day = last - dt.timedelta(days=i)
        base = D(20) if day.weekday() >= 5 else D(100)
        history[day] = base * 2 if i < 28 else base
    profile = fit_profile(history, TODAY)
    # Weekday medians over 8 weeks sit half way (150 / 30); the recent level rescales them.
    assert abs(profile.expected(TODAY) - D(200)) <= D("1e-12")
    assert abs(profile.expected(TODAY + dt.timedelta(days=1)) - D(40)) <= D("1e-12")


# --- robustness to one spike ---------------------------------------------------------------


def test_one_spike_day_barely_moves_the_forecast() -> None:
    """A day at 30x normal spend, on any of the last 56 days, moves the expected rest of the
    month by < 2 % (days vary by ±20 %), where a plain mean of the last 28 days would move it
    by more than 100 %."""
    history = series(TODAY - dt.timedelta(days=1), noisy(56))
    base = month_forecast(history, D(0))
    rest_base = base.forecast - base.spent
    last28 = [d for d in history if d >= TODAY - dt.timedelta(days=28)]
    assert 30 * D(100) / len(last28) * 21 / rest_base > 1  # what a plain mean would do
    for age in range(1, 57):
        spike_day = TODAY - dt.timedelta(days=age)
        hit = month_forecast({**history, spike_day: history[spike_day] + 30 * D(100)}, D(0))
        rest_hit = hit.forecast - hit.spent
        assert abs(rest_hit - rest_base) / rest_base < D("0.02"), age
        # The spike itself is counted in spend so far when it is in this month.
        assert hit.spent - base.spent == (30 * D(100) if spike_day >= MAY[0].date() else 0)


def test_one_zero_day_outage_barely_moves_the_forecast() -> None:
    history = series(TODAY - dt.timedelta(days=1), noisy(56, seed=3))
    outage = {**history, TODAY - dt.timedelta(days=2): D(0)}
    a, b = month_forecast(history, D(0)), month_forecast(outage, D(0))
    assert abs((b.forecast - b.spent) - (a.forecast - a.spent)) / (a.forecast - a.spent) < D("0.02")


# --- today pro rata, DST -------------------------------------------------------------------


def test_rest_of_today_uses_real_length_of_a_dst_day() -> None:
    # 31 March 2024 in Paris lasts 23 h; at 12:00 CEST, 11 h have passed and 12 h remain.
    day = dt.date(2024, 3, 31)
    now = dt.datetime(2024, 3, 31, 12, tzinfo=PARIS)
    start, end = period_bounds("day", now, PARIS)
    profile = DailyProfile((D(23),) * 7, "mean", 3)
    projection = project({day: D(5)}, profile, start, end, now, PARIS)
    assert projection.spent == 5
    assert projection.forecast == D(5) + D(12)


def test_project_refuses_now_outside_the_period() -> None:
    profile = DailyProfile((D(1),) * 7, "mean", 1)
    with pytest.raises(ValueError, match="inside the period"):
        project({}, profile, *MAY, MAY[1], PARIS)
    with pytest.raises(ValueError, match="aware"):
        project({}, profile, *MAY, dt.datetime(2024, 5, 10), PARIS)


# --- exhaustion ----------------------------------------------------------------------------

MIDNIGHT = dt.datetime(2024, 3, 10, tzinfo=PARIS)


def flat_march(now: dt.datetime, spent_today: Decimal = Decimal(0)) -> Projection:
    history = series(now.date() - dt.timedelta(days=1), [D(10)] * 60)
    in_period = {d: v for d, v in history.items() if d >= dt.date(2024, 3, 1)}
    in_period[now.date()] = spent_today
    return forecast_period(in_period, history, *period_bounds("month", now, PARIS), now, PARIS)


def test_exhaustion_none_when_under_or_no_limit() -> None:
    projection = flat_march(MIDNIGHT)
    assert projection.forecast == D(310)
    assert exhaustion_time(projection, D("310.01")) is None
    assert exhaustion_time(projection, D(1000)) is None
    assert exhaustion_time(projection, None) is None
    # Reached exactly at the last instant of the period.
    assert exhaustion_time(projection, D(310)) == dt.datetime(2024, 4, 1, tzinfo=PARIS)


def test_exhaustion_exact_time_when_crossing() -> None:
    # 90 spent by 10 March 00:00, 10 a day: 125 is reached 3.5 days later.
    projection = flat_march(MIDNIGHT)
    assert projection.spent == D(90)
    assert exhaustion_time(projection, D(125)) == dt.datetime(2024, 3, 13, 12, tzinfo=PARIS)


def test_exhaustion_interpolates_in_real_time_on_a_dst_day() -> None:
    # At 30 March 00:00: 290 spent, 300 expected by 31 March. 305 is half of 31 March, a 23 h day: 11.5 h after midnight
    # CET, which is 12:30 CEST.
    projection = flat_march(dt.datetime(2024, 3, 30, tzinfo=PARIS))
    crossed = exhaustion_time(projection, D(305))
    assert crossed == dt.datetime(2024, 3, 31, 12, 30, tzinfo=PARIS)
    assert crossed.astimezone(UTC) == dt.datetime(2024, 3, 31, 10, 30, tzinfo=UTC)


def test_exhaustion_already_over_is_the_past_crossing_time() -> None:
    now = dt.datetime(2024, 3, 10, 18, tzinfo=PARIS)
    projection = flat_march(now, spent_today=D(9))
    assert projection.spent == D(99)
    # Crossed half way through 9 March.
    assert exhaustion_time(projection, D(85)) == dt.datetime(2024, 3, 9, 12, tzinfo=PARIS)
    # Crossed today: interpolated between midnight and now (18 h, 9 spent): 6 spent at 12:00.
    assert exhaustion_time(projection, D(96)) == dt.datetime(2024, 3, 10, 12, tzinfo=PARIS)


def test_zero_limit_is_reached_when_spend_starts() -> None:
    history = series(dt.date(2024, 3, 9), [D(10)] * 30)
    start, end = period_bounds("month", MIDNIGHT, PARIS)
    nothing = forecast_period({}, {}, start, end, MIDNIGHT, PARIS)
    assert exhaustion_time(nothing, D(0)) is None
    spending = forecast_period({}, history, start, end, MIDNIGHT, PARIS)
    assert exhaustion_time(spending, D(0)) == MIDNIGHT  # nothing yet, spend expected from now


# --- properties ----------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False)


@st.composite
def situations(draw: st.DrawFn) -> tuple[dict[dt.date, Decimal], dt.datetime, Decimal]:
    n = draw(st.integers(min_value=0, max_value=70))
    values = draw(st.lists(amounts, min_size=n, max_size=n))
    now = dt.datetime(2024, 5, 1, tzinfo=PARIS) + dt.timedelta(
        minutes=draw(st.integers(min_value=0, max_value=31 * 24 * 60 - 61))
    )
    today = now.astimezone(PARIS).date()
    history = series(today - dt.timedelta(days=1), values) if values else {}
    return history, now, draw(amounts)


def run(history: dict[dt.date, Decimal], now: dt.datetime, today_spend: Decimal) -> Projection:
    start, end = period_bounds("month", now, PARIS)
    today = now.astimezone(PARIS).date()
    in_period = {d: v for d, v in history.items() if d >= start.date()}
    in_period[today] = today_spend
    return forecast_period(in_period, history, start, end, now, PARIS)


@settings(max_examples=80, deadline=None)
@given(situations())
def test_forecast_at_least_spent_and_decimal_only(
    case: tuple[dict[dt.date, Decimal], dt.datetime, Decimal],
) -> None:
    projection = run(*case)
    assert projection.forecast >= projection.spent
    assert isinstance(projection.forecast, Decimal)
    assert isinstance(projection.spent, Decimal)
    assert all(isinstance(c, Decimal) and c.is_finite() for _, c in projection.knots)
    assert all(isinstance(e, Decimal) for e in projection.profile.weekday_expected)
    times = [t for t, _ in projection.knots]
    assert times == sorted(times)
    assert times[0] == MAY[0] and times[-1] == MAY[1]


@settings(max_examples=60, deadline=None)
@given(situations(), amounts)
def test_forecast_monotonic_in_spend_so_far(
    case: tuple[dict[dt.date, Decimal], dt.datetime, Decimal], extra: Decimal
) -> None:
    history, now, today_spend = case
    base = run(history, now, today_spend)
    more = run(history, now, today_spend + extra)
    assert more.forecast - base.forecast == extra
    # A past day of the period revised upward, with the profile's history held fixed.
    start, end = period_bounds("month", now, PARIS)
    first = start.date()
    in_period = {first: D(5), now.astimezone(PARIS).date(): today_spend}
    if first < now.astimezone(PARIS).date():
        a = forecast_period(in_period, history, start, end, now, PARIS)
        b = forecast_period({**in_period, first: D(5) + extra}, history, start, end, now, PARIS)
        assert b.forecast - a.forecast == extra


@settings(max_examples=60, deadline=None)
@given(situations(), st.integers(min_value=1, max_value=10))
def test_more_history_spend_never_lowers_the_forecast(
    case: tuple[dict[dt.date, Decimal], dt.datetime, Decimal], factor: int
) -> None:
    history, now, today_spend = case
    scaled = {d: v * factor for d, v in history.items()}
    assert run(scaled, now, today_spend).forecast >= run(history, now, today_spend).forecast


@settings(max_examples=60, deadline=None)
@given(situations(), amounts)
def test_exhaustion_consistent_with_forecast(
    case: tuple[dict[dt.date, Decimal], dt.datetime, Decimal], limit: Decimal
) -> None:
    projection = run(*case)
    crossed = exhaustion_time(projection, limit)
    if limit > 0:
        # Non-negative spend makes the path non-decreasing: reached iff the forecast gets there.
        assert (crossed is not None) == (projection.forecast >= limit)
        if crossed is not None:
            assert MAY[0] <= crossed <= MAY[1]
            if projection.spent >= limit:
                assert crossed <= projection.now
            else:
                assert crossed >= projection.now


def test_deterministic_regardless_of_input_order() -> None:
    history = series(TODAY - dt.timedelta(days=1), noisy(56, seed=11))
    shuffled = dict(sorted(history.items(), key=lambda kv: kv[1]))
    assert month_forecast(history, D(3)) == month_forecast(shuffled, D(3))


def test_local_midnight_is_normalised() -> None:
    tz = ZoneInfo("America/Santiago")
    assert local_midnight(dt.date(2024, 9, 8), tz).hour == 1
    assert local_midnight(dt.date(2024, 9, 9), tz).hour == 0
