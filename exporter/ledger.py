"""The bucket ledger: every fetched bucket, keyed and replaced, persisted in SQLite.

Why a ledger: counters are recomputed as sums over it, so a restart (or a second replica, or a
wiped state file after backfill) exposes the same values, and a re-fetched bucket *replaces*
its earlier value instead of adding to it. The ledger also remembers, per endpoint, the point
before which buckets are final (never fetched again), and the downward revisions it has seen,
so that exposed counters can stay monotonic while the state lives.

Keys: (provider, account, endpoint, bucket start, operation, dimensions). Writes of one poll
of one endpoint are one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Protocol, TypeVar

from exporter.rows import LEVEL_MEASURES, Bucket, Number, Row

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    provider TEXT NOT NULL, account TEXT NOT NULL, endpoint TEXT NOT NULL,
    bucket_start INTEGER NOT NULL, bucket_end INTEGER NOT NULL,
    operation TEXT NOT NULL, dims TEXT NOT NULL, measures TEXT NOT NULL,
    PRIMARY KEY (provider, account, endpoint, bucket_start, operation, dims)
);
CREATE TABLE IF NOT EXISTS cursors (
    provider TEXT NOT NULL, account TEXT NOT NULL, endpoint TEXT NOT NULL,
    closed_before INTEGER NOT NULL,
    PRIMARY KEY (provider, account, endpoint)
);
CREATE TABLE IF NOT EXISTS revisions (
    provider TEXT NOT NULL, account TEXT NOT NULL, endpoint TEXT NOT NULL,
    bucket_start INTEGER NOT NULL, bucket_end INTEGER NOT NULL, operation TEXT NOT NULL,
    dims TEXT NOT NULL, measure TEXT NOT NULL, amount TEXT NOT NULL,
    PRIMARY KEY (provider, account, endpoint, bucket_start, operation, dims, measure)
);
CREATE INDEX IF NOT EXISTS rows_by_start ON rows (bucket_start);
"""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredRow:
    provider: str
    account: str
    endpoint: str
    start: int
    end: int
    row: Row


@dataclass(frozen=True, slots=True)
class Revision:
    provider: str
    account: str
    operation: str
    start: int  # the revised bucket (so derived counters, e.g. estimates, can be priced)
    end: int
    dims: tuple[tuple[str, str], ...]
    measure: str
    amount: Number  # how much was revised away (positive)


@dataclass(frozen=True, slots=True)
class Change:
    """A row whose content a write changed: its old content goes out (-1), its new in (+1)."""

    sign: int  # -1: content removed, +1: content added
    revised: bool  # a revised-away amount rather than a stored value
    stored: StoredRow


class ChangeObserver(Protocol):
    """Told of every changed row inside the write's transaction (the aggregates)."""

    def stage(self, db: sqlite3.Connection, changes: Iterable[Change], rows_delta: int) -> object:
        """Write what follows from `changes` with `db`; return what `commit` applies."""
        ...

    def commit(self, staged: object) -> None:
        """The transaction committed: apply `staged` in memory."""
        ...


def _dump_measures(measures: Mapping[str, Number]) -> str:
    """Compact JSON, keys sorted: ints stay JSON ints (exact at any size), Decimals become
    strings. Written by hand (the same text json.dumps gives) because every re-fetched row
    is encoded to compare it with what is stored."""
    parts = []
    for k in sorted(measures):
        v = measures[k]
        name = json.dumps(k) if '"' in k or "\\" in k else f'"{k}"'
        parts.append(f'{name}:"{v}"' if isinstance(v, Decimal) else f"{name}:{int(v)}")
    return "{" + ",".join(parts) + "}"


def _load_measures(text: str) -> dict[str, Number]:
    raw = json.loads(text)
    return {k: (Decimal(v) if isinstance(v, str) else int(v)) for k, v in raw.items()}


def _dump_dims(dims: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([list(p) for p in dims], separators=(",", ":"))


def _load_dims(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in json.loads(text))


def _merge(into: dict[str, Number], add: Iterable[tuple[str, Number]]) -> None:
    for k, v in add:
        if k in LEVEL_MEASURES:
            into[k] = max(into.get(k, 0), v)
        else:
            into[k] = into.get(k, 0) + v


class Ledger:
    """SQLite-backed bucket store. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.RLock()  # re-entrant: `write` callbacks may read rows
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        version = self.get_meta("schema_version")
        if version is not None and version != SCHEMA_VERSION:
            # The ledger is a cache of provider data: an older layout is dropped and
            # refetched rather than migrated (history_start is kept, so values come back equal).
            log.warning(
                "state file %s has layout %s, not %s: refetching",
                self.path,
                version,
                SCHEMA_VERSION,
            )
            history = self.get_meta("history_start")
            self._db.executescript(
                "DROP TABLE rows; DROP TABLE cursors; DROP TABLE revisions; DELETE FROM meta;"
                + _SCHEMA
            )
            if history is not None:
                self.set_meta("history_start", history)
        self.set_meta("schema_version", SCHEMA_VERSION)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            cur = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,))
            found = cur.fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- cursors -----------------------------------------------------------------------
    def closed_before(self, provider: str, account: str, endpoint: str) -> int | None:
        """Buckets of this endpoint starting before the returned time are final."""
        with self._lock:
            cur = self._db.execute(
                "SELECT closed_before FROM cursors WHERE provider=? AND account=? AND endpoint=?",
                (provider, account, endpoint),
            )
            found = cur.fetchone()
        return None if found is None else int(found[0])

    def reset_cursors(self, before: int) -> None:
        """Forget finality at or after `before` (history start moved earlier: refetch)."""
        with self._lock:
            self._db.execute(
                "UPDATE cursors SET closed_before = ? WHERE closed_before > ?", (before, before)
            )

    # --- writes --------------------------------------------------------------------------
    def replace(
        self,
        provider: str,
        account: str,
        endpoint: str,
        buckets: Iterable[Bucket],
        closed_before: int | None = None,
        observer: ChangeObserver | None = None,
    ) -> tuple[int, list[Revision]]:
        """Replace the stored content of each given bucket, in one transaction.

        Besides the rows, each (bucket, group, measure) keeps how far its value is below the
        highest value seen (the "revised" amount), so the counters built on it never go down
        and a value that dips and recovers is not counted twice. Level measures (storage
        bytes) go up and down by nature and are never revisions.

        `observer` is told, inside the same transaction, of each row whose content changed
        (and of each changed revised-away amount), so derived aggregates stay consistent with
        the rows whatever the moment the process dies.

        Returns the number of rows written and the new drops found in this write.
        """
        written = 0
        drops: list[Revision] = []
        changes: list[Change] = []
        rows_delta = 0
        dims_text: dict[tuple[tuple[str, str], ...], str] = {}  # a group recurs every bucket
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for bucket in buckets:
                    where = (provider, account, endpoint, bucket.start)
                    new: dict[tuple[str, str], dict[str, Number]] = {}
                    for row in bucket.rows:
                        text = dims_text.get(row.dims)
                        if text is None:
                            text = dims_text[row.dims] = _dump_dims(row.dims)
                        into = new.get((row.operation, text))
                        if into is None:  # a group's first row in the bucket (the usual case)
                            new[(row.operation, text)] = dict(row.measures)
                        else:
                            _merge(into, row.measures.items())
                    texts = {key: _dump_measures(m) for key, m in new.items()}
                    stored = db.execute(
                        "SELECT operation, dims, measures, bucket_end FROM rows WHERE provider=?"
                        " AND account=? AND endpoint=? AND bucket_start=?",
                        where,
                    ).fetchall()
                    if len(stored) == len(texts) and all(
                        texts.get((op, dims)) == text and end == bucket.end
                        for op, dims, text, end in stored
                    ):
                        written += len(new)  # unchanged (a closed bucket fetched again)
                        continue
                    old: dict[tuple[str, str], dict[str, Number]] = {
                        (op, dims): _load_measures(text) for op, dims, text, _ in stored
                    }
                    old_rev: dict[tuple[str, str, str], Number] = {
                        (op, dims, m): _parse_number(amount)
                        for op, dims, m, amount in db.execute(
                            "SELECT operation, dims, measure, amount FROM revisions WHERE provider=?"
                            " AND account=? AND endpoint=? AND bucket_start=?",
                            where,
                        )
                    }
                    measures_of: dict[tuple[str, str], set[str]] = defaultdict(set)
                    for key, values in old.items():
                        measures_of[key].update(values)
                    for op, dims, m in old_rev:
                        measures_of[(op, dims)].add(m)
                    new_rev: dict[tuple[str, str, str], Number] = {}
                    for (op, dims), names in measures_of.items():
                        for m in names - LEVEL_MEASURES:
                            before = old_rev.get((op, dims, m), 0)
                            peak = old.get((op, dims), {}).get(m, 0) + before
                            below = peak - new.get((op, dims), {}).get(m, 0)
                            if below > 0:
                                new_rev[(op, dims, m)] = below
                            if below > before:
                                drops.append(
                                    Revision(
                                        provider,
                                        account,
                                        op,
                                        bucket.start,
                                        bucket.end,
                                        _load_dims(dims),
                                        m,
                                        below - before,
                                    )
                                )
                    for table in ("rows", "revisions"):
                        db.execute(
                            f"DELETE FROM {table} WHERE provider=? AND account=? AND endpoint=?"
                            " AND bucket_start=?",
                            where,
                        )
                    db.executemany(
                        "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (*where, bucket.end, op, dims, text)
                            for (op, dims), text in texts.items()
                        ],
                    )
                    db.executemany(
                        "INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (*where, bucket.end, op, dims, m, str(amount))
                            for (op, dims, m), amount in new_rev.items()
                        ],
                    )
                    written += len(new)
                    if observer is not None:
                        rows_delta += len(new) - len(old)
                        head = (provider, account, endpoint, bucket.start, bucket.end)
                        _diff(changes, head, old, new, False)
                        _diff(changes, head, _by_group(old_rev), _by_group(new_rev), True)
                if closed_before is not None:
                    db.execute(
                        "INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT (provider, account, endpoint)"
                        " DO UPDATE SET closed_before = max(closed_before, excluded.closed_before)",
                        (provider, account, endpoint, closed_before),
                    )
                staged = None if observer is None else observer.stage(db, changes, rows_delta)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if observer is not None:
                observer.commit(staged)
        for rev in drops:
            log.warning(
                "provider revised %s/%s %s %s down by %s",
                provider,
                account,
                rev.operation,
                rev.measure,
                rev.amount,
            )
        return written, drops

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction (committed if it returns, rolled back if not)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return result

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the connection, alone (reads see one consistent state)."""
        with self._lock:
            return fn(self._db)

    def forget(self, provider: str, account: str, observer: ChangeObserver | None = None) -> None:
        """Drop everything stored for one account (its shape changed): it is refetched.
        `observer` is told of every removed row, in the same transaction."""
        where = (provider, account)

        def removed(db: sqlite3.Connection) -> Iterator[Change]:
            for p, a, e, s, end, op, dims, measures in db.execute(
                "SELECT provider, account, endpoint, bucket_start, bucket_end, operation, dims,"
                " measures FROM rows WHERE provider=? AND account=?",
                where,
            ):
                row = Row(op, _load_dims(dims), _load_measures(measures))
                yield Change(-1, False, StoredRow(p, a, e, int(s), int(end), row))
            for sr in self.revision_rows(0, where):
                yield Change(-1, True, sr)

        def drop(db: sqlite3.Connection) -> object:
            staged = None
            if observer is not None:
                n = db.execute(
                    "SELECT count(*) FROM rows WHERE provider=? AND account=?", where
                ).fetchone()[0]
                staged = observer.stage(db, removed(db), -int(n))
            for table in ("rows", "revisions", "cursors"):
                db.execute(f"DELETE FROM {table} WHERE provider=? AND account=?", where)
            return staged

        staged = self.write(drop)
        if observer is not None:
            observer.commit(staged)

    # --- reads ---------------------------------------------------------------------------
    def rows(self, since: int = 0) -> Iterator[StoredRow]:
        """Every stored row whose bucket starts at or after `since`, in key order."""
        return self._select(since, "ORDER BY provider, account, endpoint, bucket_start")

    def iter_rows(self, since: int = 0, ordered: bool = False) -> Iterator[StoredRow]:
        """Every stored row whose bucket starts at or after `since`, streamed (constant
        memory, for folding the whole ledger), in bucket-start order if `ordered`."""
        return self._select(since, "ORDER BY bucket_start" if ordered else "")

    def _select(self, since: int, order: str, batch: int = 20_000) -> Iterator[StoredRow]:
        """Rows streamed in batches; holds the ledger while it runs."""
        with self._lock:
            cur = self._db.execute(
                "SELECT provider, account, endpoint, bucket_start, bucket_end, operation, dims,"
                f" measures FROM rows WHERE bucket_start >= ? {order}",
                (since,),
            )
            parsed: dict[str, tuple[tuple[str, str], ...]] = {}  # a group recurs every bucket
            while chunk := cur.fetchmany(batch):
                for p, a, e, s, end, op, dims, measures in chunk:
                    key = parsed.get(dims)
                    if key is None:
                        if len(parsed) > 100_000:
                            parsed.clear()
                        key = parsed[dims] = _load_dims(dims)
                    yield StoredRow(
                        p, a, e, int(s), int(end), Row(op, key, _load_measures(measures))
                    )

    def revision_rows(
        self, since: int = 0, account: tuple[str, str] | None = None
    ) -> list[StoredRow]:
        """Revised-away amounts as rows, one per (endpoint, bucket, group), as `replace`
        reports them to its observer; all accounts', or one (provider, account)'s."""
        sql = (
            "SELECT provider, account, endpoint, bucket_start, bucket_end, operation, dims,"
            " measure, amount FROM revisions WHERE bucket_start >= ?"
        )
        args: tuple[object, ...] = (since,)
        if account is not None:
            sql += " AND provider = ? AND account = ?"
            args += account
        with self._lock:
            fetched = self._db.execute(sql, args).fetchall()
        grouped: dict[tuple[str, str, str, int, int, str, str], dict[str, Number]] = {}
        for p, a, e, s, end, op, dims, m, amount in fetched:
            grouped.setdefault((p, a, e, int(s), int(end), op, dims), {})[m] = _parse_number(amount)
        return [
            StoredRow(p, a, e, s, end, Row(op, _load_dims(dims), measures))
            for (p, a, e, s, end, op, dims), measures in grouped.items()
        ]

    def revisions(self, since: int = 0) -> list[Revision]:
        """How far each (bucket, group, measure) is below the highest value seen for it."""
        with self._lock:
            fetched = self._db.execute(
                "SELECT provider, account, operation, bucket_start, bucket_end, dims, measure, amount"
                " FROM revisions WHERE bucket_start >= ? ORDER BY provider, account, endpoint,"
                " bucket_start",
                (since,),
            ).fetchall()
        return [
            Revision(p, a, op, int(s), int(e), _load_dims(d), m, _parse_number(v))
            for p, a, op, s, e, d, m, v in fetched
        ]

    def count(self, since: int = 0) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM rows WHERE bucket_start >= ?", (since,)
                ).fetchone()[0]
            )


_Groups = dict[tuple[str, str], dict[str, Number]]  # (operation, dims json) -> measures


def _by_group(amounts: dict[tuple[str, str, str], Number]) -> _Groups:
    out: _Groups = {}
    for (op, dims, m), v in amounts.items():
        out.setdefault((op, dims), {})[m] = v
    return out


def _diff(
    changes: list[Change],
    head: tuple[str, str, str, int, int],
    old: _Groups,
    new: _Groups,
    revised: bool,
) -> None:
    """The groups of one bucket whose measures differ between `old` and `new`."""
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        op, text = key
        dims = _load_dims(text)
        for sign, measures in ((-1, before), (1, after)):
            if measures is not None:
                changes.append(Change(sign, revised, StoredRow(*head, Row(op, dims, measures))))


def _parse_number(text: str) -> Number:
    try:
        return int(text)
    except ValueError:
        return Decimal(text)
