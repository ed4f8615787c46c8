"""Period-end spend forecast and budget exhaustion time: pure, deterministic, Decimal only.

Method (README-ready):

- A *daily profile* is fitted on complete calendar days (in the configured time zone) before
  today, looking back at most `PROFILE_DAYS` (56) days. Days inside that window with no data
  count as zero spend; the window never starts before the first day the series has.
  - 0 days of history: every future day is expected to cost 0, so the forecast is the spend
    so far (nothing is invented from a partial day).
  - 1-6 days: the plain mean of those days.
  - 7-20 days: a trimmed mean (10 % cut at each end, at least one day) of the last 28 days.
  - 21+ days (three of each weekday): a weekday profile. For each weekday, the median of that
    weekday over the last 8 weeks (m_w); then a level s = trimmed mean over the last 28 days
    of each day's spend divided by its weekday's median. A day is expected to cost s x m_w.
    Medians and the trimmed mean make one spike day (or one outage day) nearly irrelevant;
    s follows the recent level, m_w gives the weekly shape (weekends low).
  Expected daily spend is never negative (credits are not forecast).
- The current day is completed pro rata by time: expected today = spent today + (1 - f) x
  expected(today), where f is the elapsed fraction of today (a 23 or 25 hour DST day counts its
  real length). This is the pro-rata run rate weighted by f, blended with the profile's
  expectation weighted by 1 - f: early in the day the profile dominates, late in the day the
  actual spend does, and a partial day is never extrapolated alone.
- Forecast = spend so far in the period + expected rest of today + expected spend of each
  remaining day of the period.
- The cumulative spend path (actual days, then the expectation) is linear within each day, so
  the budget exhaustion time is found by linear interpolation inside the day that crosses the
  limit. A limit already crossed gives a time in the past (interpolated inside the day it was
  crossed; today: between midnight and now). A limit not reached by the end of the period
  gives None (the metric is then absent, never +Inf).
- Confidence band (`forecast_band`): an 80% interval around the forecast, from backtested
  errors. What is uncertain is only the spend still to come, so the band scales the expected
  remaining spend (forecast - spent) by the 10th and 90th percentiles of actual / expected
  remaining spend, measured by `bench/forecast_backtest.py --calibrate` at that elapsed
  fraction of the period (table `BAND`, interpolated linearly). The band narrows to the spend
  so far as the period ends. It was measured on month periods with at least two months of
  history, over steady, weekly, growing and spiky synthetic series; day and week periods use
  the same table by elapsed fraction. Without history (method "none") nothing is expected, so
  the band runs from the spend so far (lower) to the naive run rate (upper).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

ZERO = Decimal(0)
ONE = Decimal(1)
PROFILE_DAYS = 56  # weekday medians: up to 8 samples of each weekday
LEVEL_DAYS = 28  # the level follows the last 4 weeks
MIN_ROBUST_DAYS = 7  # below this, a plain mean (too few days to trim)
MIN_WEEKDAY_DAYS = 21  # three of each weekday, so a weekday median ignores one spike
_US = dt.timedelta(microseconds=1)
QUANTUM = Decimal("1e-12")  # expected amounts are rounded to this (USD); spend is exact
_QUANTIZE_BELOW = Decimal("1e14")  # beyond this a 28-digit quantize would overflow

# Every computation runs in this context, whatever the caller's thread context is, so the
# same inputs always give the same Decimal results.
DECIMAL_CONTEXT = Context(prec=28, rounding=ROUND_HALF_EVEN)

Method = Literal["none", "mean", "trimmed_mean", "weekday"]

# (elapsed fraction of the period, q10, q90) of actual / expected remaining spend, from
# `python bench/forecast_backtest.py --calibrate` (calibration seeds, all scenarios).
BAND: tuple[tuple[Decimal, Decimal, Decimal], ...] = (
    (Decimal("0.016"), Decimal("0.984"), Decimal("1.412")),
    (Decimal("0.049"), Decimal("0.981"), Decimal("1.415")),
    (Decimal("0.082"), Decimal("0.978"), Decimal("1.413")),
    (Decimal("0.147"), Decimal("0.982"), Decimal("1.412")),
    (Decimal("0.213"), Decimal("0.980"), Decimal("1.444")),
    (Decimal("0.311"), Decimal("0.974"), Decimal("1.461")),
    (Decimal("0.442"), Decimal("0.973"), Decimal("1.481")),
    (Decimal("0.573"), Decimal("0.967"), Decimal("1.559")),
    (Decimal("0.672"), Decimal("0.962"), Decimal("1.385")),
    (Decimal("0.803"), Decimal("0.956"), Decimal("1.276")),
    (Decimal("0.901"), Decimal("0.932"), Decimal("1.277")),
)


def local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    """First instant of `day` in `tz`, normalised (a midnight skipped by DST maps to the
    transition, e.g. 01:00)."""
    naive_midnight = dt.datetime.combine(day, dt.time(), tzinfo=tz)
    return naive_midnight.astimezone(dt.UTC).astimezone(tz)


def _quantize(amount: Decimal) -> Decimal:
    """Round an expected amount to 1e-12 USD, so that adding it to spend is exact."""
    if abs(amount) >= _QUANTIZE_BELOW:
        return amount
    return amount.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def _elapsed(a: dt.datetime, b: dt.datetime) -> dt.timedelta:
    """b - a in real time: aware datetimes sharing a tzinfo subtract as wall clock otherwise."""
    return b.astimezone(dt.UTC) - a.astimezone(dt.UTC)


def mean(values: Iterable[Decimal]) -> Decimal:
    vals = list(values)
    return sum(vals, ZERO) / len(vals) if vals else ZERO


def median(values: Iterable[Decimal]) -> Decimal:
    vals = sorted(values)
    n = len(vals)
    if n == 0:
        return ZERO
    mid = n // 2
    return vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2


def trimmed_mean(values: Iterable[Decimal]) -> Decimal:
    """Mean after dropping ~10 % (at least one value) at each end; a plain mean below 3."""
    vals = sorted(values)
    n = len(vals)
    if n < 3:
        return mean(vals)
    k = max(1, (n + 5) // 10)
    return mean(vals[k : n - k])


@dataclass(frozen=True, slots=True)
class DailyProfile:
    """Expected spend of a future day by weekday (Monday first)."""

    weekday_expected: tuple[Decimal, ...]
    method: Method
    days: int  # complete days of history the fit used

    def expected(self, day: dt.date) -> Decimal:
        return self.weekday_expected[day.weekday()]

    @property
    def level(self) -> Decimal:
        """Typical daily spend (mean over the week)."""
        return mean(self.weekday_expected)

    @property
    def factors(self) -> tuple[Decimal, ...]:
        """Weekday factors normalised to mean 1 (all 1 without a weekday profile)."""
        level = self.level
        if level == 0:
            return (ONE,) * 7
        return tuple(e / level for e in self.weekday_expected)


def fit_profile(history: Mapping[dt.date, Decimal], today: dt.date) -> DailyProfile:
    """Fit the daily profile on complete days before `today` (see the module doc)."""
    with localcontext(DECIMAL_CONTEXT):
        past = [d for d in history if d < today]
        if not past:
            return DailyProfile((ZERO,) * 7, "none", 0)
        first = max(min(past), today - dt.timedelta(days=PROFILE_DAYS))
        n = (today - first).days
        days = [first + dt.timedelta(days=i) for i in range(n)]
        value = {d: history.get(d, ZERO) for d in days}
        recent = days[-LEVEL_DAYS:]
        if n < MIN_ROBUST_DAYS:
            flat = _quantize(max(ZERO, mean(value[d] for d in days)))
            return DailyProfile((flat,) * 7, "mean", n)
        if n < MIN_WEEKDAY_DAYS:
            flat = _quantize(max(ZERO, trimmed_mean(value[d] for d in recent)))
            return DailyProfile((flat,) * 7, "trimmed_mean", n)
        medians = [max(ZERO, median(value[d] for d in days if d.weekday() == w)) for w in range(7)]
        ratios = [value[d] / medians[d.weekday()] for d in recent if medians[d.weekday()] > 0]
        scale = max(ZERO, trimmed_mean(ratios)) if ratios else ZERO
        return DailyProfile(tuple(_quantize(scale * m) for m in medians), "weekday", n)


@dataclass(frozen=True, slots=True)
class Projection:
    """Cumulative spend path over a period: actual up to `now`, expected after.

    `knots` are (instant, cumulative spend) pairs from the period start to its end; the path
    is linear between consecutive knots.
    """

    knots: tuple[tuple[dt.datetime, Decimal], ...]
    spent: Decimal  # actual spend from the period start to now
    now: dt.datetime
    profile: DailyProfile

    @property
    def forecast(self) -> Decimal:
        """Expected spend at the end of the period."""
        return self.knots[-1][1]


def project(
    spent_by_day: Mapping[dt.date, Decimal],
    profile: DailyProfile,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    tz: ZoneInfo,
) -> Projection:
    """Cumulative path of a period starting and ending at local midnights in `tz`.

    `spent_by_day` holds actual spend by local date (today's is the partial day so far);
    days after today in it are ignored.
    """
    with localcontext(DECIMAL_CONTEXT):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if not start <= now < end:
            raise ValueError("now must fall inside the period [start, end)")
        today = now.astimezone(tz).date()
        day = start.astimezone(tz).date()
        last = end.astimezone(tz).date()
        cum = ZERO
        spent = ZERO
        knots: list[tuple[dt.datetime, Decimal]] = [(start.astimezone(tz), ZERO)]
        while day < last:
            day_start = local_midnight(day, tz)
            next_day = day + dt.timedelta(days=1)
            day_end = local_midnight(next_day, tz)
            if day < today:
                cum += spent_by_day.get(day, ZERO)
                spent = cum
            elif day == today:
                cum += spent_by_day.get(day, ZERO)
                spent = cum
                knots.append((now.astimezone(tz), cum))
                length = _elapsed(day_start, day_end) // _US
                left = _elapsed(now, day_end) // _US
                cum += _quantize(profile.expected(day) * left / length)
            else:
                cum += profile.expected(day)
            knots.append((day_end, cum))
            day = next_day
        return Projection(tuple(knots), spent, now, profile)


def exhaustion_time(projection: Projection, limit: Decimal | None) -> dt.datetime | None:
    """When the cumulative path first reaches `limit`, or None if not within the period.

    A limit of 0 is reached when spend first becomes positive. A time before `now` means the
    limit was already crossed then (interpolated within that day).
    """
    if limit is None:
        return None
    with localcontext(DECIMAL_CONTEXT):

        def reached(c: Decimal) -> bool:
            return c >= limit and c > 0

        knots = projection.knots
        t0, c0 = knots[0]
        if reached(c0):
            return t0
        for t1, c1 in knots[1:]:
            if reached(c1):
                span = _elapsed(t0, t1)
                if span <= dt.timedelta(0) or c1 == c0:
                    return t1
                frac = (max(limit, c0) - c0) / (c1 - c0)
                micro = (Decimal(span // _US) * frac).to_integral_value(rounding=ROUND_HALF_EVEN)
                crossed = t0.astimezone(dt.UTC) + dt.timedelta(microseconds=int(micro))
                return crossed.astimezone(t1.tzinfo)
            t0, c0 = t1, c1
        return None


def forecast_period(
    spent_by_day: Mapping[dt.date, Decimal],
    history: Mapping[dt.date, Decimal],
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    tz: ZoneInfo,
) -> Projection:
    """Fit the profile on `history` (days before today) and project the period."""
    today = now.astimezone(tz).date()
    return project(spent_by_day, fit_profile(history, today), start, end, now, tz)


def _band_at(elapsed: Decimal) -> tuple[Decimal, Decimal]:
    """(q10, q90) of the band table at `elapsed`, linear between points, flat outside."""
    if elapsed <= BAND[0][0]:
        return BAND[0][1], BAND[0][2]
    for (f0, lo0, hi0), (f1, lo1, hi1) in pairwise(BAND):
        if elapsed <= f1:
            w = (elapsed - f0) / (f1 - f0)
            return lo0 + (lo1 - lo0) * w, hi0 + (hi1 - hi0) * w
    return BAND[-1][1], BAND[-1][2]


def forecast_band(
    spent: Decimal, forecast: Decimal, elapsed: Decimal | float, method: Method
) -> tuple[Decimal, Decimal]:
    """80% interval (lower, upper) of period-end spend around `forecast` (see the module doc).

    `elapsed` is the elapsed fraction of the period (0..1). lower <= forecast <= upper.
    """
    with localcontext(DECIMAL_CONTEXT):
        f = elapsed if isinstance(elapsed, Decimal) else Decimal(repr(elapsed))
        f = min(max(f, ZERO), ONE)
        rest = forecast - spent
        if method == "none":
            upper = spent / f if f > 0 and spent > 0 else forecast
            return min(spent, forecast), _quantize(max(forecast, upper))
        if rest <= 0:
            return forecast, forecast
        q10, q90 = _band_at(f)
        lower = _quantize(spent + rest * min(q10, ONE))
        upper = _quantize(spent + rest * max(q90, ONE))
        return lower, upper
