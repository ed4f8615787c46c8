"""The poll loop: asks each source for the window that can still change, writes the ledger,
then rebuilds and swaps the exposition.

Windows are incremental: the first poll backfills from the history start; later polls start at
the endpoint's cursor (the first bucket that is not yet final) so closed buckets are never
fetched again. One failing endpoint or account does not stop the others; its cursor does not
move, so the next poll catches up by itself.

An endpoint with a `min_interval` (a billing report that costs money per request) is fetched
only once that long has passed since its last successful fetch. The time of that fetch is kept
in the state file, so a restart does not fetch it again early. A poll that skips it reports it
as fresh (`llm_source_last_success_timestamp_seconds` moves on: its data is as recent as it is
meant to be), with its cursor unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from exporter.health import Health
from exporter.ledger import ChangeObserver, Ledger
from exporter.rows import Bucket, drop_out_of_bounds
from exporter.sources import Endpoint, Source
from exporter.sources._http import (
    DECODE,
    RATE_LIMITED,
    REASONS,
    ApiClient,
    Cancelled,
    SourceError,
)

log = logging.getLogger(__name__)

IDLE_REBUILD = 60.0  # seconds: the longest the exposition goes without a rebuild
STORAGE = "storage"  # the state file could not be written (a health reason, not an API one)


def align_down(ts: int, width: int) -> int:
    return ts - ts % width


@dataclass
class Account:
    """A configured account at run time: its source, its HTTP client and its schedule."""

    source: Source
    client: ApiClient
    interval: float
    next_due: float = 0.0
    polls: int = 0  # completed polls of this account

    @property
    def name(self) -> str:
        return f"{self.source.provider}/{self.source.account}"


class Poller:
    def __init__(
        self,
        ledger: Ledger,
        health: Health,
        accounts: Sequence[Account],
        history_start: int,
        rebuild: Callable[[], None],
        clock: Callable[[], float] = time.time,
        observer: ChangeObserver | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.ledger = ledger
        self.stop = stop or threading.Event()  # set: abandon fetches, write nothing more
        self.observer = observer  # told of every changed row (the aggregates)
        self.health = health
        self.accounts = list(accounts)
        self.history_start = history_start
        self._rebuild = rebuild
        self.clock = clock
        self._threads: list[threading.Thread] = []
        self._polled = threading.Event()  # an account finished a poll: rebuild
        # (provider, account, endpoint) -> time of the last successful fetch, for endpoints
        # with a min_interval; read from the state file on first use.
        self._fetched: dict[tuple[str, str, str], float] = {}
        # (account name, endpoint) -> rows dropped for a measure out of bounds, since start;
        # accounts poll on threads of their own, so it is read and written under a lock.
        self._dropped: dict[tuple[str, str], int] = {}
        self._dropped_lock = threading.Lock()
        for acc in self.accounts:
            for ep in acc.source.endpoints():
                health.register(
                    acc.source.provider, acc.source.account, ep.name, REASONS, ep.horizon
                )

    def window(self, acc: Account, ep: Endpoint, now: int) -> tuple[int, int]:
        closed = self.ledger.closed_before(acc.source.provider, acc.source.account, ep.name)
        start = max(self.history_start, closed or 0)
        return align_down(start, ep.width), now

    def _fetched_key(self, acc: Account, ep: Endpoint) -> tuple[str, str, str]:
        return (acc.source.provider, acc.source.account, ep.name)

    def due(self, acc: Account, ep: Endpoint) -> bool:
        """Whether `ep` is fetched at this poll: always without a `min_interval`; else once
        that long has passed since its last successful fetch (or it has none, or its cursor
        is gone: a wiped or reshaped account)."""
        if ep.min_interval <= 0:
            return True
        key = self._fetched_key(acc, ep)
        if key not in self._fetched:
            stored = self.ledger.get_meta("fetched:" + "/".join(key))
            try:
                self._fetched[key] = float(stored) if stored else float("-inf")
            except ValueError:  # unreadable: fetch now
                self._fetched[key] = float("-inf")
        if self.ledger.closed_before(*key) is None:
            return True
        now = self.clock()
        last = self._fetched[key]
        return now - last >= ep.min_interval or now < last

    def _fetched_now(self, acc: Account, ep: Endpoint, at: float) -> None:
        key = self._fetched_key(acc, ep)
        self._fetched[key] = at
        try:
            self.ledger.set_meta("fetched:" + "/".join(key), repr(at))
        except (sqlite3.Error, OSError) as exc:  # kept in memory: only a restart fetches early
            log.warning("cannot keep the fetch time of %s/%s %s in the state file: %s", *key, exc)

    def _not_due(self, acc: Account, ep: Endpoint) -> None:
        """A skipped endpoint is as fresh as it is meant to be: report it so, cursor kept."""
        src = acc.source
        closed = self.ledger.closed_before(src.provider, src.account, ep.name)
        assert closed is not None  # due() fetches an endpoint without a cursor
        self.health.success(src.provider, src.account, ep.name, self.clock(), closed, None, 0)

    @property
    def cycles(self) -> int:
        """Rounds in which every account was polled (readiness: the first has finished);
        with no account to poll, nothing is awaited."""
        return min((a.polls for a in self.accounts), default=1)

    def poll_endpoint(self, acc: Account, ep: Endpoint) -> str | None:
        """Fetch and store one endpoint's window: None if it succeeded, else the reason."""
        src = acc.source
        now = int(self.clock())
        start, end = self.window(acc, ep, now)
        try:
            buckets = src.fetch(ep, start, end)
        except Cancelled:
            return "cancelled"
        except SourceError as exc:
            if self.stop.is_set():
                return "cancelled"
            self.health.failure(src.provider, src.account, ep.name, exc.reason, str(exc))
            log.warning("poll failed: %s %s: %s (%s)", acc.name, ep.name, exc, exc.reason)
            return exc.reason
        except Exception as exc:  # an adapter bug must not kill the loop
            if self.stop.is_set():  # e.g. the client closed under a request at shutdown
                return "cancelled"
            self.health.failure(src.provider, src.account, ep.name, DECODE, type(exc).__name__)
            acc.client.recorder.failure(ep.name, DECODE)
            log.exception("poll failed: %s %s: unexpected error", acc.name, ep.name)
            return DECODE
        if self.stop.is_set():
            log.info("stopping: %s %s fetched but not written", acc.name, ep.name)
            return "cancelled"
        self._drop_out_of_bounds(acc, ep, buckets)
        closed = max(start, align_down(now - ep.horizon, ep.width))
        try:
            written, drops = self.ledger.replace(
                src.provider, src.account, ep.name, buckets, closed, self.observer
            )
        except (sqlite3.Error, OSError) as exc:  # disk full, read-only volume, locked file
            if self.stop.is_set():
                return "cancelled"
            self.health.failure(src.provider, src.account, ep.name, STORAGE, f"state file: {exc}")
            log.error("cannot write the state file for %s %s: %s", acc.name, ep.name, exc)
            return STORAGE
        except Exception as exc:  # a row the sums cannot take: rolled back, reported
            self.health.failure(
                src.provider, src.account, ep.name, STORAGE, f"not stored: {type(exc).__name__}"
            )
            log.exception("cannot store %s %s (rolled back)", acc.name, ep.name)
            return STORAGE
        self.ledger.refetched(src.provider, src.account, ep.name, start)
        if ep.min_interval > 0:
            self._fetched_now(acc, ep, float(now))
        latest = max((b.end for b in buckets if b.rows), default=None)
        self.health.success(
            src.provider, src.account, ep.name, self.clock(), closed, latest, written, len(drops)
        )
        log.debug(
            "polled %s %s: %d buckets, %d rows, window %d..%d",
            acc.name,
            ep.name,
            len(buckets),
            written,
            start,
            end,
        )
        return None

    def _drop_out_of_bounds(self, acc: Account, ep: Endpoint, buckets: list[Bucket]) -> None:
        """Skip, count (as payload errors) and log each row with a measure no real bill has:
        one such row must never stop its endpoint, nor poison a counter with +Inf."""
        dropped = drop_out_of_bounds(buckets)
        if not dropped:
            return
        with self._dropped_lock:
            key = (acc.name, ep.name)
            self._dropped[key] = self._dropped.get(key, 0) + len(dropped)
        for start, bad in dropped:
            log.warning(
                "skipped a row of %s %s at %d: %s is out of bounds (counted in "
                "llm_source_payload_errors_total)",
                acc.name,
                ep.name,
                start,
                bad,
            )

    def poll_account(self, acc: Account) -> None:
        """Poll every endpoint of one account. A rate limit stops the round: the account's
        other endpoints are not asked until its backoff is over (other accounts go on)."""
        began = time.monotonic()
        acc.client.reset_count()
        ok = 0
        endpoints = list(acc.source.endpoints())
        for i, ep in enumerate(endpoints):
            if self.stop.is_set():
                break
            if not self.due(acc, ep):
                self._not_due(acc, ep)
                ok += 1
                continue
            reason = self.poll_endpoint(acc, ep)
            ok += reason is None
            if reason == RATE_LIMITED and i + 1 < len(endpoints):
                log.warning(
                    "%s is rate limited: its %d other endpoint(s) wait %.1fs, for the next poll",
                    acc.name,
                    len(endpoints) - i - 1,
                    max(acc.client.backoff_remaining(), acc.interval),
                )
                break
        errors = dict(getattr(acc.source, "payload_errors", {}) or {})
        with self._dropped_lock:
            dropped = list(self._dropped.items())
        for (name, ep_name), n in dropped:
            if name == acc.name:
                errors[ep_name] = errors.get(ep_name, 0) + n
        self.health.poll_done(
            acc.source.provider,
            acc.source.account,
            time.monotonic() - began,
            acc.client.requests_made,
            errors,
        )
        log.info(
            "polled %s: %d/%d endpoints ok, %d API requests, %.2fs",
            acc.name,
            ok,
            len(endpoints),
            acc.client.requests_made,
            time.monotonic() - began,
        )

    def _after(self) -> None:
        self.health.last_poll = self.clock()
        if not self.stop.is_set():
            self._rebuild()

    def poll_once(self, only_due: bool = False) -> None:
        """Poll every (due) account concurrently, then rebuild the exposition once (tests,
        `--once`; the service runs each account on its own schedule, see `run`)."""
        now = self.clock()
        due = [a for a in self.accounts if not only_due or a.next_due <= now]
        for a in due:  # scheduled before polling: a failure never makes the loop spin
            a.next_due = now + a.interval
        if due:
            with ThreadPoolExecutor(max_workers=min(8, len(due))) as pool:
                list(pool.map(self.poll_account, due))
        for a in due:  # before the rebuild, which publishes readiness
            a.polls += 1
        self._after()

    def run(self, stop: threading.Event) -> None:
        """Each account on its own thread and schedule: a slow or rate-limited account
        delays no other. This thread rebuilds the exposition after polls, one rebuild for
        however many polls finished meanwhile, so rendering never holds up a poll (and a
        poll every second on many accounts never queues rebuilds). Returns once `stop` is
        set (the account threads are daemons: see `join`)."""
        self.stop = stop
        self._threads = [
            threading.Thread(
                target=self._run_account, args=(acc, stop), name=f"poll {acc.name}", daemon=True
            )
            for acc in self.accounts
        ]
        for t in self._threads:
            t.start()
        last = time.monotonic()
        while not stop.is_set():
            # After polls; and at least once a minute (periods roll over, process metrics move
            # on) even when no account is due or there is none.
            polled = self._polled.wait(0.2)
            if stop.is_set() or not (polled or time.monotonic() - last >= IDLE_REBUILD):
                continue
            self._polled.clear()
            last = time.monotonic()
            try:
                self._after()
            except Exception:
                log.exception("rebuild after a poll failed")

    def _run_account(self, acc: Account, stop: threading.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.poll_account(acc)
                acc.polls += 1  # before the rebuild, which publishes readiness
                self._polled.set()  # the run() thread rebuilds
            except Exception:
                if stop.is_set():
                    return
                log.exception("poll of %s failed", acc.name)
            wait = acc.interval - (time.monotonic() - began)
            stop.wait(max(0.05, wait, acc.client.backoff_remaining()))

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the account threads to stop; True if all did."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


def default_history_start(now: dt.datetime, tz: dt.tzinfo) -> dt.date:
    """The UTC date whose midnight starts the history: the first day of the month before
    `now`'s month in `tz`, or the day before it where that local month starts before the
    UTC midnight (zones east of UTC), so the whole previous local month is held."""
    this_month = now.astimezone(tz).date().replace(day=1)
    first = (this_month - dt.timedelta(days=1)).replace(day=1)
    local_start = dt.datetime.combine(first, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    return min(first, local_start.date())


def history_start_ts(
    configured: dt.date | None, stored: str | None, now: dt.datetime, tz: dt.tzinfo
) -> tuple[dt.date, int]:
    """History start as a date and as the UTC midnight that starts it.

    Config wins; else the value kept in the state file; else, at first start, the first day of
    the previous month (in the configured time zone): month over month and week over week are
    then whole on the day of install, whatever day of the month that is. Buckets are
    UTC-aligned, so the start is the UTC midnight of that date.
    """
    if configured is not None:
        day = configured
    elif stored:
        day = dt.date.fromisoformat(stored)
    else:
        day = default_history_start(now, tz)
    ts = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
    return day, ts
