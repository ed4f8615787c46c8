"""The exporter at fixed moments of the calendar, over HTTP against the simulator.

Each moment of `tests.clock.CALENDAR` (the 1st at 00:30, the 7th, the last day of a month,
29 February, DST changes east and west of UTC, the 1st at 00:30 local while UTC is still
in the month before) is a fresh install: the simulator frozen at that moment with its
default history, the exporter on the same clock with no `history_start` configured. What a
user reads on day one must be whole and exact against the simulator's truth:
- the history starts early enough to hold all of last (local) month;
- the period gauges (today, this week, this month) are the sums of their local periods, and
  their start timestamps are the local midnights;
- last month is the counter less this month, exactly;
- week over week: each of the 14 complete local days before today is exact;
- a monthly budget's period runs from this local month's first midnight to the next's.

Why fixed clocks and not libfaketime: libfaketime 0.9.10 (Debian 12) makes Python 3.11's
`time.sleep` fail with EINVAL and cannot reach Go binaries (Prometheus) at all, so it would
test a different program. The exporter's clock is injectable (`App(clock=...)`); the
simulator's is `now=`. tests/test_clock.py makes sure no test reads the wall clock instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import yaml

from exporter.app import App
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from tests.clock import CALENDAR, Moment
from tests.helpers import Samples, http_get, parse, total

RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)
PROVIDERS = ("openai", "anthropic")


def local_midnight(day: dt.date, tz: Any) -> int:
    return int(dt.datetime.combine(day, dt.time(), tzinfo=tz).timestamp())


def bounds(m: Moment) -> dict[str, tuple[int, int]]:
    """[start, end) of each period holding `m`, and of last month, computed here from the
    calendar alone (not with the exporter's code)."""
    today = m.at.astimezone(m.zone).date()
    first = today.replace(day=1)
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    prev = (first - dt.timedelta(days=1)).replace(day=1)
    monday = today - dt.timedelta(days=today.weekday())
    z = m.zone
    return {
        "day": (local_midnight(today, z), local_midnight(today + dt.timedelta(days=1), z)),
        "week": (local_midnight(monday, z), local_midnight(monday + dt.timedelta(days=7), z)),
        "month": (local_midnight(first, z), local_midnight(nxt, z)),
        "last_month": (local_midnight(prev, z), local_midnight(first, z)),
    }


def tokens(sim: SimulatorServer, start: int, end: int) -> int:
    """Every billed token of the configured providers in [start, end), from the truth."""
    out = 0
    for p in PROVIDERS:
        for k, v in sim.dataset.totals(p, start, end).items():
            if k.startswith("tokens."):
                out += int(v)
    return out


def cost(sim: SimulatorServer, start: int, end: int) -> Decimal:
    """Reported cost in [start, end): what the cost endpoints publish by `end`."""
    if end <= start:
        return Decimal(0)
    return sum((Decimal(sim.dataset.totals(p, start, end)["cost"]) for p in PROVIDERS), Decimal(0))


@pytest.fixture(scope="module", params=CALENDAR, ids=[m.name for m in CALENDAR])
def installed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A first start at the moment: no history_start, a fresh state file, one poll."""
    m: Moment = request.param
    tmp_path = tmp_path_factory.mktemp(m.name)
    sim = SimulatorServer(port=0, seed=3, now=m.ts).start()
    cfg = {
        "timezone": m.tz,
        # UTC days are the local days in UTC; elsewhere hourly buckets make local days exact.
        "bucket_width": "1d" if m.tz == "UTC" else "1h",
        "state_file": str(tmp_path / "state.db"),
        "providers": {
            p: [{"account": "cal", "base_url": getattr(sim, f"{p}_base_url")}] for p in PROVIDERS
        },
        "budgets": [
            {"name": "monthly", "selector": {}, "period": "month", "limit_usd": 1e9},
        ],
    }
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    env = {
        "OPENAI_ADMIN_KEY": sim.settings.openai_key,
        "ANTHROPIC_ADMIN_KEY": sim.settings.anthropic_key,
    }
    app = App(load(tmp_path / "c.yml", env), clock=lambda: float(sim.now()), retry=RETRY)
    app.poll_once()
    port = app.serve("127.0.0.1:0").server_address[1]
    try:
        got: Samples = parse(http_get(f"http://127.0.0.1:{port}/metrics"))
        yield {"moment": m, "sim": sim, "got": got, "app": app}
    finally:
        app.stop()
        sim.stop()


def test_a_first_start_holds_last_month_whole(installed: dict[str, Any]) -> None:
    m, sim, got = installed["moment"], installed["sim"], installed["got"]
    b = bounds(m)
    up = [v for (n, _), v in got.items() if n == "llm_source_up"]
    assert up and all(v == 1 for v in up), up
    # The counters start at a UTC midnight at or before last month's first local midnight.
    history = installed["app"].history_start
    assert history <= b["last_month"][0] < history + 86400, (history, b["last_month"])
    assert total(got, "llm_tokens_total") == tokens(sim, history, m.ts)
    month = total(got, "llm_period_tokens", period="month")
    assert month == tokens(sim, b["month"][0], m.ts)
    # Last month = the counter less this month less what lies before last month's start.
    before = tokens(sim, history, b["last_month"][0])
    assert total(got, "llm_tokens_total") - month - before == tokens(sim, *b["last_month"])
    assert tokens(sim, *b["last_month"]) > 0


def test_the_periods_are_the_local_calendar(installed: dict[str, Any]) -> None:
    m, sim, got = installed["moment"], installed["sim"], installed["got"]
    b = bounds(m)
    for period in ("day", "week", "month"):
        start = b[period][0]
        assert total(got, "llm_period_start_timestamp_seconds", period=period) == start, period
        assert total(got, "llm_period_tokens", period=period) == tokens(sim, start, m.ts), period
    assert (
        total(got, "llm_budget_period_start_timestamp_seconds", budget="monthly") == b["month"][0]
    )
    assert total(got, "llm_budget_period_end_timestamp_seconds", budget="monthly") == b["month"][1]
    # Costs are published a few hours late, in UTC-day buckets: exact in UTC.
    published = m.ts - sim.settings.cost_lag
    counted = total(got, "llm_cost_reported_usd_total")
    history = installed["app"].history_start
    assert counted == pytest.approx(float(cost(sim, history, published)), rel=1e-9)
    if m.tz == "UTC":
        expect = cost(sim, b["month"][0], published)
        got_month = total(got, "llm_period_cost_reported_usd", period="month")
        assert got_month == pytest.approx(float(expect), rel=1e-9, abs=1e-9)


def test_week_over_week_is_exact_on_day_one(installed: dict[str, Any]) -> None:
    m, sim, got = installed["moment"], installed["sim"], installed["got"]
    today = m.at.astimezone(m.zone).date()
    for back in range(1, 15):
        day = today - dt.timedelta(days=back)
        start, end = local_midnight(day, m.zone), local_midnight(day + dt.timedelta(days=1), m.zone)
        exposed = total(got, "llm_daily_tokens", date=day.isoformat())
        assert exposed == tokens(sim, start, end), (day, end - start)
        assert exposed > 0, day
