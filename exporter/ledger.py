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

import datetime as dt
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol, TypeVar

from exporter.exposition import gc_paused
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
CREATE TABLE IF NOT EXISTS digests (
    provider TEXT NOT NULL, account TEXT NOT NULL, endpoint TEXT NOT NULL,
    bucket_start INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (provider, account, endpoint, bucket_start)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS rows_deleted AFTER DELETE ON rows BEGIN
    DELETE FROM digests WHERE provider = OLD.provider AND account = OLD.account
        AND endpoint = OLD.endpoint AND bucket_start = OLD.bucket_start;
END;
CREATE TRIGGER IF NOT EXISTS rows_updated AFTER UPDATE ON rows BEGIN
    DELETE FROM digests WHERE provider = OLD.provider AND account = OLD.account
        AND endpoint = OLD.endpoint AND bucket_start = OLD.bucket_start;
    DELETE FROM digests WHERE provider = NEW.provider AND account = NEW.account
        AND endpoint = NEW.endpoint AND bucket_start = NEW.bucket_start;
END;
CREATE TRIGGER IF NOT EXISTS rows_inserted AFTER INSERT ON rows BEGIN
    DELETE FROM digests WHERE provider = NEW.provider AND account = NEW.account
        AND endpoint = NEW.endpoint AND bucket_start = NEW.bucket_start;
END;
"""
# `digests`: per stored bucket, a digest of the content last written (see `_digest`), so a
# bucket fetched again unchanged is recognised without reading its rows back. The triggers
# drop a bucket's digest whenever any of its rows is inserted, deleted or changed, by
# whatever path (removing unreadable rows, forgetting an account, an older version of the
# exporter, a hand edit), so a digest only ever describes the rows as they are: `replace`
# writes it after the rows. (A row an INSERT OR REPLACE removes belongs to the bucket the
# inserted row names, whose digest the insert trigger drops.)

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


def _measure_name(k: str) -> str:
    """A measure name as a JSON string (escaped only when it must be: names are plain)."""
    return json.dumps(k) if '"' in k or "\\" in k else f'"{k}"'


def _dump_measures_slow(measures: Mapping[str, Number]) -> str:
    """`_dump_measures` for any values (Decimals as strings, bools as ints)."""
    parts = []
    for k in sorted(measures):
        v = measures[k]
        name = _measure_name(k)
        parts.append(f'{name}:"{v}"' if isinstance(v, Decimal) else f"{name}:{int(v)}")
    return "{" + ",".join(parts) + "}"


# Measure names as a row lists them -> (the names sorted, a %-template of the JSON text for
# int values). Rows of one endpoint share a handful of name sets, so encoding a row is one
# lookup and one `%`; a mix of types (a Decimal, a bool) takes the slow path.
_TEMPLATES: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}


def _template(names: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """Build (and keep) the sorted names and the int template for a set of measure names."""
    order = tuple(sorted(names))
    parts = [_measure_name(k).replace("%", "%%") + ":%d" for k in order]
    if len(_TEMPLATES) > 10_000:
        _TEMPLATES.clear()
    found = _TEMPLATES[names] = (order, "{" + ",".join(parts) + "}")
    return found


def _dump_measures(measures: Mapping[str, Number]) -> str:
    """Compact JSON, keys sorted: ints stay JSON ints (exact at any size), Decimals become
    strings. Written by hand (the same text json.dumps gives), with a template per set of
    measure names, because every re-fetched row is encoded to compare it with what is
    stored: at 115k rows a poll, this is a good part of a poll's cost."""
    names = tuple(measures)
    found = _TEMPLATES.get(names)
    order, template = _template(names) if found is None else found
    values = tuple([measures[k] for k in order])
    for v in values:
        if type(v) is not int:
            return _dump_measures_slow(measures)
    return template % values


def _digest(end: int, texts: Mapping[tuple[str, str], str]) -> bytes:
    """A bucket's content as written (its end, each row's operation, dims and measures text,
    in the order fetched), digested: joined in C, hashed with BLAKE2b (128 bits), so a
    poll's 48 unchanged buckets cost a lookup each rather than reading 115k rows back and
    comparing them. A provider that lists rows in another order only misses the shortcut.

    The joined form must say one content only. Dims and measures are JSON (no raw control
    character), but an operation is the provider's text: when the separators do not occur
    exactly as often as the joins put them, a text holds one of them, and the content is
    digested through `repr` (quoted and escaped; four times slower)."""
    n = len(texts)
    keys = "\n".join(map("\x00".join, texts))
    values = "\n".join(texts.values())
    if keys.count("\x00") != n or keys.count("\n") != n - 1 or values.count("\n") != n - 1:
        keys, values = repr(list(texts)), repr(list(texts.values()))
    h = hashlib.blake2b(b"%d %d %d %d\n" % (end, n, len(keys), len(values)), digest_size=16)
    h.update(keys.encode("utf-8", "surrogatepass"))
    h.update(values.encode("utf-8", "surrogatepass"))
    return h.digest()


class BadRowError(ValueError):
    """A stored row (or revised amount) that cannot be read back: hand-edited, or damaged."""


def _load_measures(text: str) -> dict[str, Number]:
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise BadRowError(f"measures are not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BadRowError("measures are not a JSON object")
    out: dict[str, Number] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise BadRowError(f"measure {k!r} is not a number")
        out[k] = _parse_number(v) if isinstance(v, str) else v
    return out


def _dump_dims(dims: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([list(p) for p in dims], separators=(",", ":"))


def _well_formed(dims: object) -> bool:
    """Whether `dims` is a tuple of (str, str) pairs: what `_load_dims` gives back."""
    return type(dims) is tuple and all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is str for p in dims
    )


def _load_dims(text: str) -> tuple[tuple[str, str], ...]:
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise BadRowError(f"dimensions are not JSON ({exc})") from None
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw
    ):
        raise BadRowError("dimensions are not a list of [name, value] pairs")
    return tuple((k, v) for k, v in raw)


@dataclass(frozen=True, slots=True)
class BadRow:
    """Where a row that could not be read lies, and why (shown on `/` and in logs)."""

    table: str  # "rows" or "revisions"

    @property
    def what(self) -> str:
        return "row" if self.table == "rows" else "revised amount"

    provider: str
    account: str
    endpoint: str
    start: int
    rowid: int
    problem: str


class StateFileError(Exception):
    """The state file cannot be opened as a ledger; the message names it and what to do."""


def _check_state_file(db: sqlite3.Connection) -> str | None:
    """None if SQLite finds the file sound, else what it found (first problem)."""
    try:
        found = db.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if found is not None and found[0] == "ok" else str(found[0] if found else "?")


# --- the clean-shutdown record ------------------------------------------------------------
# `PRAGMA quick_check` reads the whole file (about 4 s at 5M rows, 1.8 GB). A ledger closed
# cleanly writes `<state>.clean`: the file's identity (device, inode, size, mtime and ctime in
# ns) once SQLite has checkpointed and removed its WAL. A start that finds the record still
# describing the file, and no WAL beside it, skips the check: nothing has written to the file
# since a clean close. Any crash, kill -9, disk-full exit or change since (a copy, a restore,
# damage: the size or a timestamp moves; ctime cannot be set back from user space) leaves no
# record or one that no longer matches, and the full check runs as before. Opening the ledger
# removes the record first, before anything is written.
CLEAN_RECORD_VERSION = 1


def clean_record_path(path: Path | str) -> Path:
    return Path(f"{path}.clean")


def _identity(path: Path | str) -> dict[str, int]:
    st = os.stat(path)
    return {
        "version": CLEAN_RECORD_VERSION,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _wal_in_use(path: Path | str) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except FileNotFoundError:
        return False


def closed_cleanly(path: Path | str) -> bool:
    """True if the record written by the last clean close still describes the file (and no
    WAL holds writes): the file is as SQLite left it after a full checkpoint."""
    try:
        record = json.loads(clean_record_path(path).read_text())
        return not _wal_in_use(path) and bool(record == _identity(path))
    except (OSError, ValueError):
        return False


def _write_clean_record(path: Path | str) -> None:
    """After a clean close: record the file's identity (atomically; best effort)."""
    if not os.path.isfile(path) or _wal_in_use(path):
        return  # no file, or another connection kept the WAL: no clean record
    target = clean_record_path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(_identity(path), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("state file %s: could not write the clean-shutdown record: %s", path, exc)
        tmp.unlink(missing_ok=True)


def _drop_clean_record(path: Path | str) -> None:
    try:
        clean_record_path(path).unlink(missing_ok=True)
    except OSError as exc:  # e.g. a read-only directory: the identity check still guards
        log.warning("state file %s: could not remove the clean-shutdown record: %s", path, exc)


def state_file_problem(path: Path) -> str | None:
    """Check an existing state file without changing it (read-only): None if it is usable
    (or does not exist yet), else one line naming the file and what to do. A file closed
    cleanly and unchanged since is not read (see `closed_cleanly`). A filesystem with less
    than MIN_FREE_BYTES free is a problem too: the exporter could not start on it."""
    free = _free_bytes(path)
    if free is not None and free < MIN_FREE_BYTES:
        return (
            f"state file {path}: its filesystem has {free} bytes free (at least "
            f"{MIN_FREE_BYTES // 1024} KiB needed): free space or point state_file at "
            "another volume"
        )
    if not path.exists():
        return None
    if not path.is_file():
        return f"state file {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"state file {path} is not readable by this user"
    if closed_cleanly(path):
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return _corrupt_message(path, str(exc))
    try:
        problem = _check_state_file(db)
        if problem is None:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if tables and "meta" not in tables:
                problem = "it is an SQLite database, but not this exporter's state file"
    except sqlite3.Error as exc:
        problem = str(exc)
    finally:
        db.close()
    return None if problem is None else _corrupt_message(path, problem)


MIN_FREE_BYTES = 64 * 1024  # below this, writing the state file (and its WAL) cannot start
_STORAGE_PROBLEMS = ("disk is full", "readonly database", "disk I/O error", "unable to open")


def _corrupt_message(path: Path | str, problem: str) -> str:
    problem = " ".join(problem.replace("*** in database main ***", "").split())
    if any(p in problem for p in _STORAGE_PROBLEMS):
        # Not a damaged file: moving it aside (--state.recover) would not help.
        free = _free_bytes(path)
        return (
            f"state file {path} cannot be written ({problem}"
            + (f"; {free} bytes free on its filesystem" if free is not None else "")
            + "): free space or make its directory writable, or point state_file at "
            "another volume"
        )
    return (
        f"state file {path} is damaged or not a state file ({problem}): restart with "
        "--state.recover (or state_recover: true) to move it aside and refetch from the "
        "providers, or point state_file at another path"
    )


def _free_bytes(path: Path | str) -> int | None:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def move_aside(path: Path, now: dt.datetime) -> Path:
    """Rename a damaged state file (and its -wal/-shm companions) out of the way, never
    deleting it; returns the new name."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


def salvage_history_start(path: Path) -> str | None:
    """The history start kept in a damaged state file, if it can still be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = db.execute("SELECT value FROM meta WHERE key = 'history_start'").fetchone()
        finally:
            db.close()
        return None if found is None else dt.date.fromisoformat(str(found[0])).isoformat()
    except (sqlite3.Error, ValueError):
        return None


def seen_groups(path: Path) -> list[dict[str, str]] | None:
    """The distinct groups the state file holds rows for, each as its labels (provider,
    account, operation and dimensions), read without changing the file; None if there is
    no file or it cannot be read as a ledger. What `--config.check` matches selectors with."""
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = db.execute(
                "SELECT DISTINCT provider, account, operation, dims FROM rows"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    groups = []
    for p, a, op, dims in found:
        try:
            labels = dict(_load_dims(dims))
        except BadRowError:
            continue  # noted by the exporter when it reads the row
        labels.update(provider=str(p), account=str(a), operation=str(op))
        groups.append(labels)
    return groups


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
        self._closed = False
        # Rows found unreadable, not yet removed (see `quarantine`), and the buckets removed
        # for that which the provider has not given back yet.
        self._bad: dict[tuple[str, int], BadRow] = {}
        self.bad_rows = BadRowLog()
        self.awaiting: set[tuple[str, str, str, int]] = set()
        # Whether the file is as a clean close left it (then the full check is skipped); the
        # record goes before anything is written, so a crash from here on leaves none.
        self.check_skipped = os.path.isfile(self.path) and closed_cleanly(self.path)
        _drop_clean_record(self.path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if self.check_skipped:
                log.info(
                    "state file %s: unchanged since a clean stop: integrity check skipped",
                    self.path,
                )
            else:
                began = time.monotonic()
                problem = _check_state_file(self._db)
                if problem is not None:
                    raise StateFileError(_corrupt_message(self.path, problem))
                log.info(
                    "state file %s: integrity checked (quick_check) in %.2f s",
                    self.path,
                    time.monotonic() - began,
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateFileError(_corrupt_message(self.path, str(exc))) from None
        try:
            self._check_layout()
        except sqlite3.Error as exc:  # a full disk, a read-only volume
            self._db.close()
            raise StateFileError(_corrupt_message(self.path, str(exc))) from None

    def _check_layout(self) -> None:
        """Drop a state file of another layout (it is refetched), then record this one."""
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
                "DROP TABLE rows; DROP TABLE cursors; DROP TABLE revisions;"
                " DROP TABLE IF EXISTS digests; DELETE FROM meta;" + _SCHEMA
            )
            if history is not None:
                self.set_meta("history_start", history)
        self.set_meta("schema_version", SCHEMA_VERSION)

    def close(self) -> None:
        """Close the file once no transaction is running (waits for the one that is)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            _write_clean_record(self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- rows that cannot be read ----------------------------------------------------------
    def _found_bad(self, bad: BadRow) -> None:
        """Note an unreadable row met by a read; `quarantine` removes it later."""
        with self._lock:
            if (bad.table, bad.rowid) in self._bad:
                return
            self._bad[(bad.table, bad.rowid)] = bad
        log.error(
            "state file %s: unreadable %s (%s/%s %s bucket %d): %s",
            self.path,
            bad.what,
            bad.provider,
            bad.account,
            bad.endpoint,
            bad.start,
            bad.problem,
        )

    def quarantine(self, reach: int) -> list[BadRow]:
        """Remove the unreadable rows met since the last call, in one transaction, and move
        each endpoint's cursor back to the first bucket removed inside `reach` (the history
        start: the poller fetches that far), so the provider's value comes back. The sums
        then no longer match the rows: `refold_wanted` tells when to fold them again."""
        with self._lock:
            found = list(self._bad.values())
            self._bad.clear()
            if not found or self._closed:
                return []

            def drop(db: sqlite3.Connection) -> None:
                for bad in found:
                    if not _still_unreadable(db, bad):
                        continue  # rewritten meanwhile (its rowid may even be reused)
                    db.execute(f"DELETE FROM {bad.table} WHERE rowid = ?", (bad.rowid,))
                    if bad.start >= reach:
                        db.execute(
                            "UPDATE cursors SET closed_before = min(closed_before, ?)"
                            " WHERE provider=? AND account=? AND endpoint=?",
                            (bad.start, bad.provider, bad.account, bad.endpoint),
                        )
                db.execute("INSERT OR REPLACE INTO meta VALUES ('refold_wanted', '1')")

            self.write(drop)
            for bad in found:
                self.bad_rows.add(bad)
                if bad.start >= reach:
                    self.awaiting.add((bad.provider, bad.account, bad.endpoint, bad.start))
        for bad in found:
            log.warning(
                "removed the unreadable %s of %s/%s %s bucket %d; %s",
                bad.what,
                bad.provider,
                bad.account,
                bad.endpoint,
                bad.start,
                "it is refetched from the provider"
                if bad.start >= reach
                else "it lies before the history start (not counted)",
            )
        return found

    def refetched(self, provider: str, account: str, endpoint: str, since: int) -> None:
        """A poll of this endpoint from `since` succeeded: its removed buckets are back."""
        with self._lock:
            self.awaiting = {
                k for k in self.awaiting if k[:3] != (provider, account, endpoint) or k[3] < since
            }

    def refold_wanted(self) -> bool:
        """Unreadable rows were removed (or replaced) and every removed bucket inside reach
        has been fetched again: the sums must be folded from the rows again."""
        with self._lock:
            return not self.awaiting and self.get_meta("refold_wanted") == "1"

    def refolded(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM meta WHERE key = 'refold_wanted'")

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
        # ... and back: the text of well-formed dims -> the rows' own tuple, so a changed
        # row's dims are neither decoded again nor held twice (what `_load_dims` would give).
        dims_of: dict[str, tuple[tuple[str, str], ...]] = {}
        with self._lock, gc_paused():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for bucket in buckets:
                    where = (provider, account, endpoint, bucket.start)
                    # The row's own measures unless a group recurs (then a merged copy).
                    new: dict[tuple[str, str], Mapping[str, Number]] = {}
                    for row in bucket.rows:
                        text = dims_text.get(row.dims)
                        if text is None:
                            text = dims_text[row.dims] = _dump_dims(row.dims)
                            if _well_formed(row.dims):
                                dims_of[text] = row.dims
                        key = (row.operation, text)
                        into = new.get(key)
                        if into is None:  # a group's first row in the bucket (the usual case)
                            new[key] = row.measures
                        else:
                            merged = dict(into)
                            _merge(merged, row.measures.items())
                            new[key] = merged
                    texts = {key: _dump_measures(m) for key, m in new.items()}
                    digest = _digest(bucket.end, texts) if texts else None
                    if digest is not None and db.execute(
                        "SELECT digest FROM digests WHERE provider=? AND account=?"
                        " AND endpoint=? AND bucket_start=?",
                        where,
                    ).fetchone() == (digest,):
                        written += len(new)  # unchanged (a closed bucket fetched again)
                        continue
                    stored: list[tuple[str, str, str, int]] = db.execute(
                        "SELECT operation, dims, measures, bucket_end FROM rows WHERE provider=?"
                        " AND account=? AND endpoint=? AND bucket_start=?",
                        where,
                    ).fetchall()
                    if len(stored) == len(texts) and all(
                        texts.get((op, dims)) == text and end == bucket.end
                        for op, dims, text, end in stored
                    ):
                        written += len(new)  # unchanged, but with no digest yet
                        if digest is not None:
                            db.execute(
                                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)",
                                (*where, digest),
                            )
                        continue
                    old, old_rev, unreadable = _stored_bucket(db, where, stored, dims_of)
                    if unreadable:
                        # What the sums hold for the unreadable part is unknown: it is
                        # replaced here, and the sums are folded again after this poll.
                        log.error(
                            "state file %s: %s/%s %s bucket %d: %s; replacing it with the "
                            "provider's value",
                            self.path,
                            provider,
                            account,
                            endpoint,
                            bucket.start,
                            unreadable,
                        )
                        self.bad_rows.add(
                            BadRow("rows", provider, account, endpoint, bucket.start, 0, unreadable)
                        )
                        db.execute("INSERT OR REPLACE INTO meta VALUES ('refold_wanted', '1')")
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
                    if digest is not None:  # after the rows: their deletion dropped the old one
                        db.execute(
                            "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)",
                            (*where, digest),
                        )
                    written += len(new)
                    if observer is not None:
                        rows_delta += len(new) - len(old)
                        head = (provider, account, endpoint, bucket.start, bucket.end)
                        _diff(changes, head, old, new, False, dims_of)
                        _diff(changes, head, _by_group(old_rev), _by_group(new_rev), True, dims_of)
                    # The old content now lives on only in `changes`, let go as it is folded.
                    del old, old_rev, new_rev, measures_of, stored, texts
                if closed_before is not None:
                    db.execute(
                        "INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT (provider, account, endpoint)"
                        " DO UPDATE SET closed_before = max(closed_before, excluded.closed_before)",
                        (provider, account, endpoint, closed_before),
                    )
                staged = (
                    None if observer is None else observer.stage(db, _drained(changes), rows_delta)
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
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
                _rollback(db)
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
            parsed: dict[str, tuple[tuple[str, str], ...]] = {}
            for raw in db.execute(
                "SELECT rowid, provider, account, endpoint, bucket_start, bucket_end, operation,"
                " dims, measures FROM rows WHERE provider=? AND account=?",
                where,
            ).fetchall():
                sr = self._read_row(raw, parsed)
                if sr is not None:
                    yield Change(-1, False, sr)
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
            # Unreadable rows of this account are gone with it; what the sums held for them
            # is unknown, so they are folded again.
            gone = [k for k, bad in self._bad.items() if (bad.provider, bad.account) == where]
            for k in gone:
                del self._bad[k]
            if gone:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('refold_wanted', '1')")
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
        """Rows streamed in batches, unreadable ones left out (and noted: see `quarantine`);
        holds the ledger while it runs."""
        with self._lock:
            cur = self._db.execute(
                "SELECT rowid, provider, account, endpoint, bucket_start, bucket_end, operation,"
                f" dims, measures FROM rows WHERE bucket_start >= ? {order}",
                (since,),
            )
            parsed: dict[str, tuple[tuple[str, str], ...]] = {}  # a group recurs every bucket
            while chunk := cur.fetchmany(batch):
                for raw in chunk:
                    sr = self._read_row(raw, parsed)
                    if sr is not None:
                        yield sr

    def _read_row(
        self, raw: tuple[object, ...], parsed: dict[str, tuple[tuple[str, str], ...]]
    ) -> StoredRow | None:
        """A `rows` row (rowid first) as a StoredRow; None (and noted) if it is unreadable."""
        rowid, p, a, e, s, end, op, dims, measures = raw
        try:
            key = parsed.get(dims) if isinstance(dims, str) else None
            if key is None:
                key = _load_dims(dims)  # type: ignore[arg-type]
                if len(parsed) > 100_000:
                    parsed.clear()
                parsed[dims] = key  # type: ignore[index]
            if not all(isinstance(x, str) for x in (p, a, e, op)):
                raise BadRowError("a key column is not text")
            if not isinstance(s, int) or not isinstance(end, int) or end <= s:
                raise BadRowError("bucket bounds are not increasing integers")
            return StoredRow(p, a, e, s, end, Row(op, key, _load_measures(measures)))  # type: ignore[arg-type]
        except BadRowError as exc:
            self._found_bad(
                BadRow("rows", str(p), str(a), str(e), _int_or(s), int(rowid), str(exc))  # type: ignore[call-overload]
            )
            return None

    def revision_rows(
        self, since: int = 0, account: tuple[str, str] | None = None
    ) -> list[StoredRow]:
        """Revised-away amounts as rows, one per (endpoint, bucket, group), as `replace`
        reports them to its observer; all accounts', or one (provider, account)'s."""
        sql = (
            "SELECT rowid, provider, account, endpoint, bucket_start, bucket_end, operation, dims,"
            " measure, amount FROM revisions WHERE bucket_start >= ?"
        )
        args: tuple[object, ...] = (since,)
        if account is not None:
            sql += " AND provider = ? AND account = ?"
            args += account
        with self._lock:
            fetched = self._db.execute(sql, args).fetchall()
        grouped: dict[tuple[str, str, str, int, int, str, str], dict[str, Number]] = {}
        dims_of: dict[str, tuple[tuple[str, str], ...]] = {}
        for rowid, p, a, e, s, end, op, dims, m, amount in fetched:
            try:
                if dims not in dims_of:
                    dims_of[dims] = _load_dims(dims)
                value = _parse_number(amount)
            except BadRowError as exc:
                self._found_bad(BadRow("revisions", p, a, e, _int_or(s), rowid, str(exc)))
                continue
            grouped.setdefault((p, a, e, int(s), int(end), op, dims), {})[m] = value
        return [
            StoredRow(p, a, e, s, end, Row(op, dims_of[dims], measures))
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
        out = []
        for p, a, op, s, e, d, m, v in fetched:
            try:
                out.append(Revision(p, a, op, int(s), int(e), _load_dims(d), m, _parse_number(v)))
            except BadRowError:
                continue  # noted and removed by `revision_rows` / `quarantine`
        return out

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


def _drained(changes: list[Change]) -> Iterator[Change]:
    """The changes in order, each let go once handed out: the old content of a poll's
    changed rows is freed while they are folded, not held to the poll's memory peak."""
    queue = deque(changes)
    changes.clear()
    while queue:
        yield queue.popleft()


def _diff(
    changes: list[Change],
    head: tuple[str, str, str, int, int],
    old: Mapping[tuple[str, str], Mapping[str, Number]],
    new: Mapping[tuple[str, str], Mapping[str, Number]],
    revised: bool,
    dims_of: Mapping[str, tuple[tuple[str, str], ...]],
) -> None:
    """The groups of one bucket whose measures differ between `old` and `new`."""
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        op, text = key
        dims = dims_of.get(text)
        if dims is None:
            dims = _load_dims(text)
        for sign, measures in ((-1, before), (1, after)):
            if measures is not None:
                changes.append(Change(sign, revised, StoredRow(*head, Row(op, dims, measures))))


def _parse_number(text: str) -> Number:
    try:
        return int(text)
    except ValueError:
        pass
    except TypeError:
        raise BadRowError(f"{text!r} is not a number") from None
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError):
        raise BadRowError(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise BadRowError(f"{text!r} is not a finite number")
    return value


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it does by itself on some
    errors, e.g. a full disk: a second ROLLBACK would then hide the real error)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _still_unreadable(db: sqlite3.Connection, bad: BadRow) -> bool:
    if bad.table == "rows":
        found = db.execute(
            "SELECT dims, measures, bucket_start, bucket_end FROM rows WHERE rowid = ?",
            (bad.rowid,),
        ).fetchone()
    else:
        found = db.execute(
            "SELECT dims, amount, bucket_start, bucket_start + 1 FROM revisions WHERE rowid = ?",
            (bad.rowid,),
        ).fetchone()
    if found is None:
        return False
    dims, value, start, end = found
    try:
        _load_dims(dims)
        if bad.table == "rows":
            _load_measures(value)
        else:
            _parse_number(value)
        if not isinstance(start, int) or not isinstance(end, int) or end <= start:
            return True
    except BadRowError:
        return True
    return False


def _int_or(value: object) -> int:
    return value if isinstance(value, int) else 0


def _stored_bucket(
    db: sqlite3.Connection,
    where: tuple[str, str, str, int],
    stored: list[tuple[str, str, str, int]],
    known: Mapping[str, object],
) -> tuple[_Groups, dict[tuple[str, str, str], Number], str]:
    """The stored rows and revised amounts of one bucket, leaving out what cannot be read;
    the third value says what was left out ("" if nothing). Dims texts in `known` were
    just encoded from well-formed dims: they read back (not decoded again to check)."""
    problems: list[str] = []
    old: _Groups = {}
    for op, dims, text, _ in stored:
        try:
            if dims not in known:
                _load_dims(dims)
            old[(op, dims)] = _load_measures(text)
        except BadRowError as exc:
            problems.append(f"unreadable row ({exc})")
    old_rev: dict[tuple[str, str, str], Number] = {}
    for op, dims, m, amount in db.execute(
        "SELECT operation, dims, measure, amount FROM revisions WHERE provider=?"
        " AND account=? AND endpoint=? AND bucket_start=?",
        where,
    ):
        try:
            if dims not in known:
                _load_dims(dims)
            old_rev[(op, dims, m)] = _parse_number(amount)
        except BadRowError as exc:
            problems.append(f"unreadable revision ({exc})")
    return old, old_rev, "; ".join(problems)


class BadRowLog:
    """How many unreadable rows were met since start, and the last few (for `/`)."""

    def __init__(self) -> None:
        self.total = 0
        self.recent: list[BadRow] = []
        self._lock = threading.Lock()

    def add(self, bad: BadRow) -> None:
        with self._lock:
            self.total += 1
            self.recent = [*self.recent[-9:], bad]

    def snapshot(self) -> tuple[int, list[BadRow]]:
        with self._lock:
            return self.total, list(self.recent)
