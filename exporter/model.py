"""The metric model: pure functions from the ledger (plus prices, budgets, health) to families.

Counters are sums over every stored bucket since the history start, plus the downward
revisions the ledger has seen (so a counter never goes down while the state lives; the
revised amount is exposed on its own). Period gauges are exact sums of the buckets that start
in the period, in the configured time zone. Nothing here does I/O or knows provider JSON.

Example exposition:

    llm_tokens_total{provider="openai",account="main",operation="completions",model="gpt-4o",
                     project="proj_a",token_type="cache_read"} 1234
    llm_cost_reported_usd_total{provider="openai",account="main",project="proj_a",model="",
                                line_item="gpt-4o, input"} 12.5
"""

from __future__ import annotations

import datetime as dt
import platform
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol
from zoneinfo import ZoneInfo

from exporter import __version__
from exporter.budgets import ScopePart, Selector, compile_selector, evaluate, period_bounds
from exporter.exposition import Family, format_value
from exporter.health import Health
from exporter.ledger import Revision, StoredRow
from exporter.names import OPT
from exporter.rows import (
    AUDIO_SECONDS,
    CC_COMMITS,
    CC_ESTIMATED_COST,
    CC_LINES_ADDED,
    CC_LINES_REMOVED,
    CC_PULL_REQUESTS,
    CHARACTERS,
    COST,
    IMAGES,
    REQUESTS,
    SESSIONS,
    STORAGE_BYTES,
    TOKENS,
    TOOL_CALLS,
    Number,
    Row,
)
from exporter.settings import BudgetSettings

# Opt-in dimension labels, in label order. `project` is on by default (settings.group_by).
OPT_IN = ("project", "user", "api_key", "service_tier", "batch", "context_window")
# Labels whose long tail is folded into "other" past the configured top-N.
FOLDED = ("project", "user", "api_key")
OTHER = "other"
PERIODS = ("day", "week", "month")

SIMPLE_MEASURES = {
    REQUESTS: "llm_model_requests_total",
    CHARACTERS: "llm_characters_total",
    AUDIO_SECONDS: "llm_audio_seconds_total",
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


class PriceEntryLike(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def token_type(self) -> str: ...

    @property
    def usd_per_token(self) -> Decimal: ...

    @property
    def source(self) -> str: ...


class DataInfoLike(Protocol):
    @property
    def source(self) -> str: ...

    @property
    def refresh(self) -> str: ...

    @property
    def refresh_time(self) -> float | None: ...

    @property
    def version(self) -> str: ...

    @property
    def timestamp(self) -> float | None: ...


class Estimator(Protocol):
    """What the model needs from pricing (implemented by `exporter.pricing.PriceBook`)."""

    def estimate_dims(
        self, provider: str, dims: Mapping[str, str], token_counts: Mapping[str, int], day: dt.date
    ) -> EstimateLike: ...

    def estimate_units(
        self, provider: str, dims: Mapping[str, str], unit_counts: Mapping[str, int], day: dt.date
    ) -> Mapping[str, tuple[Decimal, str]]: ...

    def price_table(
        self, provider_models: Iterable[tuple[str, str]], day: dt.date
    ) -> Sequence[PriceEntryLike]: ...

    def data_info(self) -> DataInfoLike: ...


@dataclass
class RowEstimate:
    """A plain `EstimateLike` (used by tests and fakes)."""

    costs: dict[str, tuple[Decimal, str]] = field(default_factory=dict)
    unpriced: dict[str, int] = field(default_factory=dict)
    cache_savings: Decimal = Decimal(0)
    batch_savings: Decimal = Decimal(0)


@dataclass(frozen=True)
class PriceEntry:
    provider: str
    model: str
    token_type: str
    usd_per_token: Decimal
    source: str


@dataclass
class ModelInput:
    rows: Sequence[StoredRow]
    revisions: Sequence[Revision]
    health: Health
    now: dt.datetime  # aware
    tz: ZoneInfo
    history_start: int  # unix seconds
    opt_labels: tuple[str, ...]  # enabled opt-in labels, in OPT_IN order
    max_values: int = 50
    estimator: Estimator | None = None
    budgets: Sequence[BudgetSettings] = ()
    revision: str = ""


def opt_labels_for(group_bys: Iterable[Iterable[str]]) -> tuple[str, ...]:
    enabled = {d for g in group_bys for d in g}
    return tuple(d for d in OPT_IN if d in enabled)


def _resolve(labels: tuple[str, ...], opt: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for lab in labels:
        if lab == OPT:
            out.extend(opt)
        else:
            out.append(lab)
    return tuple(out)


def _fold_sets(
    rows: Sequence[StoredRow], opt: tuple[str, ...], max_values: int
) -> dict[str, set[str]]:
    """Per folded label, the values to keep; the others become "other".

    Which values are kept must not change from one poll to the next, or history would move
    between a value's series and "other" and one of them would go down. So values are ranked
    by the UTC day they first appear, then by their size (tokens, plus cost) on that day: a
    closed day never changes, so once kept a value stays kept, and a newcomer only takes a
    place that is still free. It is a function of the ledger alone, so replicas agree.
    """
    keep: dict[str, set[str]] = {}
    if max_values <= 0:
        return keep
    for lab in FOLDED:
        if lab not in opt:
            continue
        first: dict[str, int] = {}
        size: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
        for sr in rows:
            v = sr.row.dim(lab)
            if not v:
                continue
            day = sr.start - sr.start % 86400
            first[v] = min(first.get(v, day), day)
            m = sr.row.measures
            s = Decimal(sum(int(x) for k, x in m.items() if k.startswith(TOKENS)))
            if COST in m:
                s += Decimal(m[COST]) * 1_000_000
            size[(v, day)] += s
        if len(first) > max_values:
            ranked = sorted(first, key=lambda v: (first[v], -size[(v, first[v])], v))
            keep[lab] = set(ranked[:max_values])
    return keep


def calendar_day(sr: StoredRow, tz: ZoneInfo) -> dt.date:
    """The calendar day a bucket counts in for periods and budgets.

    A daily bucket is a UTC day: it counts as the local day of the same date (a day's total
    cannot be split by hour). Finer buckets count in the local day their start falls in, so
    with `bucket_width: 1h` local days are exact.
    """
    if sr.end - sr.start >= 86400:
        return dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
    return dt.datetime.fromtimestamp(sr.start, tz).date()


def period_starts(now: dt.datetime, tz: ZoneInfo) -> dict[str, dt.datetime]:
    local = now.astimezone(tz)
    day = dt.datetime.combine(local.date(), dt.time(), tzinfo=tz)
    week = dt.datetime.combine(
        local.date() - dt.timedelta(days=local.weekday()), dt.time(), tzinfo=tz
    )
    month = dt.datetime.combine(local.date().replace(day=1), dt.time(), tzinfo=tz)
    return {"day": day, "week": week, "month": month}


class Builder:
    """Accumulates families from rows; one instance per rebuild."""

    def __init__(self, inp: ModelInput) -> None:
        self.inp = inp
        self.opt = inp.opt_labels
        self.fams: dict[str, Family] = {}
        self.keep = _fold_sets(inp.rows, self.opt, inp.max_values)

    def fam(self, name: str) -> Family:
        f = self.fams.get(name)
        if f is None:
            from exporter.names import BY_NAME

            f = Family(BY_NAME[name], _resolve(BY_NAME[name].labels, self.opt))
            self.fams[name] = f
        return f

    def label_value(self, lab: str, labels: Mapping[str, str]) -> str:
        v = labels.get(lab, "")
        keep = self.keep.get(lab)
        if keep is not None and v and v not in keep:
            return OTHER
        return v

    def folded(self, labels: dict[str, str]) -> dict[str, str]:
        """Label values with the long tail folded, once per row, so `add` is a plain lookup.
        Budgets and pricing keep reading the unfolded values."""
        if not self.keep:
            return labels
        return {lab: self.label_value(lab, labels) for lab in labels}

    def key(self, name: str, labels: Mapping[str, str]) -> tuple[str, ...]:
        get = labels.get
        return tuple([get(lab, "") for lab in self.fam(name).labels])

    def add(self, name: str, labels: Mapping[str, str], value: int | Decimal) -> None:
        f = self.fam(name)
        f.add(self.key(name, labels), value)


def _labels(sr: StoredRow) -> dict[str, str]:
    labels = dict(sr.row.dims)
    labels["provider"] = sr.provider
    labels["account"] = sr.account
    labels["operation"] = sr.row.operation
    return labels


def _revision_rows(revisions: Sequence[Revision]) -> list[StoredRow]:
    """Revised-away amounts as rows, so every counter derived from them stays monotonic."""
    grouped: dict[
        tuple[str, str, str, int, int, tuple[tuple[str, str], ...]], dict[str, Number]
    ] = {}
    for rev in revisions:
        key = (rev.provider, rev.account, rev.operation, rev.start, rev.end, rev.dims)
        grouped.setdefault(key, {})[rev.measure] = rev.amount
    return [
        StoredRow(p, a, "revision", s, e, Row(op, dims, measures))
        for (p, a, op, s, e, dims), measures in grouped.items()
    ]


_RecKey = tuple[str, str, int]  # (model, token_type, UTC day start)


@dataclass
class _Spend:
    """Per (provider, account): token spend by (model, token type, UTC day start), reported
    (cost lines that name a model and token type) and estimated, for reconciliation."""

    reported: dict[_RecKey, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    estimated: dict[_RecKey, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    newest_cost_day: int | None = None  # start of the newest non-empty cost bucket
    cost_dims: set[str] = field(default_factory=set)


def build(inp: ModelInput) -> list[Family]:
    b = Builder(inp)
    tz = inp.tz
    starts = period_starts(inp.now, tz)
    start_ts = {p: int(s.timestamp()) for p, s in starts.items()}
    start_day = {p: s.date() for p, s in starts.items()}
    seen_models: set[tuple[str, str]] = set()
    storage: dict[tuple[str, str, str], tuple[int, int]] = {}  # (p, a, project) -> (start, bytes)
    budgets = _BudgetInputs(inp)
    spend: dict[tuple[str, str], _Spend] = defaultdict(_Spend)

    rows = [(sr, False) for sr in inp.rows] + [(sr, True) for sr in _revision_rows(inp.revisions)]
    for sr, revised in rows:
        row = sr.row
        raw = _labels(sr)
        labels = b.folded(raw)
        m = row.measures
        if row.operation == CLAUDE_CODE:
            _claude_code(b, labels, m)  # its own metrics: never added to llm_tokens_total
            continue
        local_day = calendar_day(sr, tz)
        periods = [] if revised else [p for p in PERIODS if local_day >= start_day[p]]
        day = dt.datetime.fromtimestamp(sr.start, dt.UTC).date()
        utc_day = sr.start - sr.start % 86400
        if COST in m:
            if row.dim("currency") not in ("", "usd"):
                continue  # non-USD costs are not converted (no provider reports them today)
            usd = Decimal(m[COST])
            b.add("llm_cost_reported_usd_total", labels, usd)
            if revised:
                b.add("llm_cost_reported_revised_usd", labels, usd)
                continue
            for p in periods:
                b.add("llm_period_cost_reported_usd", {**labels, "period": p}, usd)
            sp = spend[(sr.provider, sr.account)]
            if row.dim("token_type") and row.dim("model"):
                sp.reported[(row.dim("model"), row.dim("token_type"), utc_day)] += usd
            sp.cost_dims.update(k for k, _ in row.dims)
            if usd and (sp.newest_cost_day is None or utc_day > sp.newest_cost_day):
                sp.newest_cost_day = utc_day
            budgets.add(raw, local_day, reported=usd)
            continue
        tokens: dict[str, int] = {}
        for name, v in m.items():
            if revised:
                b.add("llm_usage_revised", {**labels, "measure": name}, v)
            if name.startswith(TOKENS):
                tt = name[len(TOKENS) :]
                tokens[tt] = int(v)
                b.add("llm_tokens_total", {**labels, "token_type": tt}, int(v))
                for p in periods:
                    b.add("llm_period_tokens", {**labels, "token_type": tt, "period": p}, int(v))
            elif name in SIMPLE_MEASURES:
                b.add(SIMPLE_MEASURES[name], labels, int(v))
            elif name == IMAGES:
                b.add("llm_images_total", labels, int(v))
            elif name == SESSIONS:
                b.add("llm_code_interpreter_sessions_total", labels, int(v))
            elif name == TOOL_CALLS:
                b.add("llm_tool_calls_total", labels, int(v))
            elif name == STORAGE_BYTES and not revised:
                k = (sr.provider, sr.account, labels.get("project", ""))
                prev = storage.get(k)
                if prev is None or sr.start > prev[0]:
                    storage[k] = (sr.start, 0)
                    prev = storage[k]
                if sr.start == prev[0]:
                    storage[k] = (sr.start, prev[1] + int(v))
        if tokens and inp.estimator is not None:
            model = labels.get("model", "")
            seen_models.add((sr.provider, model))
            est = inp.estimator.estimate_dims(sr.provider, raw, tokens, day)
            row_usd = Decimal(0)
            for tt, (usd, source) in est.costs.items():
                row_usd += usd
                if not revised:
                    spend[(sr.provider, sr.account)].estimated[(model, tt, utc_day)] += usd
                lab = {**labels, "token_type": tt, "price_source": source}
                b.add("llm_cost_estimated_usd_total", lab, usd)
                for p in periods:
                    b.add("llm_period_cost_estimated_usd", {**labels, "period": p}, usd)
            unpriced = sum(est.unpriced.values())
            for tt, n in est.unpriced.items():
                b.add("llm_unpriced_tokens_total", {**labels, "token_type": tt}, n)
            if est.unpriced:
                b.add("llm_unpriced_model_requests_total", labels, int(m.get(REQUESTS, 0)))
                if not revised:
                    b.fam("llm_unpriced_model_info").set((sr.provider, model), 1)
            if est.cache_savings:
                b.add("llm_cache_savings_usd_total", labels, est.cache_savings)
            if est.batch_savings:
                b.add("llm_batch_savings_usd_total", labels, est.batch_savings)
            if not revised:
                budgets.add(raw, local_day, estimated=row_usd, unpriced=unpriced)
        if inp.estimator is not None:
            _unit_costs(b, inp.estimator, sr, labels, raw, tokens, day, periods, budgets, revised)

    for (p, a, project), (_, v) in storage.items():
        b.fam("llm_vector_store_bytes").set((p, a, project), v)
    for p, s in start_ts.items():
        b.fam("llm_period_start_timestamp_seconds").set((p,), s)
    if inp.estimator is not None:
        _prices(b, inp.estimator, seen_models, inp.now.astimezone(tz).date())
        _reconciliation(b, spend, int(starts["month"].timestamp()))
    budgets.emit(b, spend)
    _health(b, inp.health)
    b.fam("llm_exporter_build_info").set((__version__, inp.revision, platform.python_version()), 1)
    if inp.health.last_poll is not None:
        b.fam("llm_exporter_last_poll_timestamp_seconds").set((), inp.health.last_poll)
    return list(b.fams.values())


# Non-token measures with a unit price in the database (pricing.UNITS).
_UNIT_MEASURES = {REQUESTS: "request", CHARACTERS: "character", AUDIO_SECONDS: "audio_second"}


def _unit_costs(
    b: Builder,
    est: Estimator,
    sr: StoredRow,
    labels: Mapping[str, str],
    raw: Mapping[str, str],
    tokens: Mapping[str, int],
    day: dt.date,
    periods: Sequence[str],
    budgets: _BudgetInputs,
    revised: bool,
) -> None:
    """Estimated cost of requests, characters, audio seconds and web searches.

    Exposed with token_type="" on llm_cost_estimated_usd_total. A speech or transcription row
    (no tokens) whose unit has no price marks its model unpriced, never $0.
    """
    m = sr.row.measures
    counts = {unit: int(m[measure]) for measure, unit in _UNIT_MEASURES.items() if m.get(measure)}
    if m.get(TOOL_CALLS) and sr.row.dim("tool") == "web_search":
        counts["web_search"] = int(m[TOOL_CALLS])
    if not counts:
        return
    costs = est.estimate_units(sr.provider, raw, counts, day)
    row_usd = Decimal(0)
    for usd, source in costs.values():
        row_usd += usd
        b.add(
            "llm_cost_estimated_usd_total",
            {**labels, "token_type": "", "price_source": source},
            usd,
        )
        for p in periods:
            b.add("llm_period_cost_estimated_usd", {**labels, "period": p}, usd)
    if row_usd and not revised:
        budgets.add(raw, calendar_day(sr, budgets.inp.tz), estimated=row_usd)
    billed_by = [u for u in ("character", "audio_second") if u in counts]
    if not tokens and billed_by and not any(u in costs for u in billed_by):
        b.add("llm_unpriced_model_requests_total", labels, int(m.get(REQUESTS, 0)))
        if not revised:
            b.fam("llm_unpriced_model_info").set((sr.provider, labels.get("model", "")), 1)


CLAUDE_CODE = "claude_code"
_CC_COUNTERS = {
    SESSIONS: ("llm_claude_code_sessions_total", {}),
    CC_LINES_ADDED: ("llm_claude_code_lines_total", {"change": "added"}),
    CC_LINES_REMOVED: ("llm_claude_code_lines_total", {"change": "removed"}),
    CC_COMMITS: ("llm_claude_code_commits_total", {}),
    CC_PULL_REQUESTS: ("llm_claude_code_pull_requests_total", {}),
}


def _claude_code(b: Builder, labels: Mapping[str, str], m: Mapping[str, Number]) -> None:
    for name, v in m.items():
        if name in _CC_COUNTERS:
            metric, extra = _CC_COUNTERS[name]
            b.add(metric, {**labels, **extra}, int(v))
        elif name.startswith(TOKENS):
            tt = name[len(TOKENS) :]
            b.add("llm_claude_code_tokens_total", {**labels, "token_type": tt}, int(v))
        elif name == CC_ESTIMATED_COST:
            b.add("llm_claude_code_estimated_cost_usd_total", labels, Decimal(v))


def _reconciliation(b: Builder, spend: Mapping[tuple[str, str], _Spend], month_start: int) -> None:
    """Estimated / reported token cost over this month's closed cost days.

    Like is compared with like: only (model, token type) pairs that the estimate prices and
    the provider bills as a token line item, so image, storage and tool costs, or a model
    with no known price, never read as drift (they have their own metrics and alerts). A
    billed line whose model name differs from the usage's model is left out, not mismatched.
    """
    month_day = month_start - month_start % 86400
    for (p, a), sp in spend.items():
        if sp.newest_cost_day is None:
            continue
        closed = sp.newest_cost_day
        priced = {(m, tt) for m, tt, d in sp.estimated if month_day <= d < closed}
        billed = {(m, tt) for m, tt, d in sp.reported if month_day <= d < closed}
        both = priced & billed
        per_model: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        for side, series in ((0, sp.estimated), (1, sp.reported)):
            for (m, tt, d), usd in series.items():
                if month_day <= d < closed and (m, tt) in both:
                    per_model[m][side] += usd
        est_total = rep_total = Decimal(0)
        for m, (est, rep) in per_model.items():
            if rep > 0:
                b.fam("llm_model_cost_reconciliation_ratio").set((p, a, m), est / rep)
                est_total += est
                rep_total += rep
        if rep_total > 0:
            b.fam("llm_cost_reconciliation_ratio").set((p, a), est_total / rep_total)


_Series = tuple[dict[dt.date, Decimal], dict[dt.date, Decimal], list[int]]


class _BudgetInputs:
    """Collects, per budget and per (provider, account), the daily spend in its scope."""

    def __init__(self, inp: ModelInput) -> None:
        self.inp = inp
        self.items: list[tuple[BudgetSettings, Selector, dt.date]] = []
        for bs in inp.budgets:
            start, _ = period_bounds(bs.period, inp.now, inp.tz)
            self.items.append((bs, compile_selector(bs.selector), start.date()))
        # budget -> (provider, account) -> (reported by day, estimated by day, [unpriced tokens])
        self.data: dict[str, dict[tuple[str, str], _Series]] = {}

    def add(
        self,
        labels: Mapping[str, str],
        day: dt.date,
        reported: Decimal = Decimal(0),
        estimated: Decimal = Decimal(0),
        unpriced: int = 0,
    ) -> None:
        if not self.items:
            return
        for bs, sel, period_start in self.items:
            if not sel.matches(labels):
                continue
            rep, est, unp = self.data.setdefault(bs.name, {}).setdefault(
                (labels["provider"], labels["account"]),
                (defaultdict(Decimal), defaultdict(Decimal), [0]),
            )
            if reported:
                rep[day] += reported
            if estimated:
                est[day] += estimated
            if unpriced and day >= period_start:
                unp[0] += unpriced

    def known_accounts(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """Configured accounts, and those whose spend is known (data stored, or polled OK)."""
        h = self.inp.health
        configured = {(p, a) for p, a, _ in h.endpoints}
        known = {(sr.provider, sr.account) for sr in self.inp.rows}
        known |= {(p, a) for (p, a, _), st in h.endpoints.items() if st.last_success is not None}
        return configured, known

    def emit(self, b: Builder, spend: Mapping[tuple[str, str], _Spend]) -> None:
        inp = self.inp
        configured, known = self.known_accounts()
        for bs, _, _ in self.items:
            # No figure rather than a false $0: a budget whose accounts have neither stored
            # data nor a successful poll yet (a fresh state file, a provider down) is not shown.
            where = compile_selector(
                {k: v for k, v in bs.selector.items() if k in ("provider", "account")}
            )
            in_scope = {
                (p, a) for p, a in configured if where.matches({"provider": p, "account": a})
            }
            if in_scope - known:
                continue
            parts = []
            for (p, a), (rep, est, unp) in self.data.get(bs.name, {}).items():
                sp = spend.get((p, a))
                through: dt.date | None = None
                # A scope that cost rows cannot express (e.g. a model selector on OpenAI, whose
                # costs carry no model) is estimated only; so is a provider with no cost API.
                if (
                    sp is not None
                    and sp.newest_cost_day is not None
                    and all(k in ("provider", "account") or k in sp.cost_dims for k in bs.selector)
                ):
                    through = dt.datetime.fromtimestamp(sp.newest_cost_day, dt.UTC).date()
                    parts.append(ScopePart(rep, est, through, unp[0]))
                else:
                    parts.append(ScopePart({}, est, None, unp[0]))
            st = evaluate(bs, inp.now, inp.tz, parts)
            key = (bs.name,)
            if st.limit is not None:
                b.fam("llm_budget_limit_usd").set(key, st.limit)
                for t in bs.thresholds:
                    b.fam("llm_budget_threshold_ratio").set((bs.name, format_value(t)), t)
            b.fam("llm_budget_spent_usd").set(key, st.spent)
            if st.ratio is not None:
                b.fam("llm_budget_spent_ratio").set(key, st.ratio)
            b.fam("llm_budget_forecast_usd").set(key, st.forecast)
            b.fam("llm_budget_forecast_lower_usd").set(key, st.forecast_lower)
            b.fam("llm_budget_forecast_upper_usd").set(key, st.forecast_upper)
            if st.exhaustion is not None:
                b.fam("llm_budget_exhaustion_forecast_timestamp_seconds").set(
                    key, st.exhaustion.timestamp()
                )
            b.fam("llm_budget_period_start_timestamp_seconds").set(key, st.period_start.timestamp())
            b.fam("llm_budget_period_end_timestamp_seconds").set(key, st.period_end.timestamp())
            b.fam("llm_budget_unpriced_tokens").set(key, st.unpriced_tokens)
            sel = bs.selector
            info = (bs.name, bs.period, bs.basis, inp.tz.key)
            scope = tuple(sel.get(k, "") for k in ("provider", "account", "project", "model"))
            b.fam("llm_budget_info").set(info + scope, 1)


def _prices(b: Builder, est: Estimator, seen: set[tuple[str, str]], day: dt.date) -> None:
    for e in est.price_table(sorted(seen), day):
        b.fam("llm_price_usd_per_token").set(
            (e.provider, e.model, e.token_type, e.source), e.usd_per_token
        )
    info = est.data_info()
    b.fam("llm_price_data_info").set((info.source, info.version, info.refresh), 1)
    if info.refresh_time is not None:
        b.fam("llm_price_data_refresh_attempt_timestamp_seconds").set((), info.refresh_time)
    if info.timestamp is not None:
        b.fam("llm_price_data_timestamp_seconds").set((), info.timestamp)


def _health(b: Builder, h: Health) -> None:
    for (p, a, e), st in h.endpoints.items():
        if st.up is not None:
            b.fam("llm_source_up").set((p, a, e), st.up)
        if st.last_success is not None:
            b.fam("llm_source_last_success_timestamp_seconds").set((p, a, e), st.last_success)
        if st.watermark is not None:
            b.fam("llm_source_watermark_timestamp_seconds").set((p, a, e), st.watermark)
        if st.horizon is not None:
            b.fam("llm_source_revision_horizon_seconds").set((p, a, e), st.horizon)
        if st.latest_bucket is not None:
            b.fam("llm_source_latest_bucket_timestamp_seconds").set((p, a, e), st.latest_bucket)
        b.fam("llm_source_rows_ingested_total").set((p, a, e), st.rows_ingested)
        b.fam("llm_source_revisions_total").set((p, a, e), st.revisions)
    for (p, a, e, code), n in h.requests.items():
        b.fam("llm_source_api_requests_total").set((p, a, e, code), n)
    for (p, a, e, reason), n in h.failures.items():
        b.fam("llm_source_api_request_failures_total").set((p, a, e, reason), n)
    for (p, e), hist in h.durations.items():
        b.fam("llm_source_api_request_duration_seconds").histograms[(p, e)] = hist
    for (p, a), s in h.poll_duration.items():
        b.fam("llm_source_poll_duration_seconds").set((p, a), s)
    for (p, a), n in h.poll_requests.items():
        b.fam("llm_source_poll_api_requests").set((p, a), n)
    for (p, a, e), n in h.payload_errors.items():
        b.fam("llm_source_payload_errors_total").set((p, a, e), n)
