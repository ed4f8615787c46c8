"""The forecast's 80% band (exporter.forecast.forecast_band) and its place in a budget."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from exporter.budgets import ScopePart, evaluate
from exporter.forecast import BAND, forecast_band
from exporter.settings import BudgetSettings

UTC = ZoneInfo("UTC")


def test_band_scales_the_remaining_spend_only() -> None:
    spent, forecast = Decimal(100), Decimal(300)
    lower, upper = forecast_band(spent, forecast, Decimal("0.5"), "weekday")
    assert spent <= lower <= forecast <= upper
    # The band is spent + remaining x (q10, q90) at that elapsed fraction.
    for f, q10, q90 in BAND:
        lo, hi = forecast_band(spent, forecast, f, "weekday")
        assert lo == spent + 200 * q10 and hi == spent + 200 * q90


def test_band_closes_on_spend_at_period_end_and_without_remaining_spend() -> None:
    assert forecast_band(Decimal(50), Decimal(50), Decimal("0.99"), "weekday") == (
        Decimal(50),
        Decimal(50),
    )


def test_without_history_the_band_runs_from_spend_to_the_run_rate() -> None:
    lower, upper = forecast_band(Decimal(10), Decimal(10), Decimal("0.25"), "none")
    assert (lower, upper) == (Decimal(10), Decimal(40))


def test_evaluate_returns_the_band_around_the_forecast() -> None:
    now = dt.datetime(2026, 3, 10, 12, tzinfo=UTC)
    daily = {dt.date(2026, 1, 1) + dt.timedelta(days=i): Decimal(10) for i in range(68)}
    daily[now.date()] = Decimal(4)
    state = evaluate(
        BudgetSettings(name="b", limit_usd=500, basis="estimated"),
        now,
        UTC,
        [ScopePart(daily_estimated=daily)],
    )
    assert state.forecast_lower <= state.forecast <= state.forecast_upper
    assert state.forecast_lower > state.spent
    assert state.forecast_upper > state.forecast
