"""The poll loop: windows, and a failure that never makes it spin or stop."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from exporter.health import Health
from exporter.ledger import Ledger
from exporter.poller import Account, Poller
from exporter.rows import Bucket, Row
from exporter.sources import DAY, Endpoint
from exporter.sources._http import ApiClient, SourceError


class FakeSource:
    provider = "fake"
    account = "a"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def endpoints(self) -> Sequence[Endpoint]:
        return [Endpoint("usage", DAY, 2 * DAY)]

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        self.calls.append((start, end))
        return [
            Bucket("usage", start, start + DAY, [Row.make("completions", {}, {"tokens.input": 1})])
        ]


class BrokenLedger:
    def closed_before(self, provider: str, account: str, endpoint: str) -> int | None:
        return None

    def replace(self, *args: object, **kwargs: object) -> tuple[int, list[object]]:
        raise sqlite3.OperationalError("database is locked")


def test_a_state_file_error_is_reported_and_does_not_make_the_loop_spin() -> None:
    clock = [10 * DAY + 5.0]
    src = FakeSource()
    health = Health()
    acc = Account(src, ApiClient("http://unused.test/", {}), interval=300)
    rebuilds: list[int] = []
    poller = Poller(
        BrokenLedger(),
        health,
        [acc],
        history_start=8 * DAY,  # type: ignore[arg-type]
        rebuild=lambda: rebuilds.append(1),
        clock=lambda: clock[0],
    )
    poller.poll_once(only_due=True)
    poller.poll_once(only_due=True)  # not due yet: no second fetch
    assert len(src.calls) == 1
    state = health.snapshot().endpoints[("fake", "a", "usage")]
    assert state.up == 0 and state.last_error_reason == "storage"
    clock[0] += 300
    poller.poll_once(only_due=True)
    assert len(src.calls) == 2 and len(rebuilds) == 3


def test_first_window_starts_at_history_start_aligned() -> None:
    src = FakeSource()
    poller = Poller(
        BrokenLedger(),
        Health(),
        [Account(src, ApiClient("http://unused.test/", {}), 300)],  # type: ignore[arg-type]
        history_start=8 * DAY + 7,
        rebuild=lambda: None,
        clock=lambda: 10 * DAY + 5.0,
    )
    poller.poll_once()
    assert src.calls == [(8 * DAY, 10 * DAY + 5)]


class SlowReport(FakeSource):
    """A source with a billed report: fetched at most once per `min_interval`."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail

    def endpoints(self) -> Sequence[Endpoint]:
        return [Endpoint("usage", DAY, 2 * DAY, min_interval=6 * 3600)]

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        if self.fail:
            self.calls.append((start, end))
            raise SourceError("rate_limited", "usage: throttled")
        return super().fetch(endpoint, start, end)


def test_min_interval_skips_an_endpoint_until_due_and_survives_a_restart(tmp_path: Path) -> None:
    clock = [10 * DAY + 5.0]
    ledger = Ledger(tmp_path / "state.db")

    def poller(src: FakeSource, health: Health) -> Poller:
        acc = Account(src, ApiClient("http://unused.test/", {}), interval=300)
        return Poller(ledger, health, [acc], 9 * DAY, lambda: None, lambda: clock[0])

    src, health = SlowReport(), Health()
    p = poller(src, health)
    p.poll_once()
    assert len(src.calls) == 1
    clock[0] += 3600  # an hour later: not due; reported fresh, cursor kept
    p.poll_once()
    assert len(src.calls) == 1
    state = health.snapshot().endpoints[("fake", "a", "usage")]
    assert state.up == 1 and state.last_success == clock[0]
    # A restart does not fetch it early: the last fetch is kept in the state file.
    src2 = SlowReport()
    poller(src2, Health()).poll_once()
    assert src2.calls == []
    clock[0] += 5 * 3600  # six hours after the fetch: due
    p.poll_once()
    assert len(src.calls) == 2
    # A failed fetch does not count: it is retried at the next poll.
    clock[0] += 6 * 3600
    failing = SlowReport(fail=True)
    fp = poller(failing, Health())
    fp.poll_once()
    fp.poll_once()
    assert len(failing.calls) == 2


def test_without_min_interval_every_poll_fetches(tmp_path: Path) -> None:
    src = FakeSource()
    acc = Account(src, ApiClient("http://unused.test/", {}), interval=300)
    p = Poller(Ledger(tmp_path / "s.db"), Health(), [acc], 9 * DAY, lambda: None, lambda: 10 * DAY)
    p.poll_once()
    p.poll_once()
    assert len(src.calls) == 2


@pytest.mark.parametrize(
    ("now", "tz", "expected"),
    [
        # the 1st at 00:30: the whole previous month
        (dt.datetime(2027, 3, 1, 0, 30, tzinfo=dt.UTC), "UTC", dt.date(2027, 2, 1)),
        # January: December of the year before
        (dt.datetime(2027, 1, 15, tzinfo=dt.UTC), "UTC", dt.date(2026, 12, 1)),
        # 29 February: January
        (dt.datetime(2028, 2, 29, 12, tzinfo=dt.UTC), "UTC", dt.date(2028, 1, 1)),
        # Berlin's 1 January 00:30 is still 31 December in UTC; its December starts on
        # 30 November 23:00 UTC, so the UTC day before holds it
        (dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC), "Europe/Berlin", dt.date(2026, 11, 30)),
        # New York's month starts after the UTC midnight of its date
        (dt.datetime(2027, 3, 14, 16, tzinfo=dt.UTC), "America/New_York", dt.date(2027, 2, 1)),
    ],
)
def test_default_history_start_holds_the_previous_local_month(
    now: dt.datetime, tz: str, expected: dt.date
) -> None:
    from zoneinfo import ZoneInfo

    from exporter.poller import history_start_ts

    day, ts = history_start_ts(None, None, now, ZoneInfo(tz))
    assert day == expected
    assert ts == int(dt.datetime.combine(expected, dt.time(), tzinfo=dt.UTC).timestamp())
    # A stored start wins over the default, and a configured one over both.
    assert history_start_ts(None, "2026-01-01", now, ZoneInfo(tz))[0] == dt.date(2026, 1, 1)
    assert history_start_ts(dt.date(2025, 5, 5), "2026-01-01", now, ZoneInfo(tz))[0] == dt.date(
        2025, 5, 5
    )


class HostileSource(FakeSource):
    """One good row, a cost of 1e309 (finite as a Decimal, +Inf as a float) and 2^70 tokens."""

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        from decimal import Decimal

        self.calls.append((start, end))
        return [
            Bucket(
                "usage",
                start,
                start + DAY,
                [
                    Row.make("completions", {"model": "good"}, {"tokens.input": 7}),
                    Row.make("costs", {"currency": "usd"}, {"cost": Decimal("1e309")}),
                    Row.make("completions", {"model": "huge"}, {"tokens.input": 2**70}),
                ],
            )
        ]


def test_rows_out_of_bounds_are_skipped_counted_and_the_rest_stored(tmp_path: Path) -> None:
    src = HostileSource()
    health = Health()
    ledger = Ledger(tmp_path / "state.db")
    acc = Account(src, ApiClient("http://unused.test/", {}), interval=300)
    poller = Poller(ledger, health, [acc], history_start=9 * DAY, rebuild=lambda: None,
                    clock=lambda: 10 * DAY + 5.0)  # fmt: skip
    poller.poll_once()
    poller.poll_once()
    snap = health.snapshot()
    assert snap.endpoints[("fake", "a", "usage")].up == 1
    assert snap.payload_errors[("fake", "a", "usage")] == 4  # 2 rows on each of 2 polls
    stored = [dict(sr.row.measures) for sr in ledger.iter_rows(0)]
    assert stored and all(m == {"tokens.input": 7} for m in stored)
    ledger.close()
