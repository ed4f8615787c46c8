"""The poll loop: windows, and a failure that never makes it spin or stop."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from exporter.health import Health
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


class SparseSource(FakeSource):
    """One endpoint every poll, one (a billed query) at most every 6 hours."""

    def endpoints(self) -> Sequence[Endpoint]:
        return [Endpoint("usage", DAY, 2 * DAY), Endpoint("billing", DAY, 5 * DAY, 6 * 3600)]

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        self.calls.append((endpoint.name == "billing", start))
        if endpoint.name == "billing" and self.fail_billing:
            raise SourceError("server_error", "billing: HTTP 500")
        return []

    fail_billing = False


class NullLedger(BrokenLedger):
    def replace(self, *args: object, **kwargs: object) -> tuple[int, list[object]]:
        return 0, []

    def refetched(self, *args: object) -> None:
        pass


def test_an_endpoint_with_a_min_interval_is_fetched_only_that_often() -> None:
    clock = [10 * DAY + 5.0]
    src = SparseSource()
    poller = Poller(
        NullLedger(),  # type: ignore[arg-type]
        Health(),
        [Account(src, ApiClient("http://unused.test/", {}), 300)],
        history_start=8 * DAY,
        rebuild=lambda: None,
        clock=lambda: clock[0],
    )

    def billing_fetches() -> int:
        return sum(1 for billed, _ in src.calls if billed)

    poller.poll_once()
    assert billing_fetches() == 1
    for _ in range(10):  # 50 minutes of 5-minute polls: usage every time, billing not again
        clock[0] += 300
        poller.poll_once()
    assert billing_fetches() == 1 and len(src.calls) == 12
    # Resting on schedule is not staleness: its last success moves on, its watermark does not.
    state = poller.health.snapshot().endpoints[("fake", "a", "billing")]
    assert state.up == 1 and state.last_success == clock[0]
    assert state.watermark == 8 * DAY  # from the one real fetch (the history start)
    clock[0] += 6 * 3600
    src.fail_billing = True  # due again; a failure does not count as a fetch...
    poller.poll_once()
    assert billing_fetches() == 2
    src.fail_billing = False
    clock[0] += 300  # ...so the next poll tries again
    poller.poll_once()
    assert billing_fetches() == 3
    clock[0] += 300
    poller.poll_once()
    assert billing_fetches() == 3
