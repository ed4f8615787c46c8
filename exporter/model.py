"""The metric model: families rendered from the aggregates (plus prices, budgets, health).

Counters are sums over every stored bucket since the history start, plus the downward
revisions the ledger has seen (so a counter never goes down while the state lives; the
revised amount is exposed on its own). Period gauges are exact sums of the buckets that start
in the period, in the configured time zone. The sums themselves are kept by
`exporter.aggregates` (row by row, see `exporter.fold`); this module only reads them, so a
render costs in proportion to the series exposed, not to the history behind them. Nothing
here does I/O or knows provider JSON. One function per metric family group, each reading
the sums it needs: `_counters`, `_periods`, `_storage`, `_prices`, `_reconciliation`,
`_budgets`, `_health`.

Example exposition:

    llm_tokens_total{provider="p",account="main",operation="completions",model="m-1",
                     project="proj_a",token_type="cache_read"} 1234
    llm_cost_reported_usd_total{provider="p",account="main",project="proj_a",model="",
                                line_item="m-1, input"} 12.5
"""

from __future__ import annotations

import datetime as dt
import platform
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from typing import Protocol
from zoneinfo import ZoneInfo

from exporter import __version__
from exporter.aggregates import Aggregates, period_starts
from exporter.budgets import ScopePart, evaluate, matched_series, period_bounds
from exporter.exposition import Family, format_value, gc_paused
from exporter.fold import (
    FOLD_AS,
    FOLDED,
    OPT_IN,
    PROXY_USER,
    EstimateLike,
    FoldContext,
    Key,
    RowPricer,
    opt_labels_for,
    resolve_labels,
)
from exporter.health import Health
from exporter.ledger import Revision, StoredRow
from exporter.names import BY_NAME
from exporter.rows import Number, Row
from exporter.schema import BudgetSettings
from exporter.selectors import compile_selector

__all__ = [
    "OPT_IN",
    "EstimateLike",
    "ModelInput",
    "PriceEntry",
    "RowEstimate",
    "build",
    "opt_labels_for",
    "render_model",
]

OTHER = "other"


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


class Estimator(RowPricer, Protocol):
    """What the model needs from pricing (implemented by `exporter.pricing.PriceBook`)."""

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
class RenderInput:
    """What a render needs besides the sums."""

    health: Health
    now: dt.datetime  # aware
    tz: ZoneInfo
    opt_labels: tuple[str, ...]  # enabled opt-in labels, in OPT_IN order
    max_values: int = 50
    estimator: Estimator | None = None
    budgets: Sequence[BudgetSettings] = ()
    revision: str = ""
    daily_days: int = 35  # days exposed by the exact-day gauges, today included


@dataclass
class ModelInput:
    """Rows and revisions folded from scratch (tests, benchmarks): see `build`."""

    rows: Sequence[StoredRow]
    revisions: Sequence[Revision]
    health: Health
    now: dt.datetime  # aware
    tz: ZoneInfo
    history_start: int  # unix seconds
    opt_labels: tuple[str, ...]
    max_values: int = 50
    estimator: Estimator | None = None
    budgets: Sequence[BudgetSettings] = ()
    revision: str = ""


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


def build(inp: ModelInput) -> list[Family]:
    """Fold `inp.rows` and `inp.revisions` from scratch, then render."""
    ctx = FoldContext(inp.tz, inp.opt_labels, inp.estimator, inp.budgets)
    agg = Aggregates(ctx, history_start=inp.history_start)
    agg.roll(inp.now)
    agg.fold(sr for sr in inp.rows if sr.start >= inp.history_start)
    agg.fold(
        (sr for sr in _revision_rows(inp.revisions) if sr.start >= inp.history_start),
        revised=True,
    )
    return render_model(
        agg,
        RenderInput(
            inp.health,
            inp.now,
            inp.tz,
            inp.opt_labels,
            inp.max_values,
            inp.estimator,
            inp.budgets,
            inp.revision,
        ),
    )


class _Out:
    """The families of one render."""

    def __init__(self, opt: tuple[str, ...]) -> None:
        self.opt = opt
        self.fams: dict[str, Family] = {}

    def fam(self, name: str) -> Family:
        f = self.fams.get(name)
        if f is None:
            spec = BY_NAME[name]
            f = self.fams[name] = Family(spec, resolve_labels(spec.labels, self.opt))
        return f


def render_model(agg: Aggregates, inp: RenderInput) -> list[Family]:
    """Every family, from the current sums. Holds the aggregates' lock while it reads."""
    out = _Out(inp.opt_labels)
    with agg.lock, gc_paused():
        keep = fold_sets(agg, inp.opt_labels, inp.max_values)
        _counters(out, agg, keep)
        _periods(out, agg, keep, inp)
        _daily(out, agg, keep, inp)
        _storage(out, agg, keep)
        if inp.estimator is not None:
            _prices(out, agg, inp.estimator, inp.now.astimezone(inp.tz).date())
            _reconciliation(out, agg, inp)
        _budgets(out, agg, inp, matched=True)
    _health(out, inp.health)
    out.fam("llm_exporter_build_info").set(
        (__version__, inp.revision, platform.python_version()), 1
    )
    if inp.health.last_poll is not None:
        out.fam("llm_exporter_last_poll_timestamp_seconds").set((), inp.health.last_poll)
    return list(out.fams.values())


def history_families(
    agg: Aggregates, inp: RenderInput, keep: Mapping[str, set[str]], periods: bool = True
) -> list[Family]:
    """What a backfill writes at one past time: the counters, the period gauges (day, week
    and month to date, which "last month" and the run-rate rules read over the past), the
    vector-store level and the budget gauges, folded with the live exporter's kept label
    values (`keep`), so the series are the live ones. `periods=False` leaves out the
    gauges of the periods and the storage level (a backfill writes those less often)."""
    out = _Out(inp.opt_labels)
    with agg.lock:
        _counters(out, agg, keep)
        if periods:
            _periods(out, agg, keep, inp)
            _storage(out, agg, keep)
        _budgets(out, agg, inp)
    return list(out.fams.values())


def fold_sets(agg: Aggregates, opt: tuple[str, ...], max_values: int) -> dict[str, set[str]]:
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
    first: dict[str, dict[str, tuple[int, Number]]] = defaultdict(dict)
    for (lab, value, day), (size, _) in agg.sums("f").items():
        seen = first[str(lab)].get(str(value))
        if seen is None or int(day) < seen[0]:  # type: ignore[call-overload]
            first[str(lab)][str(value)] = (int(day), size)  # type: ignore[call-overload]
    for lab in (*FOLDED, PROXY_USER):  # gateway users: ranked whenever they exist
        values = first.get(lab, {})
        if (lab in opt or lab == PROXY_USER) and len(values) > max_values:
            ranked = sorted(values, key=lambda v: (values[v][0], -values[v][1], v))
            keep[lab] = set(ranked[:max_values])
    return keep


def _folder(
    labels: tuple[str, ...], keep: Mapping[str, set[str]], family: str = ""
) -> list[tuple[int, set[str]]]:
    ranked_by = FOLD_AS.get(family, {})  # a label folded by another ranking (gateway users)
    return [
        (i, keep[by]) for i, lab in enumerate(labels) if (by := ranked_by.get(lab, lab)) in keep
    ]


def _folded(key: Key, positions: list[tuple[int, set[str]]]) -> tuple[str, ...]:
    for i, kept in positions:
        if key[i] and key[i] not in kept:
            break
    else:  # nothing to fold (the usual case): the key itself, no new tuple
        return key  # type: ignore[return-value]
    out = list(key)
    for i, kept in positions:
        if out[i] and out[i] not in kept:
            out[i] = OTHER
    return tuple(out)  # type: ignore[arg-type]


def _counters(out: _Out, agg: Aggregates, keep: Mapping[str, set[str]]) -> None:
    """All-time counters (and revised-away gauges), long tail folded."""
    for kind, sums in agg.cells.items():
        if not kind.startswith("t:") or kind[2] == "_":
            continue
        fam = out.fam(kind[2:])
        positions = _folder(fam.labels, keep, kind[2:])
        if positions or fam.samples:
            for key, (value, _) in sums.items():
                fam.add(_folded(key, positions), value)
        else:  # distinct keys, nothing folded: each sample is new (as `Family.add` sets it)
            new = [(key, v if type(v) is int else 0 + v) for key, (v, _) in sums.items()]
            fam.samples.update(new)  # type: ignore[arg-type]
    for p, model in agg.sums("t:_unpriced_model"):
        out.fam("llm_unpriced_model_info").set((str(p), str(model)), 1)


def _periods(out: _Out, agg: Aggregates, keep: Mapping[str, set[str]], inp: RenderInput) -> None:
    """Day, week and month to date (the sums of the open periods)."""
    for kind, sums in agg.cells.items():
        if not kind.startswith("p:"):
            continue
        _, period, name = kind.split(":", 2)
        fam = out.fam(name)
        at = fam.labels.index("period")
        positions = _folder(fam.labels, keep)
        for key, (value, _) in sums.items():
            k = list(_folded(key, positions))
            k[at] = period
            fam.add(tuple(k), value)
    for p, start in period_starts(inp.now, inp.tz).items():
        midnight = dt.datetime.combine(start, dt.time(), tzinfo=inp.tz)
        out.fam("llm_period_start_timestamp_seconds").set((p,), int(midnight.timestamp()))


def _daily(out: _Out, agg: Aggregates, keep: Mapping[str, set[str]], inp: RenderInput) -> None:
    """Exact totals of each of the last `daily_days` calendar days, labelled by date."""
    today = inp.now.astimezone(inp.tz).date().toordinal()
    first = today - inp.daily_days + 1
    dates: dict[int, str] = {}
    for kind, sums in agg.cells.items():
        if not kind.startswith("y:"):
            continue
        shown = [(k, v) for k, (v, _) in sums.items() if first <= k[0] <= today]  # type: ignore[operator]
        if not shown:
            continue
        fam = out.fam(kind[2:])
        at = fam.labels.index("date")
        positions = _folder(fam.labels, keep)
        for key, value in shown:
            day = int(key[0])  # type: ignore[call-overload]
            k = list(_folded(key[1:], positions))
            date = dates.get(day)
            if date is None:
                date = dates[day] = dt.date.fromordinal(day).isoformat()
            k[at] = date
            fam.add(tuple(k), value)


def _storage(out: _Out, agg: Aggregates, keep: Mapping[str, set[str]]) -> None:
    """Vector-store bytes: a level, so the newest bucket's value, never a sum over days."""
    latest: dict[tuple[str, str, str], tuple[int, int]] = {}
    kept = keep.get("project")
    for (p, a, project, start), (value, _) in agg.sums("l").items():
        proj = str(project)
        if kept is not None and proj and proj not in kept:
            proj = OTHER
        k = (str(p), str(a), proj)
        s = int(start)  # type: ignore[call-overload]
        prev = latest.get(k)
        if prev is None or s > prev[0]:
            latest[k] = (s, int(value))
        elif s == prev[0]:
            latest[k] = (s, prev[1] + int(value))
    for k, (_, v) in latest.items():
        out.fam("llm_vector_store_bytes").set(k, v)


def _prices(out: _Out, agg: Aggregates, est: Estimator, day: dt.date) -> None:
    seen = sorted((str(p), str(m)) for p, m in agg.sums("t:_seen_model"))
    for e in est.price_table(seen, day):
        out.fam("llm_price_usd_per_token").set(
            (e.provider, e.model, e.token_type, e.source), e.usd_per_token
        )
    info = est.data_info()
    out.fam("llm_price_data_info").set((info.source, info.version, info.refresh), 1)
    if info.refresh_time is not None:
        out.fam("llm_price_data_refresh_attempt_timestamp_seconds").set((), info.refresh_time)
    if info.timestamp is not None:
        out.fam("llm_price_data_timestamp_seconds").set((), info.timestamp)


def _newest_cost_day(agg: Aggregates) -> dict[tuple[str, str], int]:
    """Per account, the start of the newest UTC day with a non-zero reported cost."""
    newest: dict[tuple[str, str], int] = {}
    for p, a, day in agg.sums("c"):
        k = (str(p), str(a))
        newest[k] = max(newest.get(k, int(day)), int(day))  # type: ignore[call-overload]
    return newest


def _reconciliation(out: _Out, agg: Aggregates, inp: RenderInput) -> None:
    """Estimated / reported token cost over this month's closed cost days.

    Like is compared with like: only (model, token type) pairs that the estimate prices and
    the provider bills as a token line item, so image, storage and tool costs, or a model
    with no known price, never read as drift (they have their own metrics and alerts). A
    billed line whose model name differs from the usage's model is left out, not mismatched.
    """
    month = period_starts(inp.now, inp.tz)["month"]
    month_start = int(dt.datetime.combine(month, dt.time(), tzinfo=inp.tz).timestamp())
    month_day = month_start - month_start % 86400
    newest = _newest_cost_day(agg)
    # (provider, account) -> side -> (model, token type) -> usd, over this month's closed days
    sides: dict[tuple[str, str], tuple[dict[tuple[str, str], Decimal], ...]] = {}
    for side, kind in ((0, "r.est"), (1, "r.rep")):
        for (p, a, m, tt, d), (usd, _) in agg.sums(kind).items():
            closed = newest.get((str(p), str(a)))
            if closed is None or not month_day <= int(d) < closed:  # type: ignore[call-overload]
                continue
            pair = sides.setdefault((str(p), str(a)), ({}, {}))[side]
            k = (str(m), str(tt))
            pair[k] = pair.get(k, Decimal(0)) + Decimal(usd)
    for (p, a), (estimated, reported) in sorted(sides.items()):
        both = estimated.keys() & reported.keys()
        per_model: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        for m, tt in both:
            per_model[m][0] += estimated[(m, tt)]
            per_model[m][1] += reported[(m, tt)]
        est_total = rep_total = Decimal(0)
        for m, (est, rep) in per_model.items():
            if rep > 0:
                out.fam("llm_model_cost_reconciliation_ratio").set((p, a, m), est / rep)
                est_total += est
                rep_total += rep
        if rep_total > 0:
            out.fam("llm_cost_reconciliation_ratio").set((p, a), est_total / rep_total)


def _budgets(out: _Out, agg: Aggregates, inp: RenderInput, matched: bool = False) -> None:
    """Each budget's spend, limit, ratio and forecast over its scope's daily spend, and with
    `matched` (the live exposition, not a backfill's past: the alert on it counts its `for:`
    from live samples) how many series its selector matches."""
    if not inp.budgets:
        return
    h = inp.health
    configured = {(p, a) for p, a, _ in h.endpoints}
    known = {(str(p), str(a)) for p, a in agg.sums("t:_account")}
    known |= {(p, a) for (p, a, _), st in h.endpoints.items() if st.last_success is not None}
    newest = _newest_cost_day(agg)
    cost_dims: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p, a, dim in agg.sums("t:_cost_dim"):
        cost_dims[(str(p), str(a))].add(str(dim))
    # budget -> (provider, account) -> (reported by day, estimated by day, unpriced by day)
    data: dict[str, dict[tuple[str, str], tuple[dict[int, Number], ...]]] = {}
    for i, kind in enumerate(("b.rep", "b.est", "b.unp")):
        for (name, p, a, day), (value, _) in agg.sums(kind).items():
            series = data.setdefault(str(name), {}).setdefault((str(p), str(a)), ({}, {}, {}))
            series[i][int(day)] = value  # type: ignore[call-overload]
    scope_series = _budget_series(agg, inp.opt_labels) if matched else []
    for bs in inp.budgets:
        # No figure rather than a false $0: a budget whose accounts have neither stored
        # data nor a successful poll yet (a fresh state file, a provider down) is not shown.
        where = compile_selector(
            {k: v for k, v in bs.selector.items() if k in ("provider", "account")}
        )
        in_scope = {(p, a) for p, a in configured if where.matches({"provider": p, "account": a})}
        if in_scope - known:
            continue
        start = period_starts_for(bs, inp)
        parts = []
        for (p, a), (rep, est, unp) in data.get(bs.name, {}).items():
            unpriced = sum(int(v) for d, v in unp.items() if d >= start)
            reported = {dt.date.fromordinal(d): Decimal(v) for d, v in rep.items()}
            estimated = {dt.date.fromordinal(d): Decimal(v) for d, v in est.items()}
            closed = newest.get((p, a))
            # A scope that cost rows cannot express (e.g. a model selector on a provider whose
            # costs carry no model) is estimated only; so is a provider with no cost API.
            if closed is not None and all(
                k in ("provider", "account") or k in cost_dims[(p, a)] for k in bs.selector
            ):
                through = dt.datetime.fromtimestamp(closed, dt.UTC).date()
                parts.append(ScopePart(reported, estimated, through, unpriced))
            else:
                parts.append(ScopePart({}, estimated, None, unpriced))
        _budget_state(out, bs, inp, parts)
        if matched:
            out.fam("llm_budget_matched_series").set(
                (bs.name,), matched_series(bs.selector, scope_series)
            )


# The families a budget's spend is summed from, and their labels that no selector names.
_BUDGET_FAMILIES = (
    "llm_cost_reported_usd_total",
    "llm_cost_estimated_usd_total",
    "llm_unpriced_tokens_total",
)
_NOT_SELECTED = frozenset({"token_type", "price_source", "line_item"})


def _budget_series(agg: Aggregates, opt_labels: tuple[str, ...]) -> list[dict[str, str]]:
    """The distinct usage and cost series (label sets, token type and line item aside) of
    every stored bucket since the history start, unfolded: what budget selectors match."""
    out: list[dict[str, str]] = []
    for family in _BUDGET_FAMILIES:
        names = resolve_labels(BY_NAME[family].labels, opt_labels)
        keep = [(i, n) for i, n in enumerate(names) if n not in _NOT_SELECTED]
        pick = itemgetter(*(i for i, _ in keep))  # several labels: a tuple of their values
        distinct = {pick(key) for key in agg.sums("t:" + family)}
        out += [dict(zip((n for _, n in keep), values, strict=True)) for values in distinct]
    return out


def period_starts_for(bs: BudgetSettings, inp: RenderInput) -> int:
    """The first local day (ordinal) of the budget's current period."""
    start, _ = period_bounds(bs.period, inp.now, inp.tz)
    return start.astimezone(inp.tz).date().toordinal()


def _budget_state(out: _Out, bs: BudgetSettings, inp: RenderInput, parts: list[ScopePart]) -> None:
    st = evaluate(bs, inp.now, inp.tz, parts)
    key = (bs.name,)
    if st.limit is not None:
        out.fam("llm_budget_limit_usd").set(key, st.limit)
        for t in bs.thresholds:
            out.fam("llm_budget_threshold_ratio").set((bs.name, format_value(t)), t)
    out.fam("llm_budget_spent_usd").set(key, st.spent)
    if st.ratio is not None:
        out.fam("llm_budget_spent_ratio").set(key, st.ratio)
    out.fam("llm_budget_forecast_usd").set(key, st.forecast)
    out.fam("llm_budget_forecast_lower_usd").set(key, st.forecast_lower)
    out.fam("llm_budget_forecast_upper_usd").set(key, st.forecast_upper)
    if st.exhaustion is not None:
        out.fam("llm_budget_exhaustion_forecast_timestamp_seconds").set(
            key, st.exhaustion.timestamp()
        )
    out.fam("llm_budget_period_start_timestamp_seconds").set(key, st.period_start.timestamp())
    out.fam("llm_budget_period_end_timestamp_seconds").set(key, st.period_end.timestamp())
    out.fam("llm_budget_unpriced_tokens").set(key, st.unpriced_tokens)
    sel = bs.selector
    info = (bs.name, bs.period, bs.basis, inp.tz.key)
    scope = tuple(sel.get(k, "") for k in ("provider", "account", "project", "model"))
    out.fam("llm_budget_info").set(info + scope, 1)


def _health(out: _Out, h: Health) -> None:
    for (p, a, e), st in h.endpoints.items():
        if st.up is not None:
            out.fam("llm_source_up").set((p, a, e), st.up)
        if st.last_success is not None:
            out.fam("llm_source_last_success_timestamp_seconds").set((p, a, e), st.last_success)
        if st.watermark is not None:
            out.fam("llm_source_watermark_timestamp_seconds").set((p, a, e), st.watermark)
        if st.horizon is not None:
            out.fam("llm_source_revision_horizon_seconds").set((p, a, e), st.horizon)
        if st.latest_bucket is not None:
            out.fam("llm_source_latest_bucket_timestamp_seconds").set((p, a, e), st.latest_bucket)
        out.fam("llm_source_rows_ingested_total").set((p, a, e), st.rows_ingested)
        out.fam("llm_source_revisions_total").set((p, a, e), st.revisions)
    for (p, a, e, code), n in h.requests.items():
        out.fam("llm_source_api_requests_total").set((p, a, e, code), n)
    for (p, a, e, reason), n in h.failures.items():
        out.fam("llm_source_api_request_failures_total").set((p, a, e, reason), n)
    for (p, e), hist in h.durations.items():
        out.fam("llm_source_api_request_duration_seconds").histograms[(p, e)] = hist
    for (p, a), s in h.poll_duration.items():
        out.fam("llm_source_poll_duration_seconds").set((p, a), s)
    for (p, a), n in h.poll_requests.items():
        out.fam("llm_source_poll_api_requests").set((p, a), n)
    for (p, a, e), n in h.payload_errors.items():
        out.fam("llm_source_payload_errors_total").set((p, a, e), n)
