"""The sums behind every exposed value, kept up to date by difference and persisted.

Why: folding the whole ledger on every poll costs time and memory in proportion to history
(minutes and gigabytes at millions of rows). Here every ledger write tells the store which
rows changed (`Ledger.replace` calls `stage` inside its transaction); the store folds only
those rows (`fold.fold_row`, -1 for the old content, +1 for the new), writes the changed
sums to the same SQLite file in the same transaction, and applies them in memory once the
transaction commits. A kill -9 at any point leaves rows and sums consistent.

What is kept (see `fold` for the kinds): all-time counter sums, the sums of the open day,
week and month (re-summed from the ledger's rows of the new period when a period rolls
over), budget and reconciliation inputs per day, folding statistics and storage levels.
Exact-day sums are kept only for the days still exposed (`daily_days`).
At start the store checks that it was built for the same inputs (the fingerprint: fold
layout, time zone, labels, history start, budget scopes, prices) and for as many rows as the
ledger holds; only if not is the ledger folded again from scratch (logged, with its time).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from zoneinfo import ZoneInfo

from exporter.fold import SUM_CONTEXT, Delta, FoldContext, Key, fold_row
from exporter.ledger import Change, Ledger, StoredRow
from exporter.rows import Number

log = logging.getLogger(__name__)

LAYOUT = "2"  # bump when fold_row's output changes meaning: stored sums are then refolded
PERIODS = ("day", "week", "month")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aggregates (
    kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
"""
_META_FINGERPRINT = "aggregates_fingerprint"
_META_ROWS = "aggregates_rows"
_META_PERIOD = "aggregates_period_start:"

# kind -> key -> (value, additions). Tuples, never lists: a tuple of numbers, and a dict of
# such tuples under keys of strings and ints, is dropped from the garbage collector's lists
# once it has been seen, so its collections stop walking the 200k+ sums of a long history.
Cells = dict[str, dict[Key, tuple[Number, int]]]
_Pending = dict[tuple[str, Key], tuple[Number, int] | None]  # None: the sum is gone


def period_starts(now: dt.datetime, tz: ZoneInfo) -> dict[str, dt.date]:
    """First local day of the current day, week (Monday) and month."""
    today = now.astimezone(tz).date()
    return {
        "day": today,
        "week": today - dt.timedelta(days=today.weekday()),
        "month": today.replace(day=1),
    }


def _number(text: str) -> Number:
    if "." in text or "E" in text:  # int() would refuse it: skip the exception
        return Decimal(text)
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def _plus(a: Number, b: Number) -> Number:
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return SUM_CONTEXT.add(a, b)
    return a + b


class Aggregates:
    """In-memory sums, optionally mirrored in the ledger's SQLite file.

    Without a ledger it is a plain accumulator (tests and `model.build` fold rows into it).
    """

    def __init__(
        self,
        ctx: FoldContext,
        ledger: Ledger | None = None,
        history_start: int = 0,
        daily_days: int = 35,
    ) -> None:
        self.ctx = ctx
        self.ledger = ledger
        self.history_start = history_start
        self.daily_days = daily_days  # days the exact-day sums ("y:") are kept for
        self.cells: Cells = {}
        self.period_start: dict[str, int] = {}  # period -> first local day ordinal it sums
        self.lock = threading.Lock()  # guards `cells` between writers and the renderer
        if ledger is not None:
            ledger.read(lambda db: db.executescript(_SCHEMA))

    # --- folding -------------------------------------------------------------------------

    def fold(self, rows: Iterable[StoredRow], revised: bool = False, sign: int = 1) -> None:
        """Fold rows straight into memory (no persistence): a from-scratch build."""
        with self.lock:
            for sr in rows:
                delta: Delta = {}
                fold_row(self.ctx, sr, revised, delta, sign)
                self._apply(self._pending(delta))
        self.ctx.forget_groups()

    def _pending(self, delta: Delta) -> _Pending:
        """The new value of every sum `delta` touches (period days mapped to open periods)."""
        out: _Pending = {}
        for (kind, key), (v, n) in delta.items():
            if n == 0 and v == 0:
                continue
            if kind[0] == "d":
                family = kind[2:]
                day = key[0]
                for p, first in self.period_start.items():
                    if day >= first:  # type: ignore[operator]
                        self._add_to(out, f"p:{p}:{family}", key[1:], v, n)
            else:
                self._add_to(out, kind, key, v, n)
        return out

    def _add_to(self, out: _Pending, kind: str, key: Key, v: Number, n: Number) -> None:
        k = (kind, key)
        cur = out[k] if k in out else self.cells.get(kind, {}).get(key)
        if cur is None:
            cur = (0, 0)
        total = cur[1] + int(n)
        out[k] = (_plus(cur[0], v), total) if total != 0 else None

    def _apply(self, pending: _Pending) -> None:
        for (kind, key), cell in pending.items():
            if cell is None:
                bucket = self.cells.get(kind)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del self.cells[kind]
            else:
                self.cells.setdefault(kind, {})[key] = cell

    # --- the ledger's observer -------------------------------------------------------------

    def stage(self, db: sqlite3.Connection, changes: Iterable[Change], rows_delta: int) -> object:
        delta: Delta = {}
        for ch in changes:
            if ch.stored.start >= self.history_start:
                fold_row(self.ctx, ch.stored, ch.revised, delta, ch.sign)
        self.ctx.forget_groups()
        with self.lock:
            pending = self._pending(delta)
        _write(db, pending)
        if rows_delta:
            db.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?",
                (rows_delta, _META_ROWS),
            )
        return pending

    def commit(self, staged: object) -> None:
        with self.lock:
            self._apply(staged)  # type: ignore[arg-type]

    # --- start, periods, refold ------------------------------------------------------------

    def fingerprint(self, prices: str) -> str:
        ctx = self.ctx
        return json.dumps(
            {
                "layout": LAYOUT,
                "tz": ctx.tz.key,
                "labels": ctx.opt_labels,
                "history_start": self.history_start,
                "budgets": [[b.name, sorted(b.selector.items())] for b in ctx.budgets],
                "prices": prices,
            },
            sort_keys=True,
        )

    def open(self, now: dt.datetime, prices: str) -> bool:
        """Load the persisted sums if they fit this configuration and the ledger; else fold
        the ledger again. Returns whether a full fold was needed."""
        ledger = self._ledger()
        want = self.fingerprint(prices)
        have = ledger.get_meta(_META_FINGERPRINT)
        rows = ledger.get_meta(_META_ROWS)
        count = ledger.count(self.history_start)
        if have == want and rows is not None and int(rows) == count:
            began = time.monotonic()
            self._load()
            log.info(
                "loaded aggregates of %d ledger rows in %.2fs", count, time.monotonic() - began
            )
            self.roll(now)
            return False
        why = "first start" if have is None else (
            "configuration, prices or layout changed" if have != want else "row count differs"
        )  # fmt: skip
        self.refold(now, prices, why)
        return True

    def refold(self, now: dt.datetime, prices: str, why: str) -> None:
        """Fold the whole ledger from scratch and persist the result, in one transaction
        that holds the ledger (no write can slip between the read and the result)."""
        ledger = self._ledger()
        began = time.monotonic()
        log.warning("folding the whole ledger again (%s); this takes a while once", why)

        def run(db: sqlite3.Connection) -> int:
            with self.lock:
                self.cells = {}
                self.period_start = {
                    p: d.toordinal() for p, d in period_starts(now, self.ctx.tz).items()
                }
            self.fold(ledger.iter_rows(self.history_start))
            self.fold(ledger.revision_rows(self.history_start), revised=True)
            first = now.astimezone(self.ctx.tz).date().toordinal() - self.daily_days
            with self.lock:
                for kind in [k for k in self.cells if k.startswith("y:")]:
                    for key in [k for k in self.cells[kind] if k[0] < first]:  # type: ignore[operator]
                        del self.cells[kind][key]
            count = ledger.count(self.history_start)
            db.execute("DELETE FROM aggregates")
            with self.lock:
                db.executemany("INSERT INTO aggregates VALUES (?, ?, ?, ?)", self._dump())
            meta = {
                _META_FINGERPRINT: self.fingerprint(prices),
                _META_ROWS: str(count),
                **{_META_PERIOD + p: str(d) for p, d in self.period_start.items()},
            }
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            return count

        count = ledger.write(run)
        log.warning(
            "folded %d ledger rows into %d sums in %.1fs",
            count,
            sum(len(c) for c in self.cells.values()),
            time.monotonic() - began,
        )

    def roll(self, now: dt.datetime) -> None:
        """Start the sums of a period that has rolled over (a new day, week or month) from
        the ledger's rows of the new period: work in proportion to that period, not history."""
        ledger = self.ledger
        want = {p: d.toordinal() for p, d in period_starts(now, self.ctx.tz).items()}
        stale = [p for p in PERIODS if self.period_start.get(p) != want[p]]
        if not stale:
            return
        self.prune_days(now)
        if ledger is None:
            # No ledger to start the new period from (a backfill's replay): it starts empty,
            # and the rows folded after this call fill it.
            with self.lock:
                self._drop_cells(tuple(f"p:{p}:" for p in stale))
                self.period_start.update(want)
            return
        began = time.monotonic()
        first = min(want[p] for p in stale)
        # A daily bucket counts on its UTC date, a finer one on its local date: read from the
        # earlier of the two midnights.
        day = dt.date.fromordinal(first)
        since = min(
            int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()),
            int(dt.datetime.combine(day, dt.time(), tzinfo=self.ctx.tz).timestamp()),
        )
        prefixes = tuple(f"p:{p}:" for p in stale)

        def run(db: sqlite3.Connection) -> None:
            scratch = Aggregates(self.ctx)
            scratch.period_start = {p: want[p] for p in stale}
            scratch.fold(ledger.iter_rows(max(since, self.history_start)))
            for prefix in prefixes:
                db.execute("DELETE FROM aggregates WHERE kind GLOB ?", (prefix + "*",))
            rows = [r for r in scratch._dump() if r[0].startswith(prefixes)]
            db.executemany("INSERT INTO aggregates VALUES (?, ?, ?, ?)", rows)
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(_META_PERIOD + p, str(want[p])) for p in stale],
            )
            with self.lock:
                self._drop_cells(prefixes)
                for kind, sums in scratch.cells.items():
                    if kind.startswith(prefixes):
                        self.cells[kind] = sums
                self.period_start.update({p: want[p] for p in stale})

        ledger.write(run)
        log.info("started the sums of %s in %.2fs", "/".join(stale), time.monotonic() - began)

    def _drop_cells(self, prefixes: tuple[str, ...]) -> None:
        """Forget the sums of the kinds starting with `prefixes` (the caller holds the lock)."""
        for kind in [k for k in self.cells if k.startswith(prefixes)]:
            del self.cells[kind]

    def prune_days(self, now: dt.datetime) -> None:
        """Drop exact-day sums of days no longer exposed (older than `daily_days`, with a
        day to spare), so they cost nothing however long the history."""
        first = now.astimezone(self.ctx.tz).date().toordinal() - self.daily_days
        with self.lock:
            for kind in [k for k in self.cells if k.startswith("y:")]:
                sums = self.cells[kind]
                for key in [k for k in sums if k[0] < first]:  # type: ignore[operator]
                    del sums[key]
        if self.ledger is not None:
            self.ledger.write(
                lambda db: db.execute(
                    "DELETE FROM aggregates WHERE kind GLOB 'y:*'"
                    " AND json_extract(key, '$[0]') < ?",
                    (first,),
                )
            )

    # --- persistence helpers ---------------------------------------------------------------

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise RuntimeError("aggregates without a ledger are not persisted")
        return self.ledger

    def _dump(self) -> Iterator[tuple[str, str, str, int]]:
        for kind, sums in self.cells.items():
            for key, (v, n) in sums.items():
                yield kind, _key_text(key), str(v), int(n)

    def _load(self) -> None:
        ledger = self._ledger()

        def read(db: sqlite3.Connection) -> tuple[Cells, dict[str, int]]:
            cells: Cells = {}
            # Label values (and day numbers) recur across thousands of sums: one object each.
            shared: dict[object, object] = {}
            one = shared.setdefault
            cur = db.execute("SELECT kind, key, value, n FROM aggregates")
            while chunk := cur.fetchmany(20_000):
                # One JSON document per chunk, not one per key: the per-call overhead of
                # json.loads was most of loading 200k+ sums.
                keys = json.loads("[" + ",".join([r[1] for r in chunk]) + "]")
                for (kind, _, value, n), key in zip(chunk, keys, strict=True):
                    k = tuple(map(one, key, key))
                    cells.setdefault(kind, {})[k] = (_number(value), n)
            starts = {
                k[len(_META_PERIOD) :]: int(v)
                for k, v in db.execute(
                    "SELECT key, value FROM meta WHERE key GLOB ?", (_META_PERIOD + "*",)
                )
            }
            return cells, starts

        cells, starts = ledger.read(read)
        with self.lock:
            self.cells, self.period_start = cells, starts

    def sums(self, kind: str) -> Mapping[Key, tuple[Number, int]]:
        """The sums of one kind (read under `lock`)."""
        return self.cells.get(kind, {})


def _key_text(key: Key) -> str:
    """The key as compact JSON (what json.dumps gives), each label value encoded once:
    a poll writes some 20k changed sums, whose keys share a few hundred values."""
    parts = _KEY_PARTS
    out = []
    for x in key:
        if type(x) is int:
            out.append(str(x))
            continue
        text = parts.get(x) if type(x) is str else None
        if text is None:
            text = json.dumps(x)
            if type(x) is str:
                if len(parts) > 100_000:
                    parts.clear()
                parts[x] = text  # type: ignore[index]
        out.append(text)
    return "[" + ",".join(out) + "]"


_KEY_PARTS: dict[str, str] = {}


def _write(db: sqlite3.Connection, pending: _Pending) -> None:
    # Generators, not lists: the 20k+ changed sums of a poll are encoded one at a time as
    # SQLite takes them, instead of all held at once at the poll's memory peak.
    gone = ((kind, _key_text(key)) for (kind, key), cell in pending.items() if cell is None)
    kept = (
        (kind, _key_text(key), str(cell[0]), int(cell[1]))
        for (kind, key), cell in pending.items()
        if cell is not None
    )
    db.executemany("DELETE FROM aggregates WHERE kind = ? AND key = ?", gone)
    # An upsert updates the row in place; REPLACE deletes and re-inserts it (in the table
    # and its key index): measured, twice the time for the 20k sums of a poll.
    db.executemany(
        "INSERT INTO aggregates VALUES (?, ?, ?, ?) ON CONFLICT (kind, key)"
        " DO UPDATE SET value = excluded.value, n = excluded.n",
        kept,
    )
