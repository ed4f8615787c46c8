"""Gateway request log: the JSON-lines cost-tracking log an LLM proxy writes, tailed.

Teams that route their LLM calls through their own gateway log every request, one JSON
object per line::

    {"timestamp": "2024-12-19T18:59:02.123456Z", "request_id": "chatcmpl-abc123",
     "user_id": "token:sk-abc123", "ip_address": "192.168.1.1", "provider": "openai",
     "model": "gpt-4o", "endpoint": "/openai/v1/chat/completions", "is_streaming": false,
     "input_tokens": 50, "output_tokens": 25, "total_tokens": 75, "input_cost": 0.00075,
     "output_cost": 0.00075, "total_cost": 0.0015, "finish_reason": "stop"}

Config: ``providers.proxy_log: [{account: gateway, options: {path: /var/log/...jsonl}}]``.
``path`` may be a glob (``cost-tracking.jsonl*``) so rotated files (``.1``, ``.2.gz``) are
read too. No key and no HTTP: the source reads files.

How it fits the poller's window/bucket model
--------------------------------------------
The poller asks for the buckets of a window and the ledger *replaces* each bucket it gets.
A log, though, is a stream: once a line is read the file may be rotated away, compressed or
truncated. So the source keeps its own per-bucket partial aggregates, in its own tables of
the state file (the ledger's SQLite file), and answers every window from them:

1. **Read** the new complete lines of every file the glob matches (outside any transaction),
   parse them, and skip bad ones (counted in ``llm_source_payload_errors_total`` and logged
   with file and line number, never the line's content).
2. **Commit**, in one SQLite transaction: the lines' contributions to the hourly aggregates
   (``proxy_log_buckets``: requests, input and output tokens, exact Decimal cost per hour
   and group), their request ids (``proxy_log_ids``) and each file's new offset
   (``proxy_log_files``). A kill -9 before the commit leaves the old offsets *and* the old
   aggregates (the lines are read again); after it, both are new. Nothing is counted twice
   or lost whichever instant the process dies. Large reads commit every 20,000 lines.
   A stopping exporter ends a long read between chunks (what was committed stays).
3. **Answer** the window from the aggregates, summed into buckets of the configured width.
   The ledger replaces those buckets, so a window asked again (the ledger's write failed or
   was killed, the account's shape changed and its history is refetched) gives the same
   totals, and a restart never needs the files already rotated away.

**Revision horizon** (``options.horizon``, default 1 day, at least one bucket): a bucket
that started before ``now - horizon`` (aligned down to the width) is final, for the ledger
and for this source alike (both compute it from the poll's ``now``). A line that arrives for
a final bucket cannot reach the ledger any more: it is skipped, counted as a payload error
and logged (one line per file and poll). On a first start (or a new state file) nothing is
final yet, so the whole log is read.

**Exactly once.** A request id is remembered while its bucket is open: a line whose id was
already counted (the same line in a rotated copy, a copytruncate overlap, a proxy that logs a
retry twice) is skipped. Once a bucket is final its ids are dropped (the table stays the
size of the open window): a repeat of such a line is then late, and skipped as such.

**File identity** (as log shippers do it): device and inode, checked against a fingerprint
of the file's first bytes (up to 1 KiB, of the decompressed content for ``.gz``). Each file
content is one entry with its offset and line count. A renamed file (``mv`` rotation) keeps
its entry; a copy (``copytruncate``'s ``.1``, a compressed ``.2.gz``) is recognised by its
fingerprint and read on from the offset already reached, so lines written between the last
poll and the rotation are read from the copy, once. A file whose head no longer matches its
inode's entry, or that is shorter than its offset (truncated), starts a new entry at 0. A
partial last line (no newline yet) is left for the next poll, except at the end of a
``.gz`` file, which is complete by nature. Entries of files gone from the glob for 7 days
are dropped.

**Privacy.** ``user_id`` carries a key prefix (``token:sk-...``), so it never becomes a label
or enters the state file as is: the source keeps ``u_`` + the first 16 hex digits of
HMAC-SHA256(salt, user_id). The salt is read from the variable named by
``options.user_salt_env`` (default ``LLM_PROXY_USER_SALT``); without one, a random salt is
made once and kept in the state file (stable across restarts; set the variable so replicas
or a new state file give the same labels; a new salt labels only lines read after it).
``options.users`` maps a user (its ``user_id`` or its ``u_`` label) to a name to show
instead. Rows carry it as ``gateway_user`` (exposed as ``user``), so the gateway's users are
ranked for folding among themselves: past ``cardinality.max_values`` the long tail folds
into ``other``, as opt-in labels do. ``ip_address`` is never read.

**Metrics** (own names, so nothing adds up with the providers' organisation data):
``llm_proxy_requests_total``, ``llm_proxy_tokens_total{token_type}``,
``llm_proxy_cost_usd_total`` (the log's own ``total_cost``, exact) and
``llm_proxy_cost_estimated_usd_total`` (genai-prices), labelled ``provider`` (the upstream
the record names), ``account`` (this proxy account), ``model``, ``user``, ``endpoint``,
``finish_reason``; ``llm_proxy_daily_tokens`` per day feeds the gateway coverage rules.
"""

from __future__ import annotations

import datetime as dt
import glob
import gzip
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from pydantic import Field, field_validator

from exporter import rows
from exporter.pricing import ProviderPricing
from exporter.rows import Bucket, Number, Row
from exporter.schema import AccountSettings, Duration, Strict
from exporter.sources import (
    DAY,
    HOUR,
    Adapter,
    Endpoint,
    StateStore,
    horizon_option,
    parse_options,
)
from exporter.sources._http import ApiClient, Cancelled, SourceError

log = logging.getLogger(__name__)

REQUESTS = "requests"  # the one endpoint
IO = "io"  # failure reason: the log cannot be read (a label value)
FINGERPRINT = 1024  # bytes of a file's head that identify its content
CHUNK = 20_000  # lines per transaction on a large read
BLOCK = 1 << 20  # bytes read at a time
FORGET_AFTER = 7 * DAY  # a file entry unseen this long is dropped
_WIDE = Context(prec=60)
_DIGEST = re.compile(r"^u_[0-9a-f]{16}$")

_TABLES = (
    """CREATE TABLE IF NOT EXISTS proxy_log_files (
        account TEXT NOT NULL, id INTEGER NOT NULL, fp TEXT NOT NULL, fp_len INTEGER NOT NULL,
        dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, offset INTEGER NOT NULL, line INTEGER NOT NULL,
        name TEXT NOT NULL, seen INTEGER NOT NULL, PRIMARY KEY (account, id))""",
    """CREATE TABLE IF NOT EXISTS proxy_log_buckets (
        account TEXT NOT NULL, hour INTEGER NOT NULL, dims TEXT NOT NULL,
        requests INTEGER NOT NULL, input INTEGER NOT NULL, output INTEGER NOT NULL,
        cost TEXT NOT NULL, PRIMARY KEY (account, hour, dims))""",
    """CREATE TABLE IF NOT EXISTS proxy_log_ids (
        account TEXT NOT NULL, request_id TEXT NOT NULL, hour INTEGER NOT NULL,
        PRIMARY KEY (account, request_id))""",
    "CREATE INDEX IF NOT EXISTS proxy_log_ids_by_hour ON proxy_log_ids (account, hour)",
    """CREATE TABLE IF NOT EXISTS proxy_log_meta (
        account TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (account, key))""",
)


class ProxyLogOptions(Strict):
    """`options` of a proxy_log account."""

    # The log file, or a glob that also covers its rotated files (cost-tracking.jsonl*).
    path: str = Field(min_length=1)
    # A bucket that started longer ago than this is final: lines arriving for it are late.
    horizon: Duration | None = None
    # The variable holding the salt of the user hash (unset: a random salt kept in state).
    user_salt_env: str = Field(default="LLM_PROXY_USER_SALT", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # user_id (or its u_... label) -> the name to show as the `user` label.
    users: dict[str, str] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
                raise ValueError(
                    f"{name!r}: a user name is 1 to 64 letters, digits or _ . @ - "
                    "(it becomes a label value)"
                )
        return value


@dataclass(slots=True)
class Record:
    """One request from the log, parsed (the user already hashed; the ip never kept)."""

    hour: int
    request_id: str
    dims: str  # JSON [upstream, model, user digest, endpoint, finish_reason]
    input: int
    output: int
    cost: Decimal
    where: tuple[str, int]  # (file, line) for messages


@dataclass(slots=True)
class FileEntry:
    """One file content: where reading got to, and what identifies it."""

    id: int
    fp: str
    fp_len: int
    dev: int
    ino: int
    size: int
    mtime_ns: int
    offset: int
    line: int
    name: str
    seen: int


def _fingerprint(head: bytes, n: int) -> str:
    return hashlib.sha256(head[:n]).hexdigest()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int | None:
    """A token count: a non-negative integer (an integral JSON number is accepted) that fits
    the ledger's 64-bit integers; anything else makes the line a bad line."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= rows.MAX_COUNT else None
    if isinstance(value, Decimal):
        n = rows.bounded_count(value)
        return n if n is not None and n >= 0 else None
    return None


def _money(value: object) -> Decimal | None:
    """A cost: a finite, non-negative number (or numeric string) up to rows.MAX_AMOUNT, exact."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    return d if d.is_finite() and 0 <= d <= rows.MAX_AMOUNT else None


def _timestamp(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp())


class ProxyLogSource:
    """Tails the gateway's cost-tracking log (see the module docstring)."""

    provider = "proxy_log"

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        del group_by  # the labels are fixed
        self.cancel = client.cancel  # set when the exporter stops: a long read ends early
        opts = parse_options(ProxyLogOptions, account.options)
        if bucket_width % HOUR or DAY % bucket_width:
            raise ValueError(f"bucket_width: must be 1h or 1d, not {bucket_width}s")
        self.account = account.account
        self.pattern = os.path.expanduser(opts.path)
        if os.path.isdir(self.pattern):
            raise ValueError(
                f"options.path: {opts.path} is a directory: give the log file, or a glob "
                "such as cost-tracking.jsonl*"
            )
        self.width = bucket_width
        self.horizon = horizon_option(opts.horizon, "horizon", DAY, bucket_width)
        self.salt_env = opts.user_salt_env
        self.users = dict(opts.users)
        self.payload_errors: dict[str, int] = {REQUESTS: 0}
        self.late = 0  # lines skipped because their bucket was final
        self.duplicates = 0  # lines skipped because their request id was counted
        self._store: StateStore | None = None
        self._waiting = False  # no file matched at the last poll (warned once)
        self._salt = b""
        self._names: dict[str, str] = {}  # user digest -> configured name
        self._digests: dict[str, str] = {}  # user_id -> digest (a poll's users recur)
        self._dims: dict[tuple[str, ...], str] = {}  # dims -> their JSON text

    # --- the Source interface ----------------------------------------------------------
    def endpoints(self) -> Sequence[Endpoint]:
        return [Endpoint(REQUESTS, self.width, self.horizon)]

    def attach_state(self, store: StateStore) -> None:
        """Create this source's tables in the state file and settle the user salt."""
        self._store = store
        salt = os.environ.get(self.salt_env, "")

        def init(db: sqlite3.Connection) -> str:
            for sql in _TABLES:
                db.execute(sql)
            if salt:
                return salt
            found = db.execute(
                "SELECT value FROM proxy_log_meta WHERE account=? AND key='salt'",
                (self.account,),
            ).fetchone()
            if found is not None:
                return str(found[0])
            made = secrets.token_hex(16)
            db.execute("INSERT INTO proxy_log_meta VALUES (?, 'salt', ?)", (self.account, made))
            log.info(
                "proxy_log/%s: user labels are hashed with a random salt kept in the state "
                "file; set %s to share them across replicas",
                self.account,
                self.salt_env,
            )
            return made

        self._salt = store.write(init).encode()
        self._names = {
            (k if _DIGEST.match(k) else self._digest(k)): v for k, v in self.users.items()
        }

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        """Read what the log added, commit it with the offsets, then answer [start, end)
        from the stored aggregates."""
        store = self._store
        if store is None:
            raise RuntimeError("proxy_log source used before attach_state()")
        final = self._final(store)
        entries = store.read(self._load_entries)
        paths = self._matches()
        reader = _Reader(self, store, entries, final, end)
        for path in paths:
            reader.read_file(path)
        reader.finish(max(final, end - self.horizon - (end - self.horizon) % self.width))
        return self._buckets(store, start, end)

    # --- user labels -----------------------------------------------------------------------
    def _digest(self, user_id: str) -> str:
        if not user_id:
            return ""
        found = self._digests.get(user_id)
        if found is None:
            mac = hmac.new(self._salt, user_id.encode("utf-8", "replace"), hashlib.sha256)
            if len(self._digests) > 100_000:
                self._digests.clear()
            found = self._digests[user_id] = "u_" + mac.hexdigest()[:16]
        return found

    # --- reading -----------------------------------------------------------------------
    def _matches(self) -> list[tuple[str, os.stat_result]]:
        """The files the glob matches, oldest first (rotated files before the live one)."""
        found = []
        for name in glob.glob(self.pattern):
            try:
                st = os.stat(name)
            except FileNotFoundError:
                continue  # rotated away between the glob and the stat
            except OSError as exc:
                raise SourceError(IO, f"cannot read {name}: {exc.strerror}") from None
            if os.path.isfile(name):
                found.append((name, st))
        if not found:
            folder = os.path.dirname(self.pattern) or "."
            if glob.has_magic(folder) or not os.path.isdir(folder):
                raise SourceError(IO, f"no directory {folder}: check options.path ({self.pattern})")
            # The gateway has not logged yet: not a failure (an account that never polls
            # successfully would hide every budget whose scope covers it).
            if not self._waiting:
                log.warning(
                    "proxy_log/%s: no file matches %s yet: waiting for the gateway's log",
                    self.account,
                    self.pattern,
                )
            self._waiting = True
            return []
        self._waiting = False
        found.sort(key=lambda f: (f[1].st_mtime_ns, f[0]))
        return found

    def parse(self, raw: bytes, where: tuple[str, int]) -> Record | str:
        """One line as a Record, or what is wrong with it (never its content)."""
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError):
            return "not JSON"
        if not isinstance(obj, dict):
            return "not a JSON object"
        ts = _timestamp(obj.get("timestamp"))
        if ts is None:
            return "timestamp missing or not ISO 8601"
        request_id = _text(obj.get("request_id"))
        if not request_id:
            return "request_id missing"
        upstream, model = _text(obj.get("provider")), _text(obj.get("model"))
        if not upstream or not model:
            return "provider or model missing"
        tokens = []
        for name in ("input_tokens", "output_tokens"):
            if name not in obj:
                return f"{name} missing"
            n = _count(obj[name])
            if n is None:
                return f"{name} is not a non-negative integer"
            tokens.append(n)
        if "total_cost" not in obj:
            return "total_cost missing"
        cost = _money(obj["total_cost"])
        if cost is None:
            return "total_cost is not a non-negative number"
        user = obj.get("user_id")
        key = (
            upstream,
            model,
            self._digest(user if isinstance(user, str) else ""),
            _text(obj.get("endpoint")) or "",
            _text(obj.get("finish_reason")) or "",
        )
        dims = self._dims.get(key)
        if dims is None:
            if len(self._dims) > 100_000:
                self._dims.clear()
            dims = self._dims[key] = json.dumps(key, separators=(",", ":"))
        return Record(ts - ts % HOUR, request_id, dims, tokens[0], tokens[1], cost, where)

    # --- state ---------------------------------------------------------------------------
    def _final(self, store: StateStore) -> int:
        """Buckets starting before this are final (0 before the first poll)."""

        def get(db: sqlite3.Connection) -> int:
            found = db.execute(
                "SELECT value FROM proxy_log_meta WHERE account=? AND key='final_before'",
                (self.account,),
            ).fetchone()
            return 0 if found is None else int(found[0])

        return store.read(get)

    def _load_entries(self, db: sqlite3.Connection) -> list[FileEntry]:
        return [
            FileEntry(*r)
            for r in db.execute(
                "SELECT id, fp, fp_len, dev, ino, size, mtime_ns, offset, line, name, seen"
                " FROM proxy_log_files WHERE account=? ORDER BY id",
                (self.account,),
            )
        ]

    def _buckets(self, store: StateStore, start: int, end: int) -> list[Bucket]:
        def read(db: sqlite3.Connection) -> list[tuple[int, str, int, int, int, str]]:
            return db.execute(
                "SELECT hour, dims, requests, input, output, cost FROM proxy_log_buckets"
                " WHERE account=? AND hour >= ? AND hour < ? ORDER BY hour",
                (self.account, start, end - end % self.width + self.width),
            ).fetchall()

        sums: dict[int, dict[tuple[str, ...], list[Number]]] = defaultdict(dict)
        for hour, dims, requests, tin, tout, cost in store.read(read):
            b = hour - hour % self.width
            if not start <= b < end:
                continue
            upstream, model, user, endpoint, finish = json.loads(dims)
            key = (upstream, model, self._names.get(user, user), endpoint, finish)
            cell = sums[b].setdefault(key, [0, 0, 0, Decimal(0)])
            cell[0] += requests
            cell[1] += tin
            cell[2] += tout
            cell[3] = _WIDE.add(Decimal(cell[3]), Decimal(cost))
        out = []
        for b in sorted(sums):
            bucket_rows = [
                Row.make(
                    rows.PROXY,
                    {
                        "upstream": upstream,
                        "model": model,
                        "gateway_user": user,
                        "endpoint": endpoint,
                        "finish_reason": finish,
                    },
                    {
                        rows.REQUESTS: int(n),
                        rows.token_measure("input"): int(tin),
                        rows.token_measure("output"): int(tout),
                        rows.COST: Decimal(cost),
                    },
                )
                for (upstream, model, user, endpoint, finish), (n, tin, tout, cost) in sorted(
                    sums[b].items()
                )
            ]
            out.append(Bucket(REQUESTS, b, b + self.width, bucket_rows))
        return out


class _Reader:
    """One poll's reading: lines parsed outside transactions, committed in chunks together
    with the offsets they moved."""

    def __init__(
        self,
        src: ProxyLogSource,
        store: StateStore,
        entries: list[FileEntry],
        final: int,
        now: int,
    ) -> None:
        self.src, self.store, self.entries, self.final, self.now = src, store, entries, final, now
        self.pending: list[Record] = []
        self.touched: dict[int, FileEntry] = {}
        self.errors = 0
        self.next_id = max((e.id for e in entries), default=0) + 1

    # --- identity ------------------------------------------------------------------------
    def _entry(self, name: str, st: os.stat_result, head: bytes, gz: bool) -> FileEntry:
        matching = [
            e
            for e in self.entries
            if e.fp_len <= len(head) and _fingerprint(head, e.fp_len) == e.fp
        ]
        same = [e for e in matching if (e.dev, e.ino) == (st.st_dev, st.st_ino)]
        ranked = same or sorted(matching, key=lambda e: -e.fp_len)
        found: FileEntry | None = ranked[0] if ranked else None
        if found is not None and not gz and st.st_size < found.offset:
            # Truncated below what was read, and rewritten with the same first bytes.
            log.info("proxy_log/%s: %s was truncated: reading it again", self.src.account, name)
            found.offset = found.line = 0
        if found is None:
            n = min(len(head), FINGERPRINT)
            found = FileEntry(
                self.next_id, _fingerprint(head, n), n, st.st_dev, st.st_ino, 0, 0, 0, 0, name, 0
            )
            self.next_id += 1
            self.entries.append(found)
            log.info("proxy_log/%s: reading %s from its start", self.src.account, name)
        if found.fp_len < min(len(head), FINGERPRINT):  # the file grew: a longer fingerprint
            found.fp_len = min(len(head), FINGERPRINT)
            found.fp = _fingerprint(head, found.fp_len)
        if not gz:  # a compressed copy is not where the live file is
            found.dev, found.ino = st.st_dev, st.st_ino
        found.name, found.seen = name, self.now
        self.touched[found.id] = found
        return found

    def read_file(self, target: tuple[str, os.stat_result]) -> None:
        name, st = target
        gz = name.endswith(".gz")
        try:
            head = _head(name, gz)
        except FileNotFoundError:
            return
        except PermissionError:
            raise SourceError(
                IO, f"cannot read {name}: permission denied: let the exporter's user read it"
            ) from None
        except (OSError, EOFError, zlib.error) as exc:
            # A .gz being written by the rotation (no trailer yet) is read next time.
            log.info("proxy_log/%s: %s not readable yet: %s", self.src.account, name, exc)
            return
        if not head:
            return  # empty: nothing to identify it by yet
        entry = self._entry(name, st, head, gz)
        unchanged = (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
        if (gz and unchanged) or (not gz and st.st_size == entry.offset):
            return  # nothing new
        try:
            for raw, offset in _lines(name, gz, entry.offset):
                entry.line += 1
                if not raw.strip():
                    entry.offset = offset
                    continue
                got = self.src.parse(raw, (name, entry.line))
                if isinstance(got, str):
                    self.errors += 1
                    log.warning(
                        "proxy_log/%s: %s line %d skipped: %s",
                        self.src.account,
                        name,
                        entry.line,
                        got,
                    )
                else:
                    self.pending.append(got)
                entry.offset = offset
                if len(self.pending) >= CHUNK:
                    self.commit()
                    if self.src.cancel.is_set():
                        raise Cancelled
        except FileNotFoundError:
            return
        except (OSError, EOFError, zlib.error) as exc:
            log.info("proxy_log/%s: %s read up to a problem: %s", self.src.account, name, exc)
        if gz:  # read to its end: never read again unless it changes
            entry.size, entry.mtime_ns = st.st_size, st.st_mtime_ns
        else:
            entry.size = st.st_size
        self.commit()

    # --- commit ----------------------------------------------------------------------------
    def commit(self, final: int | None = None) -> None:
        """The pending lines, the offsets they moved (and the new finality), at once."""
        acc = self.src.account
        records, errors = self.pending, self.errors
        late: dict[str, list[int]] = defaultdict(list)
        dup = 0

        def run(db: sqlite3.Connection) -> None:
            nonlocal dup
            add: dict[tuple[int, str], list[Number]] = {}
            for rec in records:
                if rec.hour < self.final:
                    late[rec.where[0]].append(rec.where[1])
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO proxy_log_ids VALUES (?, ?, ?)",
                    (acc, rec.request_id, rec.hour),
                )
                if cur.rowcount == 0:
                    dup += 1
                    continue
                cell = add.setdefault((rec.hour, rec.dims), [0, 0, 0, Decimal(0)])
                cell[0] += 1
                cell[1] += rec.input
                cell[2] += rec.output
                cell[3] = _WIDE.add(Decimal(cell[3]), rec.cost)
            for (hour, dims), (n, tin, tout, cost) in add.items():
                old = db.execute(
                    "SELECT requests, input, output, cost FROM proxy_log_buckets"
                    " WHERE account=? AND hour=? AND dims=?",
                    (acc, hour, dims),
                ).fetchone()
                if old is not None:
                    n, tin, tout = n + old[0], tin + old[1], tout + old[2]
                    cost = _WIDE.add(Decimal(cost), Decimal(old[3]))
                db.execute(
                    "INSERT OR REPLACE INTO proxy_log_buckets VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (acc, hour, dims, n, tin, tout, str(cost)),
                )
            for e in self.touched.values():  # every entry this poll met, at its offset now
                db.execute(
                    "INSERT OR REPLACE INTO proxy_log_files VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (acc, *_entry_values(e)),
                )
            if final is not None:
                db.execute(
                    "INSERT OR REPLACE INTO proxy_log_meta VALUES (?, 'final_before', ?)",
                    (acc, str(final)),
                )
                db.execute("DELETE FROM proxy_log_ids WHERE account=? AND hour < ?", (acc, final))
                db.execute(
                    "DELETE FROM proxy_log_files WHERE account=? AND seen < ?",
                    (acc, self.now - FORGET_AFTER),
                )

        self.store.write(run)
        self.pending, self.errors = [], 0
        self.src.payload_errors[REQUESTS] += errors + sum(len(v) for v in late.values())
        self.src.late += sum(len(v) for v in late.values())
        self.src.duplicates += dup
        for name, lines in late.items():
            log.warning(
                "proxy_log/%s: %s: %d line(s) from line %d on are for buckets already final "
                "(older than options.horizon): skipped",
                acc,
                name,
                len(lines),
                lines[0],
            )
        if dup:
            log.info("proxy_log/%s: %d request(s) already counted were skipped", acc, dup)

    def finish(self, final: int) -> None:
        self.commit(final)
        self.final = final


def _entry_values(e: FileEntry) -> tuple[object, ...]:
    return (e.id, e.fp, e.fp_len, e.dev, e.ino, e.size, e.mtime_ns, e.offset, e.line, e.name,
            e.seen)  # fmt: skip


def _head(name: str, gz: bool) -> bytes:
    """The first FINGERPRINT bytes of the file's content (decompressed for .gz)."""
    if gz:
        with gzip.open(name, "rb") as f:
            return f.read(FINGERPRINT)
    with open(name, "rb") as f:
        return f.read(FINGERPRINT)


def _lines(name: str, gz: bool, offset: int) -> Iterator[tuple[bytes, int]]:
    """Complete lines from `offset` on, each with the offset just past it. A last line
    without a newline is held back (the writer has not finished it), except in a .gz file."""
    f: Any
    with gzip.open(name, "rb") if gz else open(name, "rb") as f:
        if gz:
            left = offset
            while left > 0:
                skipped = f.read(min(left, BLOCK))
                if not skipped:
                    return
                left -= len(skipped)
        else:
            f.seek(offset)
        pos = offset
        rest = b""
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            data = rest + block
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                line = data[start:nl]
                pos += nl + 1 - start
                start = nl + 1
                yield line, pos
            rest = data[start:]
        if gz and rest:
            yield rest, pos + len(rest)


ADAPTER = Adapter(
    name="proxy_log",
    build=ProxyLogSource,
    options=ProxyLogOptions,
    base_url=None,
    key_env=None,
    pricing=ProviderPricing(),
)

__all__ = ["ADAPTER", "ProxyLogOptions", "ProxyLogSource"]
