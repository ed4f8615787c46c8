"""Budgets: calendar periods, label selectors, spend basis, and the evaluated budget state.

Pure functions: the metric model reads daily spend series from the ledger and passes them in;
nothing here touches HTTP, SQLite or Prometheus. Money is Decimal throughout.

Spend basis (`BudgetSettings.basis`), computed per scope part then summed:

- `reported`: the provider-reported cost only (a provider with no cost API
  contributes nothing: use `estimated` or `blended` for it).
- `estimated`: the estimated cost (tokens x prices) only.
- `blended` (default): for each day before the part's `reported_through` (the first day the
  provider has not closed on the cost side), the reported cost; for every later day, the
  larger of reported and estimated. Estimated usually leads (reported cost lags by hours to a
  day), and taking the larger on open days means neither a partially reported day nor an
  estimate missing a line item makes a budget look emptier than it is.
  `reported_through=None` means nothing is reported closed, so blended is the estimate for every
  day (pass it for providers with no cost API).

A scope is a list of `ScopePart`s, one per source with its own cost watermark (normally one
per provider account), each with its own series; the basis is applied per part, then the
parts are summed by day. Dates are calendar days in the configured time zone.

Unpriced tokens are passed through untouched: spend the budget cannot see is reported as a
count beside it, never converted to zero cost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from exporter.forecast import (
    DECIMAL_CONTEXT,
    ZERO,
    DailyProfile,
    Method,
    exhaustion_time,
    fit_profile,
    forecast_band,
    local_midnight,
    project,
)
from exporter.selectors import Selector, compile_selector

if TYPE_CHECKING:
    from exporter.schema import BudgetSettings


Period = Literal["day", "week", "month", "quarter"]
Basis = Literal["reported", "estimated", "blended"]


# --- periods -------------------------------------------------------------------------------


def period_bounds(
    period: Period, now: dt.datetime, tz: ZoneInfo
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the calendar period holding `now`, as local midnights in `tz`.

    Weeks start on Monday (ISO), quarters in January, April, July and October. Bounds are
    computed on local dates, so a period holding a DST change is 1 hour shorter or longer.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    today = now.astimezone(tz).date()
    if period == "day":
        first = today
        after = today + dt.timedelta(days=1)
    elif period == "week":
        first = today - dt.timedelta(days=today.weekday())
        after = first + dt.timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = _add_months(first, 1)
    elif period == "quarter":
        first = today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1)
        after = _add_months(first, 3)
    else:
        raise ValueError(f"unknown period {period!r}")
    return local_midnight(first, tz), local_midnight(after, tz)


def _add_months(first_of_month: dt.date, months: int) -> dt.date:
    index = first_of_month.year * 12 + first_of_month.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


# --- selectors -----------------------------------------------------------------------------


def matches(selector: Mapping[str, str] | Selector, labels: Mapping[str, str]) -> bool:
    """Whether `labels` fall in the budget scope; a label missing from `labels` is ""."""
    compiled = selector if isinstance(selector, Selector) else compile_selector(selector)
    return compiled.matches(labels)


def matched_series(
    selector: Mapping[str, str] | Selector, series: Iterable[Mapping[str, str]]
) -> int:
    """How many of `series` (distinct label sets) fall in the budget scope: 0 means the
    selector names a value nothing carries (a typo, a regex that cannot match)."""
    compiled = selector if isinstance(selector, Selector) else compile_selector(selector)
    return sum(1 for labels in series if compiled.matches(labels))


# --- spend basis ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScopePart:
    """One source's share of a budget scope, with its own cost watermark.

    `reported_through` is the first local date the provider has not closed on the cost side
    (days before it are final); None means nothing is reported closed (no cost API, or no cost
    data yet). Series should cover the budget period and, for the forecast, the 56 days before
    today; a missing day is zero spend.
    """

    daily_reported: Mapping[dt.date, Decimal] = field(default_factory=dict)
    daily_estimated: Mapping[dt.date, Decimal] = field(default_factory=dict)
    reported_through: dt.date | None = None
    unpriced_tokens: int = 0  # tokens in the period with no known price (unknown spend)


def part_spend(part: ScopePart, basis: Basis) -> dict[dt.date, Decimal]:
    """Daily spend of one part on `basis`."""
    if basis == "reported":
        return dict(part.daily_reported)
    if basis == "estimated":
        return dict(part.daily_estimated)
    if basis != "blended":
        raise ValueError(f"unknown basis {basis!r}")
    out: dict[dt.date, Decimal] = {}
    for day in part.daily_reported.keys() | part.daily_estimated.keys():
        reported = part.daily_reported.get(day, ZERO)
        if part.reported_through is not None and day < part.reported_through:
            out[day] = reported
        else:
            out[day] = max(reported, part.daily_estimated.get(day, ZERO))
    return out


def daily_spend(parts: Sequence[ScopePart], basis: Basis) -> dict[dt.date, Decimal]:
    """Daily spend of a whole scope: the basis applied per part, then summed by day."""
    total: dict[dt.date, Decimal] = {}
    for part in parts:
        for day, amount in part_spend(part, basis).items():
            total[day] = total.get(day, ZERO) + amount
    return total


# --- evaluation ----------------------------------------------------------------------------


def spent_ratio(spent: Decimal, limit: Decimal | None) -> Decimal | None:
    """spent / limit; None without a limit. Never Inf or NaN.

    A zero limit allows no spend: the ratio is 0 while nothing (or a net credit) is spent, and
    exactly 1 once anything is, so every threshold up to 1 fires.
    """
    if limit is None:
        return None
    if limit == 0:
        return Decimal(1) if spent > 0 else ZERO
    with localcontext(DECIMAL_CONTEXT):
        return spent / limit


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's current period, ready for the `llm_budget_*` gauges."""

    name: str
    period: Period
    basis: Basis
    period_start: dt.datetime
    period_end: dt.datetime
    limit: Decimal | None  # None: no limit (llm_budget_limit_usd absent)
    spent: Decimal  # period to date
    ratio: Decimal | None  # spent / limit; None without a limit
    forecast: Decimal  # expected spend at period end, >= spent when spend is non-negative
    forecast_lower: Decimal  # 80% band of period-end spend (exporter.forecast.forecast_band)
    forecast_upper: Decimal
    exhaustion: dt.datetime | None  # when the forecast path reaches the limit; may be past
    unpriced_tokens: int  # spend the budget cannot see
    thresholds_crossed: tuple[float, ...]  # configured thresholds with ratio >= threshold
    forecast_method: Method
    history_days: int  # complete days of history the forecast profile used


def evaluate(
    budget: BudgetSettings,
    now: dt.datetime,
    tz: ZoneInfo,
    parts: Sequence[ScopePart],
    history: Mapping[dt.date, Decimal] | None = None,
) -> BudgetState:
    """Evaluate `budget` at `now` over the scope `parts` (already selected by its selector).

    The forecast profile is fitted on the parts' own daily spend (same basis) before today,
    unless `history` (daily spend on the budget's basis) is given to replace it.
    """
    start, end = period_bounds(budget.period, now, tz)
    today = now.astimezone(tz).date()
    first = start.astimezone(tz).date()
    spend = daily_spend(parts, budget.basis)
    in_period = {d: v for d, v in spend.items() if first <= d <= today}
    past = spend if history is None else history
    profile: DailyProfile = fit_profile({d: v for d, v in past.items() if d < today}, today)
    path = project(in_period, profile, start, end, now, tz)
    limit = None if budget.limit_usd is None else Decimal(str(budget.limit_usd))
    ratio = spent_ratio(path.spent, limit)
    with localcontext(DECIMAL_CONTEXT):
        us = dt.timedelta(microseconds=1)
        utc_start = start.astimezone(dt.UTC)
        elapsed = Decimal((now.astimezone(dt.UTC) - utc_start) // us) / Decimal(
            (end.astimezone(dt.UTC) - utc_start) // us
        )
    lower, upper = forecast_band(path.spent, path.forecast, elapsed, profile.method)
    crossed = tuple(
        t for t in sorted(budget.thresholds) if ratio is not None and ratio >= Decimal(str(t))
    )
    return BudgetState(
        name=budget.name,
        period=budget.period,
        basis=budget.basis,
        period_start=start,
        period_end=end,
        limit=limit,
        spent=path.spent,
        ratio=ratio,
        forecast=path.forecast,
        forecast_lower=lower,
        forecast_upper=upper,
        exhaustion=exhaustion_time(path, limit),
        unpriced_tokens=sum(p.unpriced_tokens for p in parts),
        thresholds_crossed=crossed,
        forecast_method=profile.method,
        history_days=profile.days,
    )
