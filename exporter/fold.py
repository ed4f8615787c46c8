"""What one ledger row adds to the aggregates: the model's arithmetic, row by row.

Every value the exporter exposes is a sum over rows (counters, period gauges, budget and
reconciliation inputs) or is derived from such sums at render time (folding, storage levels,
budgets, ratios). `fold_row` turns one row into signed additions to keyed sums, so the same
function serves a from-scratch fold of the whole ledger (sign +1 for every row) and an
incremental update (-1 for a row's old content, +1 for its new content). Each sum carries a
count of the additions behind it, so a series exists exactly when a from-scratch fold would
create it. Pure: no I/O, no provider JSON.

Keys of the sums (`Delta`), by kind:

- ``t:<family>`` -> label values (unfolded) in the family's label order: all-time counters.
  Internal families start with ``_`` (seen models, cost dimensions, accounts with rows).
- ``d:<family>`` -> (local day ordinal, *label values): period gauges by day; the aggregate
  store keeps only the sums of the open periods.
- ``y:<family>`` -> (local day ordinal, *label values): exact-day gauges (``llm_daily_*``);
  the store keeps the days still exposed.
- ``b.rep`` / ``b.est`` / ``b.unp`` -> (budget, provider, account, local day ordinal).
- ``r.rep`` / ``r.est`` -> (provider, account, model, token type, UTC day start).
- ``c`` -> (provider, account, UTC day start): cost rows with a non-zero amount.
- ``l`` -> (provider, account, project, bucket start): vector-store bytes (a level).
- ``f`` -> (label, value, UTC day start): rows and size, for folding the long tail.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Protocol
from zoneinfo import ZoneInfo

from exporter.ledger import StoredRow
from exporter.names import BY_NAME, OPT
from exporter.rows import (
    AUDIO_SECONDS,
    CC_COMMITS,
    CC_ESTIMATED_COST,
    CC_LINES_ADDED,
    CC_LINES_REMOVED,
    CC_PULL_REQUESTS,
    CHARACTERS,
    COST,
    FAILED_REQUESTS,
    IMAGES,
    PROXY,
    REQUESTS,
    SESSIONS,
    STORAGE_BYTES,
    TOKENS,
    TOOL_CALLS,
    Number,
)
from exporter.schema import BudgetSettings
from exporter.selectors import Selector, compile_selector

# Opt-in dimension labels, in label order. `project` is on by default (settings.group_by).
OPT_IN = ("project", "user", "api_key", "service_tier", "batch", "context_window", "api_source")
# Labels whose long tail is folded into "other" past the configured top-N.
FOLDED = ("project", "user", "api_key")
CLAUDE_CODE = "claude_code"
# Gateway log users (proxy rows' `gateway_user`, exposed as `user`) are ranked for folding
# among themselves, never with the providers' opt-in `user` values: the families below fold
# their `user` label by that ranking.
PROXY_USER = "gateway_user"
FOLD_AS = {
    family: {"user": PROXY_USER}
    for family in (
        "llm_proxy_requests_total",
        "llm_proxy_tokens_total",
        "llm_proxy_cost_usd_total",
        "llm_proxy_cost_estimated_usd_total",
    )
}

# Exact sums: wider than any amount a provider sends, so the order of additions never rounds.
SUM_CONTEXT = Context(prec=60)

Key = tuple[object, ...]
Delta = dict[tuple[str, Key], list[Number]]  # (kind, key) -> [value, additions]

SIMPLE_MEASURES = {
    REQUESTS: "llm_model_requests_total",
    CHARACTERS: "llm_characters_total",
    AUDIO_SECONDS: "llm_audio_seconds_total",
    IMAGES: "llm_images_total",
    SESSIONS: "llm_code_interpreter_sessions_total",
    TOOL_CALLS: "llm_tool_calls_total",
}
# Non-token measures with a unit price in the database (pricing.UNITS).
_UNIT_MEASURES = {REQUESTS: "request", CHARACTERS: "character", AUDIO_SECONDS: "audio_second"}
_CC_COUNTERS = {
    SESSIONS: ("llm_claude_code_sessions_total", {}),
    CC_LINES_ADDED: ("llm_claude_code_lines_total", {"change": "added"}),
    CC_LINES_REMOVED: ("llm_claude_code_lines_total", {"change": "removed"}),
    CC_COMMITS: ("llm_claude_code_commits_total", {}),
    CC_PULL_REQUESTS: ("llm_claude_code_pull_requests_total", {}),
}


class EstimateLike(Protocol):
    @property
    def costs(self) -> Mapping[str, tuple[Decimal, str]]: ...  # token_type -> (usd, source)

    @property
    def unpriced(self) -> Mapping[str, int]: ...  # token_type -> tokens

    @property
    def cache_savings(self) -> Decimal: ...

    @property
    def batch_savings(self) -> Decimal: ...


class RowPricer(Protocol):
    """What the fold needs from pricing (implemented by `exporter.pricing.PriceBook`)."""

    def estimate_dims(
        self, provider: str, dims: Mapping[str, str], token_counts: Mapping[str, int], day: dt.date
    ) -> EstimateLike: ...

    def estimate_units(
        self, provider: str, dims: Mapping[str, str], unit_counts: Mapping[str, int], day: dt.date
    ) -> Mapping[str, tuple[Decimal, str]]: ...


def opt_labels_for(group_bys: Iterable[Iterable[str]]) -> tuple[str, ...]:
    enabled = {d for g in group_bys for d in g}
    return tuple(d for d in OPT_IN if d in enabled)


def resolve_labels(labels: tuple[str, ...], opt: tuple[str, ...]) -> tuple[str, ...]:
    """A family's label names with the opt-in placeholder replaced by the enabled labels."""
    out: list[str] = []
    for lab in labels:
        if lab == OPT:
            out.extend(opt)
        else:
            out.append(lab)
    return tuple(out)


def calendar_day(sr: StoredRow, tz: ZoneInfo) -> dt.date:
    """The calendar day a bucket counts in for periods and budgets.

    A daily bucket is a UTC day: it counts as the local day of the same date (a day's total
    cannot be split by hour). Finer buckets count in the local day their start falls in, so
    with `bucket_width: 1h` local days are exact.
    """
    if sr.end - sr.start >= 86400:
        return dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
    return dt.datetime.fromtimestamp(sr.start, tz).date()


@dataclass(frozen=True)
class FoldContext:
    """Everything a row's contribution depends on besides the row (part of the store's
    fingerprint: when any of it changes, the aggregates are folded again from the ledger)."""

    tz: ZoneInfo
    opt_labels: tuple[str, ...]
    estimator: RowPricer | None = None
    budgets: Sequence[BudgetSettings] = ()

    def __post_init__(self) -> None:
        selectors = [(b.name, compile_selector(b.selector)) for b in self.budgets]
        object.__setattr__(self, "_selectors", selectors)
        object.__setattr__(self, "_label_names", {})
        object.__setattr__(self, "_groups", {})

    @property
    def selectors(self) -> list[tuple[str, Selector]]:
        return self.__dict__["_selectors"]  # type: ignore[no-any-return]

    def labels_of(self, family: str) -> tuple[str, ...]:
        names: dict[str, tuple[str, ...]] = self.__dict__["_label_names"]
        found = names.get(family)
        if found is None:
            found = names[family] = resolve_labels(BY_NAME[family].labels, self.opt_labels)
        return found

    def group(self, sr: StoredRow) -> _Group:
        """The row's group, with the keys already built for it during this fold."""
        groups: dict[tuple[object, ...], _Group] = self.__dict__["_groups"]
        gk = (sr.provider, sr.account, sr.row.operation, sr.row.dims)
        found = groups.get(gk)
        if found is None:
            if len(groups) >= _MAX_GROUPS:
                groups.clear()
            found = groups[gk] = _Group(self, sr)
        return found

    def forget_groups(self) -> None:
        """Drop the keys built during a fold: between polls they would only hold memory."""
        self.__dict__["_groups"].clear()


# Groups whose keys are kept during one fold (about 3 KB each: at most ~12 MB); past it
# they start again. A poll's changed rows are a few thousand groups at most.
_MAX_GROUPS = 4096

Cell = tuple[str, Key]  # (kind, key): one sum


def add(out: Delta, kind: str, key: Key, value: Number, sign: int) -> None:
    """out[kind, key] += sign * value, counting the addition."""
    add_cell(out, (kind, key), value, sign)


def add_cell(out: Delta, cell_key: Cell, value: Number, sign: int) -> None:
    """out[cell_key] += sign * value, counting the addition."""
    cell = out.get(cell_key)
    v = -value if sign < 0 else value
    if cell is None:
        out[cell_key] = [v, sign]
    else:
        cell[0] = SUM_CONTEXT.add(cell[0], v) if isinstance(v, Decimal) else cell[0] + v
        cell[1] += sign


class _Group:
    """One group (provider, account, operation, dimensions): its labels, the budgets whose
    scope it is in, and the cells it adds to, each built once per fold. A group recurs in
    every bucket of a from-scratch fold, and an incremental update folds its old and its
    new content with the same keys: building them once halves that work."""

    __slots__ = ("budgets", "cells", "day", "day_cells", "labels")

    def __init__(self, ctx: FoldContext, sr: StoredRow) -> None:
        labels = dict(sr.row.dims)
        labels["provider"] = sr.provider
        labels["account"] = sr.account
        labels["operation"] = sr.row.operation
        self.labels = labels
        self.budgets = [name for name, sel in ctx.selectors if sel.matches(labels)]
        self.cells: dict[object, Cell] = {}
        self.day = -1  # the day of `day_cells` (rows of one group come mostly day by day)
        self.day_cells: dict[tuple[object, ...], Cell] = {}

    def label_key(self, ctx: FoldContext, family: str, extra: Mapping[str, str]) -> Key:
        """The family's label values for this group (`extra` overrides some, e.g. token_type)."""
        get = self.labels.get
        if extra:
            return tuple([extra[n] if n in extra else get(n, "") for n in ctx.labels_of(family)])
        return tuple([get(n, "") for n in ctx.labels_of(family)])


class _Row:
    """One row being folded: its group's labels and keys, and the sink it adds to."""

    __slots__ = ("ctx", "group", "labels", "out", "sign", "sr")

    def __init__(self, ctx: FoldContext, sr: StoredRow, out: Delta, sign: int) -> None:
        self.ctx, self.sr, self.out, self.sign = ctx, sr, out, sign
        self.group = ctx.group(sr)
        self.labels = self.group.labels

    def counter(self, family: str, value: Number, **extra: str) -> None:
        g = self.group
        # Values only, not (name, value) pairs: a family is always given the same extra
        # names (its labels), and the pairs were most of the memory a group's keys hold.
        ck = (family, *extra.values()) if extra else family
        cell = g.cells.get(ck)
        if cell is None:
            # The kind is interned: one string per family, not one per group and family
            # (a poll's changed groups hold some 35 cells each until the fold ends).
            kind = sys.intern("t:" + family)
            cell = g.cells[ck] = (kind, g.label_key(self.ctx, family, extra))
        # `add_cell`, inlined: this and `by_day` take most of a fold's 30 additions a row.
        out, sign = self.out, self.sign
        found = out.get(cell)
        v = -value if sign < 0 else value
        if found is None:
            out[cell] = [v, sign]
        else:
            found[0] = SUM_CONTEXT.add(found[0], v) if isinstance(v, Decimal) else found[0] + v
            found[1] += sign

    def by_day(self, family: str, day: int, value: Number, kind: str = "d:", **extra: str) -> None:
        """A period gauge's day sum (kind "d:"), or an exact-day gauge's (kind "y:")."""
        g = self.group
        if g.day != day:
            g.day, g.day_cells = day, {}
        ck = (kind, family, *extra.values())  # as in `counter`
        cell = g.day_cells.get(ck)
        if cell is None:
            cell = (sys.intern(kind + family), (day, *g.label_key(self.ctx, family, extra)))
            g.day_cells[ck] = cell
        out, sign = self.out, self.sign  # `add_cell`, inlined (see `counter`)
        found = out.get(cell)
        v = -value if sign < 0 else value
        if found is None:
            out[cell] = [v, sign]
        else:
            found[0] = SUM_CONTEXT.add(found[0], v) if isinstance(v, Decimal) else found[0] + v
            found[1] += sign

    def budget(self, day: int, reported: Decimal = Decimal(0), estimated: Decimal = Decimal(0),
               unpriced: int = 0) -> None:  # fmt: skip
        sr = self.sr
        for name in self.group.budgets:
            key = (name, sr.provider, sr.account, day)
            if reported:
                add(self.out, "b.rep", key, reported, self.sign)
            if estimated:
                add(self.out, "b.est", key, estimated, self.sign)
            if unpriced:
                add(self.out, "b.unp", key, unpriced, self.sign)


def fold_row(ctx: FoldContext, sr: StoredRow, revised: bool, out: Delta, sign: int = 1) -> None:
    """Add `sign` times the contribution of one stored row (or revision row) to `out`."""
    r = _Row(ctx, sr, out, sign)
    row = sr.row
    m = row.measures
    if not revised:
        add(out, "t:_account", (sr.provider, sr.account), 0, sign)
        size = None  # the same for each folded label: computed once
        for lab in FOLDED:
            v = r.labels.get(lab)
            if v and lab in ctx.opt_labels:
                if size is None:
                    size = _size(m)
                add(out, "f", (lab, v, sr.start - sr.start % 86400), size, sign)
    if row.operation == CLAUDE_CODE:
        _claude_code(r, m)  # its own metrics: never added to llm_tokens_total
        return
    local_day = calendar_day(sr, ctx.tz).toordinal()
    if row.operation == PROXY:
        _proxy(r, m, revised, local_day)  # its own metrics: never added to the org's
        return
    if COST in m:
        _cost(r, m, revised, local_day)
        return
    tokens = _usage(r, m, revised, local_day)
    if ctx.estimator is not None:
        if tokens:
            _estimate(r, ctx.estimator, tokens, revised, local_day)
        _unit_costs(r, ctx.estimator, tokens, revised, local_day)


def _size(m: Mapping[str, Number]) -> Decimal:
    """A row's weight when ranking label values for folding: tokens, plus cost in micro-USD."""
    s = Decimal(sum(int(x) for k, x in m.items() if k.startswith(TOKENS)))
    if COST in m:
        s += Decimal(m[COST]) * 1_000_000
    return s


def _cost(r: _Row, m: Mapping[str, Number], revised: bool, local_day: int) -> None:
    sr, row = r.sr, r.sr.row
    if row.dim("currency") not in ("", "usd"):
        return  # non-USD costs are not converted (no provider reports them today)
    usd = Decimal(m[COST])
    r.counter("llm_cost_reported_usd_total", usd)
    if revised:
        r.counter("llm_cost_reported_revised_usd", usd)
        return
    r.by_day("llm_period_cost_reported_usd", local_day, usd)
    r.by_day("llm_daily_cost_reported_usd", local_day, usd, kind="y:")
    utc_day = sr.start - sr.start % 86400
    if row.dim("token_type") and row.dim("model"):
        key = (sr.provider, sr.account, row.dim("model"), row.dim("token_type"), utc_day)
        add(r.out, "r.rep", key, usd, r.sign)
    for k, _ in row.dims:
        add(r.out, "t:_cost_dim", (sr.provider, sr.account, k), 0, r.sign)
    if usd:
        add(r.out, "c", (sr.provider, sr.account, utc_day), 0, r.sign)
    r.budget(local_day, reported=usd)


def _usage(r: _Row, m: Mapping[str, Number], revised: bool, local_day: int) -> dict[str, int]:
    """Token, unit and storage measures; returns the row's tokens by token type."""
    tokens: dict[str, int] = {}
    for name, v in m.items():
        if revised:
            r.counter("llm_usage_revised", v, measure=name)
        if name.startswith(TOKENS):
            tt = name[len(TOKENS) :]
            tokens[tt] = int(v)
            r.counter("llm_tokens_total", int(v), token_type=tt)
            if not revised:
                r.by_day("llm_period_tokens", local_day, int(v), token_type=tt)
                r.by_day("llm_daily_tokens", local_day, int(v), kind="y:", token_type=tt)
        elif name.startswith(FAILED_REQUESTS):
            reason = name[len(FAILED_REQUESTS) :]
            r.counter("llm_model_request_failures_total", int(v), reason=reason)
        elif name in SIMPLE_MEASURES:
            r.counter(SIMPLE_MEASURES[name], int(v))
            if name == REQUESTS and not revised:
                r.by_day("llm_daily_model_requests", local_day, int(v), kind="y:")
        elif name == STORAGE_BYTES and not revised:
            sr = r.sr
            key = (sr.provider, sr.account, r.labels.get("project", ""), sr.start)
            add(r.out, "l", key, int(v), r.sign)
    return tokens


def _estimate(
    r: _Row, est: RowPricer, tokens: Mapping[str, int], revised: bool, local_day: int
) -> None:
    sr = r.sr
    model = r.labels.get("model", "")
    add(r.out, "t:_seen_model", (sr.provider, model), 0, r.sign)
    day = dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
    utc_day = sr.start - sr.start % 86400
    e = est.estimate_dims(sr.provider, r.labels, tokens, day)
    row_usd = Decimal(0)
    for tt, (usd, source) in e.costs.items():
        row_usd += usd
        r.counter("llm_cost_estimated_usd_total", usd, token_type=tt, price_source=source)
        if not revised:
            add(r.out, "r.est", (sr.provider, sr.account, model, tt, utc_day), usd, r.sign)
            r.by_day("llm_period_cost_estimated_usd", local_day, usd)
            r.by_day("llm_daily_cost_estimated_usd", local_day, usd, kind="y:")
    unpriced = sum(e.unpriced.values())
    for tt, n in e.unpriced.items():
        r.counter("llm_unpriced_tokens_total", n, token_type=tt)
    if e.unpriced:
        r.counter("llm_unpriced_model_requests_total", int(sr.row.measures.get(REQUESTS, 0)))
        if not revised:
            add(r.out, "t:_unpriced_model", (sr.provider, model), 0, r.sign)
    if e.cache_savings:
        r.counter("llm_cache_savings_usd_total", e.cache_savings)
    if e.batch_savings:
        r.counter("llm_batch_savings_usd_total", e.batch_savings)
    if not revised:
        r.budget(local_day, estimated=row_usd, unpriced=unpriced)


def _unit_costs(
    r: _Row, est: RowPricer, tokens: Mapping[str, int], revised: bool, local_day: int
) -> None:
    """Estimated cost of requests, characters, audio seconds and web searches.

    Exposed with token_type="" on llm_cost_estimated_usd_total. A speech or transcription row
    (no tokens) whose unit has no price marks its model unpriced, never $0.
    """
    sr = r.sr
    m = sr.row.measures
    counts = {unit: int(m[measure]) for measure, unit in _UNIT_MEASURES.items() if m.get(measure)}
    if m.get(TOOL_CALLS) and sr.row.dim("tool") == "web_search":
        counts["web_search"] = int(m[TOOL_CALLS])
    if not counts:
        return
    day = dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
    costs = est.estimate_units(sr.provider, r.labels, counts, day)
    row_usd = Decimal(0)
    for usd, source in costs.values():
        row_usd += usd
        r.counter("llm_cost_estimated_usd_total", usd, token_type="", price_source=source)
        if not revised:
            r.by_day("llm_period_cost_estimated_usd", local_day, usd)
            r.by_day("llm_daily_cost_estimated_usd", local_day, usd, kind="y:")
    if row_usd and not revised:
        r.budget(local_day, estimated=row_usd)
    billed_by = [u for u in ("character", "audio_second") if u in counts]
    if not tokens and billed_by and not any(u in costs for u in billed_by):
        r.counter("llm_unpriced_model_requests_total", int(m.get(REQUESTS, 0)))
        if not revised:
            add(r.out, "t:_unpriced_model", (sr.provider, r.labels.get("model", "")), 0, r.sign)


def _claude_code(r: _Row, m: Mapping[str, Number]) -> None:
    for name, v in m.items():
        if name in _CC_COUNTERS:
            metric, extra = _CC_COUNTERS[name]
            r.counter(metric, int(v), **extra)
        elif name.startswith(TOKENS):
            r.counter("llm_claude_code_tokens_total", int(v), token_type=name[len(TOKENS) :])
        elif name == CC_ESTIMATED_COST:
            r.counter("llm_claude_code_estimated_cost_usd_total", Decimal(v))


def _proxy(r: _Row, m: Mapping[str, Number], revised: bool, local_day: int) -> None:
    """A gateway log row: llm_proxy_* only, labelled with the upstream provider it names.

    Its users are always ranked for folding (the log's users are unbounded), apart from the
    providers' opt-in users (see FOLD_AS). Revised-away amounts stay in the counters (they
    never go down)."""
    sr, ctx = r.sr, r.ctx
    upstream = r.labels["provider"] = sr.row.dim("upstream")
    user = r.labels["user"] = sr.row.dim(PROXY_USER)
    if user and not revised:
        add(r.out, "f", (PROXY_USER, user, sr.start - sr.start % 86400), _size(m), r.sign)
    tokens: dict[str, int] = {}
    for name, v in m.items():
        if name.startswith(TOKENS):
            tt = name[len(TOKENS) :]
            tokens[tt] = int(v)
            r.counter("llm_proxy_tokens_total", int(v), token_type=tt)
            if not revised:
                r.by_day("llm_proxy_daily_tokens", local_day, int(v), kind="y:", token_type=tt)
        elif name == REQUESTS:
            r.counter("llm_proxy_requests_total", int(v))
        elif name == COST:
            r.counter("llm_proxy_cost_usd_total", Decimal(v))
    if ctx.estimator is not None and tokens:
        day = dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
        e = ctx.estimator.estimate_dims(upstream, r.labels, tokens, day)
        for tt, (usd, source) in e.costs.items():
            r.counter("llm_proxy_cost_estimated_usd_total", usd, token_type=tt, price_source=source)


FoldFn = Callable[[StoredRow, bool, Delta, int], None]
