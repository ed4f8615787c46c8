"""Aggregates kept by difference equal a from-scratch fold of the ledger, exactly.

Hypothesis drives random sequences of writes (new buckets, replaced buckets, values that go
up and down, emptied buckets), shape changes (an account forgotten and refetched under other
keys), restarts from the state file, crashes inside a write, and clocks that cross day,
week and month boundaries. After every step the incrementally kept sums must equal the sums
of a fresh fold of what the ledger holds, value for value, with the same series present.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.aggregates import Aggregates
from exporter.fold import FoldContext
from exporter.health import Health
from exporter.ledger import Change, Ledger
from exporter.model import RenderInput, RowEstimate, render_model
from exporter.rows import Bucket, Row
from exporter.settings import BudgetSettings

TZ = ZoneInfo("America/New_York")
HOUR, DAY = 3600, 86400
# Buckets straddle the local month start (Sun 1 Nov 2026) and week start (Mon 2 Nov): hourly
# ones from 21:00 local on 31 Oct, daily ones (UTC days) from 30 Oct.
HOURLY0 = int(dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC).timestamp())
DAILY0 = int(dt.datetime(2026, 10, 30, tzinfo=dt.UTC).timestamp())
NOW0 = dt.datetime(2026, 11, 2, 3, tzinfo=dt.UTC)  # Sunday evening local: rolls over soon
T0 = DAILY0
BUDGETS = [
    BudgetSettings(name="all", period="month", limit_usd=100),
    BudgetSettings(name="prod", period="week", selector={"project": "~p.*", "model": "m1"}),
]


class Pricer:
    """Linear prices with one unpriced model, one unit price and a cache discount."""

    def estimate_dims(
        self, provider: str, dims: Mapping[str, str], token_counts: Mapping[str, int], day: dt.date
    ) -> RowEstimate:
        if dims.get("model") == "unknown":
            return RowEstimate(unpriced={k: v for k, v in token_counts.items() if v})
        rate = Decimal("0.000001") * (1 + day.day % 3)
        costs = {tt: (rate * n, "genai-prices") for tt, n in token_counts.items()}
        saved = Decimal(token_counts.get("cache_read", 0)) * rate / 2
        return RowEstimate(costs=costs, cache_savings=saved)

    def estimate_units(
        self, provider: str, dims: Mapping[str, str], unit_counts: Mapping[str, int], day: dt.date
    ) -> dict[str, tuple[Decimal, str]]:
        n = unit_counts.get("request", 0)
        return {"request": (Decimal("0.01") * n, "config")} if n else {}


def context() -> FoldContext:
    return FoldContext(TZ, ("project", "user"), Pricer(), BUDGETS)


ENDPOINTS = {  # endpoint -> (operation, width)
    "completions": ("completions", HOUR),
    "daily": ("embeddings", DAY),
    "costs": ("costs", DAY),
    "vector_stores": ("vector_stores", DAY),
}

dims_st = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["m1", "unknown"]),
        "project": st.sampled_from(["", "p1", "q"]),
        "user": st.sampled_from(["", "u1"]),
    }
)


def bucket_start(endpoint: str, index: int) -> int:
    width = ENDPOINTS[endpoint][1]
    return (HOURLY0 if width == HOUR else DAILY0) + index * width


def row_for(endpoint: str, dims: dict[str, str], a: int, b: int) -> Row:
    op = ENDPOINTS[endpoint][0]
    if endpoint == "costs":
        d = {"project": dims["project"], "line_item": dims["model"] + ", input"}
        if b % 2:
            d.update(model=dims["model"], token_type="input")
        return Row.make(op, d, {"cost": Decimal(a) / 7 + Decimal("0.0001") * b})
    if endpoint == "vector_stores":
        return Row.make(op, {"project": dims["project"]}, {"storage_bytes": a * 1000})
    return Row.make(
        op,
        dims,
        {"tokens.input": a, "tokens.output": b, "tokens.cache_read": a // 3, "requests": b % 5},
    )


write_st = st.tuples(
    st.just("write"),
    st.sampled_from(sorted(ENDPOINTS)),
    st.sampled_from(["main", "other"]),
    st.integers(0, 5),  # bucket index
    st.lists(st.tuples(dims_st, st.integers(0, 50), st.integers(0, 9)), max_size=3),
)
step_st = st.one_of(
    write_st,
    write_st,
    st.tuples(st.just("revise"), st.sampled_from([0, 1, 2, 3])),  # the same bucket again
    st.tuples(st.just("restart")),
    st.tuples(st.just("crash"), st.sampled_from(sorted(ENDPOINTS)), st.integers(0, 5)),
    st.tuples(st.just("forget"), st.sampled_from(["main", "other"])),
    st.tuples(st.just("clock"), st.integers(1, 30)),  # hours forward
)
# "revise" rewrites the last written bucket: values scaled (down to nothing, halved, doubled,
# or one group dropped), so revisions go both ways and dip-and-recover happens.
SCALES = (0, 1, 2, 3)


DAYS = 2  # exact-day sums kept: short, so that pruning happens within a test


def cells(
    agg: Aggregates, now: dt.datetime
) -> dict[tuple[str, tuple[object, ...]], tuple[Decimal, int]]:
    """Every kept sum as (exact value, additions): 2 and Decimal("2.00") compare equal.
    Exact-day sums of days past the window are not kept (a late write may leave a partial
    one until the next day's pruning; it is never exposed)."""
    first = now.astimezone(TZ).date().toordinal() - DAYS
    return {
        (kind, key): (Decimal(v), int(n))
        for kind, sums in agg.cells.items()
        for key, (v, n) in sums.items()
        if not (kind.startswith("y:") and int(key[0]) < first)  # type: ignore[call-overload]
    }


def from_scratch(ledger: Ledger, now: dt.datetime) -> Aggregates:
    fresh = Aggregates(context(), daily_days=DAYS)
    fresh.roll(now)
    fresh.fold(ledger.iter_rows())
    fresh.fold(ledger.revision_rows(), revised=True)
    return fresh


def render(agg: Aggregates, now: dt.datetime) -> dict[str, dict[tuple[str, ...], object]]:
    fams = render_model(
        agg, RenderInput(Health(), now, TZ, ("project", "user"), 2, None, BUDGETS, daily_days=DAYS)
    )
    return {f.spec.name: dict(f.samples) for f in fams if f.spec.name != "llm_exporter_build_info"}


class Boom(Exception):
    pass


class Crashing:
    """Stages like the real store, then dies before the commit (a kill inside a write)."""

    def __init__(self, agg: Aggregates) -> None:
        self.agg = agg

    def stage(self, db: sqlite3.Connection, changes: Iterable[Change], rows_delta: int) -> object:
        self.agg.stage(db, changes, rows_delta)
        raise Boom

    def commit(self, staged: object) -> None:
        raise AssertionError("never reached")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step_st, min_size=1, max_size=30))
def test_incremental_equals_from_scratch(tmp_path: Path, steps: list[tuple[object, ...]]) -> None:
    path = tmp_path / f"state-{abs(hash(str(steps)))}.db"
    path.unlink(missing_ok=True)
    now = NOW0
    ledger = Ledger(path)
    agg = Aggregates(context(), ledger, daily_days=DAYS)
    agg.open(now, "prices-1")
    last: tuple[str, str, int, list[tuple[dict[str, str], int, int]]] | None = None
    try:
        for step in steps:
            kind = step[0]
            if kind in ("write", "revise"):
                if kind == "write":
                    _, endpoint, account, index, rows = step
                    last = (str(endpoint), str(account), int(index), list(rows))  # type: ignore[call-overload, arg-type]
                else:
                    how = int(step[1])  # type: ignore[call-overload]
                    endpoint, account, index, rows = last or ("completions", "main", 0, [])
                    if how == 3:
                        rows = rows[1:]
                    else:
                        rows = [(d, a * how // 2 if how else 0, b) for d, a, b in rows]
                    last = (endpoint, account, index, rows)
                start = bucket_start(endpoint, index)  # type: ignore[arg-type]
                width = ENDPOINTS[endpoint][1]  # type: ignore[index]
                bucket = Bucket(str(endpoint), start, start + width)
                bucket.rows = [row_for(str(endpoint), d, a, b) for d, a, b in rows]  # type: ignore[union-attr]
                ledger.replace("openai", str(account), str(endpoint), [bucket], None, agg)
            elif kind == "crash":
                _, endpoint, index = step
                width = ENDPOINTS[endpoint][1]  # type: ignore[index]
                start = bucket_start(str(endpoint), int(index))  # type: ignore[call-overload]
                bucket = Bucket(str(endpoint), start, start + width, [])
                with pytest.raises(Boom):
                    ledger.replace("openai", "main", str(endpoint), [bucket], None, Crashing(agg))
            elif kind == "forget":  # a shape change: the app forgets, then reopens
                ledger.forget("openai", str(step[1]), agg)
            elif kind == "restart":
                ledger.close()
                ledger = Ledger(path)
                agg = Aggregates(context(), ledger, daily_days=DAYS)
                assert agg.open(now, "prices-1") is False  # loaded, not refolded
            elif kind == "clock":
                now += dt.timedelta(hours=int(step[1]))  # type: ignore[call-overload]
                agg.roll(now)
            fresh = from_scratch(ledger, now)
            assert cells(agg, now) == cells(fresh, now)
        assert render(agg, now) == render(fresh, now)
    finally:
        ledger.close()


def test_changed_prices_refold(tmp_path: Path) -> None:
    now = NOW0
    ledger = Ledger(tmp_path / "s.db")
    agg = Aggregates(context(), ledger, daily_days=DAYS)
    assert agg.open(now, "v1") is True  # first start: nothing stored yet
    bucket = Bucket(
        "completions",
        T0,
        T0 + HOUR,
        [row_for("completions", {"model": "m1", "project": "p1", "user": ""}, 5, 2)],
    )
    ledger.replace("openai", "main", "completions", [bucket], None, agg)
    ledger.close()
    ledger = Ledger(tmp_path / "s.db")
    assert Aggregates(context(), ledger, daily_days=DAYS).open(now, "v1") is False
    again = Aggregates(context(), ledger, daily_days=DAYS)
    assert again.open(now, "v2") is True  # other prices: estimates are folded again
    assert cells(again, now) == cells(from_scratch(ledger, now), now)
    ledger.close()
