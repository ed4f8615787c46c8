"""The ledger as rows for people and FinOps tools: CSV, JSON Lines and FOCUS.

Why: finance teams do not read PromQL; they want the exact numbers the counters are made of,
in a spreadsheet or a FinOps tool. The ledger already holds them, per bucket and revised, so
an export is a read of the state file: no provider is asked, and it works while the exporter
runs (its own read-only SQLite connection, one read transaction: a consistent snapshot that
never blocks the writer).

What a line is, and why the totals equal the counters exactly: each stored row becomes the
lines `fold.fold_row` would count it as. A usage row gives one line per token type (tokens
and their estimate, priced by the same `PriceBook.estimate_dims` call as the counter) and one
line (token_type "") with its other units (requests, images, characters, audio seconds,
sessions, tool calls) and their estimate (`estimate_units`). A cost row gives one line with
its reported cost. Like the counters, which keep the highest value a bucket ever had, a
bucket revised down appears at that peak as usage plus a `correction` line with the
revised-away amount negated: usage lines sum to the counters, all lines sum to what the
provider reports now. Claude Code report rows are left out (their tokens are the messages
report's again, counted apart), and so are a gateway's request log rows (the providers'
own reports bill the same requests) and storage levels (bytes stored, not consumed).

Lines are summed per period (`grain`: UTC day or hour; a daily bucket cannot be split and
stays one line at its first hour) and key, in bucket order: memory holds one period.
Money is `Decimal` throughout and written as plain decimals, never floats.
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import io
import itertools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.ledger import BadRowError, StoredRow, _load_dims, _load_measures, _parse_number
from exporter.rows import (
    AUDIO_SECONDS,
    CHARACTERS,
    COST,
    IMAGES,
    PROXY,
    REQUESTS,
    SESSIONS,
    TOKENS,
    TOOL_CALLS,
    Row,
)

if TYPE_CHECKING:
    from exporter.fold import RowPricer

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "focus")
GRAINS = {"day": 86400, "hour": 3600}
USAGE, CORRECTION = "usage", "correction"
CLAUDE_CODE = "claude_code"  # fold.CLAUDE_CODE: its own report, never summed with usage
# A gateway's request log (rows.PROXY): the same requests the providers' own reports bill,
# seen from the gateway; exported, they would be summed with them and counted twice.
NOT_EXPORTED = frozenset({CLAUDE_CODE, PROXY})

# Units besides tokens, in column order, and the `PriceBook.estimate_units` unit of each.
UNIT_MEASURES = (REQUESTS, IMAGES, CHARACTERS, AUDIO_SECONDS, SESSIONS, TOOL_CALLS)
_PRICED_UNITS = {REQUESTS: "request", CHARACTERS: "character", AUDIO_SECONDS: "audio_second"}
# Dimensions written as columns besides provider, account, operation, token type, currency.
DIMS = (
    "project",
    "model",
    "service_tier",
    "batch",
    "context_window",
    "user",
    "api_key",
    "tool",
    "line_item",
    "size",
    "source",
)
EXACT = Context(prec=60)  # as fold.SUM_CONTEXT: sums never round


class ExportError(ValueError):
    """A request the user can fix; `param` names the flag or query parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True, slots=True)
class ExportRequest:
    start: int  # first bucket start included (UTC seconds)
    end: int  # bucket starts before this are included
    fmt: str
    grain: str


def _when(text: str) -> int:
    """`2026-11-01` (UTC midnight) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp())
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def iso_day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def parse_request(
    params: Mapping[str, str | None], history_start: int, now: float, name: Callable[[str], str]
) -> ExportRequest:
    """Check `from`, `to`, `format` and `grain`; `name` spells a parameter as the caller
    shows it (`--from` or `from`). `from` defaults to the history start, `to` (exclusive) to
    the end of the current UTC day, so the default range is all the counters hold."""
    fmt = params.get("format") or "csv"
    if fmt not in FORMATS:
        raise ExportError(name("format"), f"{fmt!r} is not one of {', '.join(FORMATS)}")
    grain = params.get("grain") or "day"
    if grain not in GRAINS:
        raise ExportError(name("grain"), f"{grain!r} is not one of {', '.join(GRAINS)}")
    bounds: dict[str, int] = {}
    for key in ("from", "to"):
        text = params.get(key)
        if not text:
            continue
        try:
            bounds[key] = _when(text)
        except ValueError:
            raise ExportError(
                name(key), f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time"
            ) from None
    start = bounds.get("from", history_start)
    end = bounds.get("to", int(now) - int(now) % 86400 + 86400)
    if start >= end:
        exclusive = f"({name('to')} is exclusive: from 2026-11-01 to 2026-12-01 is November)"
        if "from" in bounds:
            problem = f"{iso_day(start)} must be before {name('to')} {iso_day(end)} {exclusive}"
            raise ExportError(name("from"), problem)
        problem = f"{iso_day(end)} must be after {name('from')} {iso_day(start)} {exclusive}"
        raise ExportError(name("to"), problem)
    if start < history_start:
        raise ExportError(
            name("from"),
            f"{iso_day(start)} is before the history start {iso_day(history_start)}: the "
            "ledger holds nothing the counters count before it (set history_start earlier "
            "in the configuration to fetch more)",
        )
    return ExportRequest(start, end, fmt, grain)


# --- reading the state file -----------------------------------------------------------------


def open_state(path: Path | str) -> sqlite3.Connection:
    """The state file, read-only, in one read transaction (a consistent snapshot; the
    exporter keeps writing meanwhile: WAL readers do not block the writer)."""
    if not Path(path).is_file():
        raise ExportError("state_file", f"{path} does not exist: run the exporter once to fill it")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        db.execute("BEGIN")
        db.execute("SELECT count(*) FROM rows WHERE 0").fetchone()
    except sqlite3.Error as exc:
        raise ExportError("state_file", f"{path} cannot be read as a state file ({exc})") from None
    return db


def stored_history_start(db: sqlite3.Connection) -> str | None:
    found = db.execute("SELECT value FROM meta WHERE key = 'history_start'").fetchone()
    return None if found is None else str(found[0])


_COLUMNS = "provider, account, endpoint, bucket_start, bucket_end, operation, dims"


def _rows(db: sqlite3.Connection, start: int, end: int) -> Iterator[tuple[StoredRow, bool]]:
    cur = db.execute(
        f"SELECT {_COLUMNS}, measures FROM rows WHERE bucket_start >= ? AND bucket_start < ?"
        " ORDER BY bucket_start",
        (start, end),
    )
    while chunk := cur.fetchmany(5000):
        for p, a, e, s, en, op, dims, measures in chunk:
            try:
                yield (
                    StoredRow(p, a, e, s, en, Row(op, _load_dims(dims), _load_measures(measures))),
                    False,
                )
            except BadRowError as exc:
                log.warning("export: skipping an unreadable row of %s/%s %s: %s", p, a, e, exc)


def _revisions(db: sqlite3.Connection, start: int, end: int) -> Iterator[tuple[StoredRow, bool]]:
    """Revised-away amounts as rows, one per (bucket, group), as the ledger reports them."""
    cur = db.execute(
        f"SELECT {_COLUMNS}, measure, amount FROM revisions WHERE bucket_start >= ?"
        f" AND bucket_start < ? ORDER BY bucket_start, {_COLUMNS}",
        (start, end),
    )
    for (p, a, e, s, en, op, dims), group in itertools.groupby(cur, key=lambda r: r[:7]):
        try:
            measures = {m: _parse_number(v) for *_, m, v in group}
            yield StoredRow(p, a, e, s, en, Row(op, _load_dims(dims), measures)), True
        except BadRowError as exc:
            log.warning("export: skipping an unreadable revision of %s/%s %s: %s", p, a, e, exc)


def stored(db: sqlite3.Connection, start: int, end: int) -> Iterator[tuple[StoredRow, bool]]:
    """Rows and revised-away amounts of buckets starting in [start, end), in bucket order."""
    return heapq.merge(_rows(db, start, end), _revisions(db, start, end), key=lambda x: x[0].start)


# --- rows -> lines ---------------------------------------------------------------------------


@dataclass(slots=True)
class Line:
    """One output line: a key and the sums of what was exported under it."""

    period_start: int
    period_end: int
    charge: str  # "usage" or "correction" (a downward revision, negated)
    provider: str
    account: str
    operation: str
    token_type: str  # "" on a line of other units, or on a cost line without one
    currency: str  # "" on a usage line (no money reported on it)
    price_source: str  # of the estimate; "" when there is none
    dims: tuple[str, ...]  # values of DIMS
    tokens: int = 0
    units: dict[str, int] = field(default_factory=dict)
    reported: Decimal | None = None
    estimated: dict[str, Decimal] = field(default_factory=dict)  # "tokens" or unit -> USD
    unpriced: bool = False  # tokens the price database cannot price

    def key(self) -> tuple[object, ...]:
        return (
            self.period_start,
            self.period_end,
            self.provider,
            self.account,
            self.operation,
            self.dims,
            self.token_type,
            self.currency,
            self.price_source,
            self.charge,
        )

    @property
    def estimated_cost(self) -> Decimal | None:
        if not self.estimated:
            return None
        total = Decimal(0)
        for usd in self.estimated.values():
            total = EXACT.add(total, usd)
        return total

    def add(self, other: Line) -> None:
        self.tokens += other.tokens
        for k, v in other.units.items():
            self.units[k] = self.units.get(k, 0) + v
        if other.reported is not None:
            self.reported = EXACT.add(self.reported or Decimal(0), other.reported)
        for k, d in other.estimated.items():
            self.estimated[k] = EXACT.add(self.estimated.get(k, Decimal(0)), d)
        self.unpriced = self.unpriced or other.unpriced

    def negated(self) -> Line:
        return Line(
            self.period_start,
            self.period_end,
            CORRECTION,
            self.provider,
            self.account,
            self.operation,
            self.token_type,
            self.currency,
            self.price_source,
            self.dims,
            -self.tokens,
            {k: -v for k, v in self.units.items()},
            None if self.reported is None else EXACT.minus(self.reported),
            {k: EXACT.minus(v) for k, v in self.estimated.items()},
            self.unpriced,
        )


def period(sr: StoredRow, grain: str) -> tuple[int, int]:
    """The period a bucket is summed into: its UTC day or hour (a longer bucket keeps its
    own bounds: a daily bucket cannot be split into hours)."""
    width = GRAINS[grain]
    start = sr.start - sr.start % width
    return start, max(sr.end, start + width)


def lines_of(sr: StoredRow, revised: bool, pricer: RowPricer, grain: str) -> list[Line]:
    """The lines one stored row (or revised-away amount) adds, as `fold_row` counts it."""
    row = sr.row
    if row.operation in NOT_EXPORTED:
        return []
    m = row.measures
    labels = dict(row.dims)
    labels.update(provider=sr.provider, account=sr.account, operation=row.operation)
    head = (*period(sr, grain), USAGE, sr.provider, sr.account, row.operation)
    dims = tuple(labels.get(d, "") for d in DIMS)
    if COST in m:
        cost = Line(*head, row.dim("token_type"), row.dim("currency") or "usd", "", dims)
        cost.reported = Decimal(m[COST])
        out = [cost]
    else:
        out = _usage_lines(sr, labels, head, dims, pricer)
    if revised:
        out += [line.negated() for line in out]
    return out


def _usage_lines(
    sr: StoredRow,
    labels: Mapping[str, str],
    head: tuple[int, int, str, str, str, str],
    dims: tuple[str, ...],
    pricer: RowPricer,
) -> list[Line]:
    m = sr.row.measures
    day = dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
    tokens = {k[len(TOKENS) :]: int(v) for k, v in m.items() if k.startswith(TOKENS)}
    out: list[Line] = []
    if tokens:
        est = pricer.estimate_dims(sr.provider, labels, tokens, day)
        for tt, n in tokens.items():
            if not n:
                continue  # a token type the group did not use: nothing to count
            usd, source = est.costs.get(tt, (None, ""))
            line = Line(*head, tt, "", source, dims, tokens=n, unpriced=tt in est.unpriced)
            if usd is not None:
                line.estimated["tokens"] = usd
            out.append(line)
    units = {u: int(m[u]) for u in UNIT_MEASURES if m.get(u)}
    if units:
        counts = {_PRICED_UNITS[u]: n for u, n in units.items() if u in _PRICED_UNITS}
        if units.get(TOOL_CALLS) and sr.row.dim("tool") == "web_search":
            counts["web_search"] = units[TOOL_CALLS]
        costs = pricer.estimate_units(sr.provider, labels, counts, day) if counts else {}
        source = "+".join(sorted({s for _, s in costs.values()}))
        line = Line(*head, "", "", source, dims, units=units)
        line.estimated.update({unit: usd for unit, (usd, _) in costs.items()})
        out.append(line)
    return out


def lines(rows: Iterable[tuple[StoredRow, bool]], pricer: RowPricer, grain: str) -> Iterator[Line]:
    """Rows in bucket order -> lines summed per period and key, a period at a time, each
    period's lines in key order (so the output is the same for the same ledger)."""
    pending: dict[tuple[object, ...], Line] = {}
    current: int | None = None
    for sr, revised in rows:
        for line in lines_of(sr, revised, pricer, grain):
            if current is not None and line.period_start != current:
                yield from _drain(pending)
            current = line.period_start
            k = line.key()
            if k in pending:
                pending[k].add(line)
            else:
                pending[k] = line
    yield from _drain(pending)


def _drain(pending: dict[tuple[object, ...], Line]) -> Iterator[Line]:
    done = [pending[k] for k in sorted(pending, key=repr)]
    pending.clear()
    yield from done


# --- writing ---------------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """A plain decimal (no exponent), trailing zeros dropped: exact, and read by any tool."""
    text = format(value.normalize(EXACT), "f")
    return "0" if text in ("-0", "0") else text


def timestamp(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def columns(grain: str) -> list[str]:
    return [
        "date" if grain == "day" else "hour",
        "provider",
        "account",
        "project",
        "model",
        "operation",
        "token_type",
        "tokens",
        "requests",
        "reported_cost",
        "estimated_cost",
        "price_source",
        "currency",
        *[u for u in UNIT_MEASURES if u != REQUESTS],
        "charge",
        *[d for d in DIMS if d not in ("project", "model")],
    ]


def record(line: Line, grain: str) -> dict[str, object]:
    """A line as column -> value: ints, Decimals, strings, or None where nothing applies."""
    dims = dict(zip(DIMS, line.dims, strict=True))
    est = line.estimated_cost
    return {
        "date" if grain == "day" else "hour": iso_day(line.period_start)
        if grain == "day"
        else timestamp(line.period_start),
        "provider": line.provider,
        "account": line.account,
        "project": dims["project"],
        "model": dims["model"],
        "operation": line.operation,
        "token_type": line.token_type,
        "tokens": line.tokens if line.token_type and not line.currency else None,
        **{u: line.units.get(u) for u in UNIT_MEASURES},
        "reported_cost": line.reported,
        "estimated_cost": est,
        "price_source": line.price_source or ("unpriced" if line.unpriced else ""),
        "currency": line.currency or ("usd" if est is not None else ""),
        "charge": line.charge,
        **{d: dims[d] for d in DIMS if d not in ("project", "model")},
    }


def write_csv(items: Iterable[Line], grain: str) -> Iterator[str]:
    """CSV (RFC 4180, header first): blank where nothing applies, money as plain decimals."""
    cols = columns(grain)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(cols)
    for n, line in enumerate(items, 1):
        rec = record(line, grain)
        out.writerow(["" if (v := rec[c]) is None else _text(v) for c in cols])
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def write_jsonl(items: Iterable[Line], grain: str) -> Iterator[str]:
    """One JSON object a line, keys as the CSV header; money as strings (exact), counts as
    integers, null where nothing applies."""
    cols = columns(grain)
    batch: list[str] = []
    for line in items:
        rec = record(line, grain)
        obj = {c: decimal_text(v) if isinstance(v, Decimal) else v for c in cols for v in [rec[c]]}
        batch.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        if len(batch) >= 500:
            yield "".join(batch)
            batch = []
    yield "".join(batch)


def _text(value: object) -> str:
    return decimal_text(value) if isinstance(value, Decimal) else str(value)
