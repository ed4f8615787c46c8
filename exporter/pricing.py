"""Estimated cost: tokens x the unit price in force on the bucket's date.

Prices come from the maintained `genai-prices` database (bundled with the package, optionally
refreshed at run time), overridable in config for negotiated rates, discounts and aliases.
Everything here is a pure function of (settings, database snapshot, arguments) except the
optional refresh. Money is `Decimal` end to end: the database's prices are converted with
`Decimal(str(x))` (they are already `Decimal` in current releases) and a cost is
`tokens * usd_per_token`, exact.

Rules, in the order they apply to one (provider, model, token type, day, context):

1. **Override** (config `prices.overrides`): the entry for this provider and model (exact name,
   or a `*` pattern; an exact name beats any pattern) with the latest `effective_from` on or
   before the day (none = always; later in the file wins a tie). `usd_per_mtok` sets a token
   type's standard price outright (no multiplier; batch rule 6 still applies); other types
   are priced from the database (for `alias_of` if set, else the model itself) times
   `multiplier`. Any price an override contributed to has `price_source="override"`.
2. **Model lookup** in the database under the provider's id (`ProviderPricing.price_id`).
   A model the database does not know is then looked up under the names its adapter offers
   (`ProviderPricing.model_candidates`: for a fine-tune, the database's fine-tune entry first,
   since fine-tune inference usually costs more, then the base model, which is then a lower
   bound: add an override to make it exact).
3. **Date**: the price entry in force on the day (UTC date of the price change), so history is
   priced at the prices of its time.
4. **Token type** -> database price field, most specific first (`TOKEN_PRICE_KEYS`). Like the
   database's own calculator, a type without its own price falls back to the more general
   field that covers it (image input of a vision chat model is billed as input; a cache read
   of a model with no cache price is billed as input; an unqualified cache write as input), with
   three exceptions where that fallback is known to be wrong and the type stays unpriced:
   audio (audio tokens cost several times text tokens, and the database lacks audio prices
   for some audio models), `cache_write_5m` (never the plain input price: timed cache writes
   carry a write premium), `cache_write_1h` (only a 1 h price; the 5 min price is lower) and
   `cache_write_12h` (only a 12 h price: neither the input price nor the 30 min write
   price). genai-prices 0.2.5 has no 12 h field, so until a release has one those tokens are
   unpriced unless an override gives `cache_write_12h` a `usd_per_mtok`.
5. **Long-context tiers** are never triggered by a bucket's total: the base tier is used,
   unless the provider reports the request's context window (dimension `context_window`,
   e.g. "200k-1M"), in which case the tiers whose threshold that window's lower bound reaches apply.
6. **Service tier and batch**: the database's price variants (`service_tier`,
   `processing=batch`) when it has them for that day. With no batch prices in the database,
   batch usage is priced at the provider's published batch discount
   (`ProviderPricing.batch_discount`, declared by its adapter; Quote.batch_rule records it);
   a provider without one keeps the standard price. A service tier without variants is
   priced at standard rates. `service_tier="batch"` counts as batch.

Unknown model or unpriced token type: `None`, never zero; the caller counts those tokens as
unpriced. Time-of-day prices (off-peak) cannot apply to a daily bucket: 12:00 UTC is used.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import NamedTuple

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices
from genai_prices.update_prices import DEFAULT_UPDATE_URL, UpdatePrices

from exporter.rows import TOKEN_TYPES
from exporter.schema import PriceOverride, PricesSettings

log = logging.getLogger(__name__)

SOURCE_DATABASE = "database"
SOURCE_OVERRIDE = "override"
SOURCE_FREE = "free"  # the provider does not bill this operation

DATA_SOURCE = "genai-prices"  # bundled with the installed package
DATA_SOURCE_REFRESHED = "genai-prices-remote"  # fetched at run time (prices.refresh)


def _no_candidates(model: str) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class ProviderPricing:
    """What pricing needs to know of one provider; each adapter declares its own.

    `price_id`: the provider's id in the price database ("" = the provider's own name).
    `batch_discount`: the published batch multiplier applied where the database has no batch
    price (None: batch usage keeps the standard price). `free_operations`: operations the
    provider does not bill, whatever the model (their tokens cost $0: priced, not
    "unpriced"). `model_candidates`: names to try, in order, for a model the database does not
    know as reported (e.g. a fine-tune's own entry, then its base model).
    """

    price_id: str = ""
    batch_discount: Decimal | None = None
    free_operations: frozenset[str] = frozenset()
    model_candidates: Callable[[str], tuple[str, ...]] = _no_candidates


# Token type -> database price fields, most specific first. A field's unit is covered by the
# ones after it, so the first priced field is the price the database itself would bill.
# Types whose list stops early (audio, timed cache writes) are never priced more generally.
TOKEN_PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_text_mtok", "input_mtok"),
    "input_audio": ("input_audio_mtok",),
    "input_image": ("input_image_mtok", "input_mtok"),
    "cache_read": ("cache_text_read_mtok", "cache_read_mtok", "input_text_mtok", "input_mtok"),
    "cache_read_audio": ("cache_audio_read_mtok", "input_audio_mtok"),
    "cache_read_image": (
        "cache_image_read_mtok",
        "input_image_mtok",
        "cache_read_mtok",
        "input_mtok",
    ),
    "cache_write": ("cache_text_write_mtok", "cache_write_mtok", "input_text_mtok", "input_mtok"),
    "cache_write_5m": (
        "cache_text_write_5m_mtok",
        "cache_write_5m_mtok",
        "cache_text_write_mtok",
        "cache_write_mtok",
    ),
    "cache_write_1h": ("cache_text_write_1h_mtok", "cache_write_1h_mtok"),
    # Named like the database's 5m/1h fields; no release has them yet (see rule 4 above).
    "cache_write_12h": ("cache_text_write_12h_mtok", "cache_write_12h_mtok"),
    "output": ("output_text_mtok", "output_mtok"),
    "output_audio": ("output_audio_mtok",),
    "output_image": ("output_image_mtok", "output_mtok"),
}
assert set(TOKEN_PRICE_KEYS) == set(TOKEN_TYPES)

# Non-token billing units -> (database price fields, units per price): per-request fees,
# text-to-speech characters, transcription seconds and web search calls.
UNIT_PRICE_KEYS: dict[str, tuple[tuple[str, ...], Decimal]] = {
    "request": (("requests_kcount",), Decimal(1000)),
    "character": (("input_mchars",), Decimal(1_000_000)),
    "audio_second": (("input_audio_hours", "audio_hours"), Decimal(3600)),
    "web_search": (("web_searches_kcount",), Decimal(1000)),
}
UNITS = tuple(UNIT_PRICE_KEYS)

# (cached type, the uncached type it would otherwise have been billed as)
CACHE_PAIRS = (
    ("cache_read", "input"),
    ("cache_read_audio", "input_audio"),
    ("cache_read_image", "input_image"),
)

_MTOK = Decimal(1_000_000)
# Wide enough that tokens (< 10^20) x prices never round: every result here is exact.
_D = Context(prec=60)
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*-")


def _dec(value: object) -> Decimal:
    """Money from the database or config: floats via their shortest repr, never binary."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(str(value))
    raise TypeError(f"not a price: {value!r}")


def context_floor(context_window: str) -> int:
    """Exclusive lower bound of a reported context-window bucket ("200k-1M" -> 200000)."""
    m = _WINDOW.match(context_window or "")
    if not m:
        return 0
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(Decimal(m.group(1)) * scale)


def _tier_price(value: Decimal | TieredPrices, floor: int) -> Decimal:
    """Base price, or the highest tier that every request in the window is known to reach."""
    if not isinstance(value, TieredPrices):
        return _dec(value)
    price = _dec(value.base)
    if floor > 0:
        for tier in sorted(value.tiers, key=lambda t: t.start):
            if tier.start <= floor:
                price = _dec(tier.price)
    return price


@dataclass(frozen=True, slots=True)
class Quote:
    """One unit price. `price_key` is the database field used ("usd_per_mtok" for a
    configured price); `model_ref` the database model that priced it ("" if configured)."""

    usd_per_token: Decimal
    source: str  # "database" | "override"
    price_key: str = ""
    model_ref: str = ""
    batch_rule: bool = False  # batch priced by the published 50% rule, not the database


@dataclass(frozen=True, slots=True)
class PricedTokens:
    tokens: int
    usd_per_token: Decimal
    cost: Decimal  # tokens * usd_per_token, exact
    source: str


@dataclass(frozen=True, slots=True)
class Estimate:
    """A bucket row's estimated cost; unpriced tokens are listed, never costed as zero."""

    priced: Mapping[str, PricedTokens]  # token_type -> line
    unpriced: Mapping[str, int]  # token_type -> tokens with no known price
    cache_savings: Decimal = Decimal(0)
    batch_savings: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return sum((p.cost for p in self.priced.values()), Decimal(0))

    @property
    def costs(self) -> dict[str, tuple[Decimal, str]]:
        """token_type -> (usd, price_source), the shape the metric model consumes."""
        return {tt: (p.cost, p.source) for tt, p in self.priced.items()}


class PriceEntry(NamedTuple):
    provider: str
    model: str
    token_type: str
    usd_per_token: Decimal
    source: str


class DataInfo(NamedTuple):
    source: str  # "genai-prices" (bundled) or "genai-prices-remote" (refreshed)
    version: str  # genai-prices package version
    timestamp: float | None  # Unix s of the refresh in force; None for bundled data
    refresh: str  # "off" | "pending" | "ok" | "failed": result of the latest refresh attempt
    refresh_time: float | None  # Unix s of the latest refresh attempt


@dataclass(frozen=True, slots=True)
class _Override:
    index: int
    provider: str
    pattern: str
    exact: bool
    effective_from: dt.date | None
    alias_of: str | None
    multiplier: Decimal | None
    usd_per_mtok: Mapping[str, Decimal]

    def matches(self, provider: str, model: str, day: dt.date) -> bool:
        if provider != self.provider:
            return False
        if self.effective_from is not None and day < self.effective_from:
            return False
        return model == self.pattern or (
            not self.exact and fnmatch.fnmatchcase(model, self.pattern)
        )


_UNDECLARED = ProviderPricing()


def validate_overrides(settings: PricesSettings, providers: Iterable[str]) -> list[str]:
    """Config problems as `key.path: problem` lines (empty when fine); `providers` are the
    known provider names."""
    known = sorted(providers)
    problems: list[str] = []
    seen: set[tuple[str, str, dt.date | None]] = set()
    for i, o in enumerate(settings.overrides):
        where = f"prices.overrides[{i}]"
        if o.provider not in known:
            problems.append(
                f"{where}.provider: unknown provider {o.provider!r} (choose from {known})"
            )
        if not o.model:
            problems.append(f"{where}.model: must not be empty")
        for tt, v in o.usd_per_mtok.items():
            if tt not in TOKEN_PRICE_KEYS:
                problems.append(
                    f"{where}.usd_per_mtok: unknown token type {tt!r} "
                    f"(choose from {list(TOKEN_TYPES)})"
                )
            elif not math.isfinite(v) or v < 0:
                problems.append(f"{where}.usd_per_mtok.{tt}: must be a finite price >= 0")
        if o.multiplier is not None and not math.isfinite(o.multiplier):
            problems.append(f"{where}.multiplier: must be finite")
        if o.alias_of is None and o.multiplier is None and not o.usd_per_mtok:
            problems.append(f"{where}: set at least one of alias_of, multiplier, usd_per_mtok")
        key = (o.provider, o.model, o.effective_from)
        if key in seen:
            problems.append(
                f"{where}: duplicate override for {o.provider}/{o.model} "
                f"effective {o.effective_from or 'always'}"
            )
        seen.add(key)
    return problems


def _compile(i: int, o: PriceOverride) -> _Override:
    return _Override(
        index=i,
        provider=o.provider,
        pattern=o.model,
        exact="*" not in o.model,
        effective_from=o.effective_from,
        alias_of=o.alias_of or None,
        multiplier=None if o.multiplier is None else _dec(o.multiplier),
        usd_per_mtok={tt: _dec(v) for tt, v in o.usd_per_mtok.items()},
    )


def tokens_of(measures: Mapping[str, object]) -> dict[str, int]:
    """A row's token measures ("tokens.<type>") as token_type -> count."""
    return {
        name[len("tokens.") :]: _count(name, v)
        for name, v in measures.items()
        if name.startswith("tokens.")
    }


class _Ctx(NamedTuple):
    provider: str
    model: str
    day: dt.date
    service_tier: str
    batch: bool
    context_window: str


class _RecordingUpdater(UpdatePrices):
    """genai-prices' background updater, reporting each fetch's outcome to the PriceBook and
    refusing a data file that lacks a provider we price (the previous data stays in force)."""

    def __init__(
        self,
        on_result: Callable[[Exception | None], None],
        *,
        update_interval: float,
        url: str,
        required: frozenset[str],
    ) -> None:
        super().__init__(update_interval=update_interval, url=url)
        self._on_result = on_result
        self._required = required

    def fetch(self) -> data_snapshot.DataSnapshot | None:
        try:
            snapshot = super().fetch()
            if snapshot is None:
                raise ValueError("price data fetch returned nothing")
            have = {p.id for p in snapshot.providers if p.models}
            missing = sorted(self._required - have)
            if missing:
                raise ValueError(f"fetched price data lacks provider(s) {missing}")
        except Exception as exc:
            self._on_result(exc)
            raise
        self._on_result(None)
        return snapshot


@dataclass
class _RefreshState:
    status: str = "off"
    attempt: float | None = None
    success: float | None = None
    error: str = ""
    event: threading.Event = field(default_factory=threading.Event)


class PriceBook:
    """Unit prices from genai-prices plus config overrides, memoized per (model, day, context)."""

    def __init__(
        self,
        settings: PricesSettings | None = None,
        *,
        providers: Mapping[str, ProviderPricing],
        refresh_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or PricesSettings()
        self._providers = dict(providers)
        problems = validate_overrides(self.settings, self._providers)
        if problems:
            raise ValueError("\n".join(problems))
        self._overrides = tuple(_compile(i, o) for i, o in enumerate(self.settings.overrides))
        self._refresh_url = refresh_url or DEFAULT_UPDATE_URL
        self._clock = clock
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str, dt.date, str, bool, str], dict[str, Quote | None]] = {}
        self._memo_snapshot: data_snapshot.DataSnapshot | None = None
        self._refresh = _RefreshState()
        self._updater: _RecordingUpdater | None = None

    # --- quotes ------------------------------------------------------------------------

    def quote(
        self,
        provider: str,
        model: str,
        token_type: str,
        day: dt.date,
        *,
        service_tier: str = "",
        batch: bool = False,
        context_window: str = "",
    ) -> Quote | None:
        """USD per token for one token type of one model on one day, or None if unpriced."""
        return self._quotes(provider, model, day, service_tier, batch, context_window).get(
            token_type
        )

    def _quotes(
        self,
        provider: str,
        model: str,
        day: dt.date,
        service_tier: str,
        batch: bool,
        context_window: str,
    ) -> dict[str, Quote | None]:
        snapshot = data_snapshot.get_snapshot()
        day = dt.date(day.year, day.month, day.day)
        key = (provider, model, day, service_tier, bool(batch), context_window)
        with self._lock:
            if snapshot is not self._memo_snapshot:
                self._memo.clear()
                self._memo_snapshot = snapshot
            hit = self._memo.get(key)
        if hit is not None:
            return hit
        quotes = self._compute(snapshot, _Ctx(*key))
        with self._lock:
            if snapshot is self._memo_snapshot:
                self._memo[key] = quotes
        return quotes

    def _traits(self, provider: str) -> ProviderPricing:
        """The provider's pricing traits; one no adapter declares is priced under its own
        name, with no batch discount and no free operations."""
        return self._providers.get(provider) or _UNDECLARED

    def _compute(self, snapshot: data_snapshot.DataSnapshot, ctx: _Ctx) -> dict[str, Quote | None]:
        batch = ctx.batch or ctx.service_tier == "batch"  # batch reported as a service tier
        tier = "" if ctx.service_tier == "batch" else ctx.service_tier
        ov = self._override_for(ctx.provider, ctx.model, ctx.day)
        db_model = ov.alias_of if ov is not None and ov.alias_of else ctx.model
        db = _database_quotes(
            snapshot,
            ctx.provider,
            self._traits(ctx.provider),
            db_model,
            ctx.day,
            tier,
            batch,
            ctx.context_window,
        )
        rule = self._traits(ctx.provider).batch_discount if batch else None
        out: dict[str, Quote | None] = {}
        for tt in (*TOKEN_TYPES, *UNITS):
            if ov is not None and tt in ov.usd_per_mtok:
                # A configured price is the standard rate; batch gets the provider's discount.
                price = _D.divide(ov.usd_per_mtok[tt], _MTOK)
                if rule is not None:
                    price = _D.multiply(price, rule)
                out[tt] = Quote(price, SOURCE_OVERRIDE, "usd_per_mtok", "", rule is not None)
                continue
            q = db.get(tt)
            if q is None or ov is None:
                out[tt] = q
                continue
            price = q.usd_per_token
            changed = ov.alias_of is not None
            if ov.multiplier is not None and ov.multiplier != 1:
                price = _D.multiply(price, ov.multiplier)
                changed = True
            source = SOURCE_OVERRIDE if changed else q.source
            out[tt] = Quote(price, source, q.price_key, q.model_ref, q.batch_rule)
        return out

    def _override_for(self, provider: str, model: str, day: dt.date) -> _Override | None:
        best: _Override | None = None
        best_key: tuple[bool, dt.date, int] | None = None
        for o in self._overrides:
            if o.matches(provider, model, day):
                k = (o.exact, o.effective_from or dt.date.min, o.index)
                if best_key is None or k > best_key:
                    best, best_key = o, k
        return best

    # --- estimates ---------------------------------------------------------------------

    def estimate(
        self,
        provider: str,
        model: str,
        token_counts: Mapping[str, int],
        day: dt.date,
        *,
        service_tier: str = "",
        batch: bool = False,
        context_window: str = "",
    ) -> Estimate:
        """Cost per token type of one bucket row, its unpriced tokens, and its savings."""
        quotes = self._quotes(provider, model, day, service_tier, batch, context_window)
        priced: dict[str, PricedTokens] = {}
        unpriced: dict[str, int] = {}
        for tt, raw in token_counts.items():
            n = _count(tt, raw)
            if n == 0:
                continue
            q = quotes.get(tt)
            if q is None:
                unpriced[tt] = n
            else:
                priced[tt] = PricedTokens(
                    n, q.usd_per_token, _D.multiply(Decimal(n), q.usd_per_token), q.source
                )
        cache = self.cache_savings(
            provider,
            model,
            token_counts,
            day,
            service_tier=service_tier,
            batch=batch,
            context_window=context_window,
        )
        saved = Decimal(0)
        if batch or service_tier == "batch":
            saved = self.batch_savings(
                provider,
                model,
                token_counts,
                day,
                service_tier=service_tier,
                context_window=context_window,
            )
        return Estimate(priced, unpriced, cache_savings=cache, batch_savings=saved)

    def estimate_dims(
        self,
        provider: str,
        dims: Mapping[str, str],
        token_counts: Mapping[str, int],
        day: dt.date,
    ) -> Estimate:
        """`estimate` with model and context read from a row's dimensions (or labels)."""
        if dims.get("operation", "") in self._traits(provider).free_operations:
            free = {
                tt: PricedTokens(n, Decimal(0), Decimal(0), SOURCE_FREE)
                for tt, raw in token_counts.items()
                if (n := _count(tt, raw))
            }
            return Estimate(free, {}, cache_savings=Decimal(0), batch_savings=Decimal(0))
        return self.estimate(
            provider,
            dims.get("model", ""),
            token_counts,
            day,
            service_tier=dims.get("service_tier", ""),
            batch=dims.get("batch", "") == "true",
            context_window=dims.get("context_window", ""),
        )

    def cache_savings(
        self,
        provider: str,
        model: str,
        token_counts: Mapping[str, int],
        day: dt.date,
        *,
        service_tier: str = "",
        batch: bool = False,
        context_window: str = "",
    ) -> Decimal:
        """Cached tokens x (uncached price - cached price), per modality; never negative."""
        quotes = self._quotes(provider, model, day, service_tier, batch, context_window)
        total = Decimal(0)
        for cached, uncached in CACHE_PAIRS:
            n = _count(cached, token_counts.get(cached, 0))
            qc, qu = quotes.get(cached), quotes.get(uncached)
            if n and qc is not None and qu is not None and qu.usd_per_token > qc.usd_per_token:
                diff = _D.subtract(qu.usd_per_token, qc.usd_per_token)
                total = _D.add(total, _D.multiply(Decimal(n), diff))
        return total

    def batch_savings(
        self,
        provider: str,
        model: str,
        token_counts: Mapping[str, int],
        day: dt.date,
        *,
        service_tier: str = "",
        context_window: str = "",
    ) -> Decimal:
        """For tokens processed in batch: tokens x (standard price - batch price), >= 0."""
        tier = "" if service_tier == "batch" else service_tier
        std = self._quotes(provider, model, day, tier, False, context_window)
        bat = self._quotes(provider, model, day, tier, True, context_window)
        total = Decimal(0)
        for tt, raw in token_counts.items():
            n = _count(tt, raw)
            qs, qb = std.get(tt), bat.get(tt)
            if n and qs is not None and qb is not None and qs.usd_per_token > qb.usd_per_token:
                diff = _D.subtract(qs.usd_per_token, qb.usd_per_token)
                total = _D.add(total, _D.multiply(Decimal(n), diff))
        return total

    def estimate_units(
        self,
        provider: str,
        dims: Mapping[str, str],
        unit_counts: Mapping[str, int],
        day: dt.date,
    ) -> dict[str, tuple[Decimal, str]]:
        """Cost of a row's non-token units (requests, characters, seconds, web searches).

        Only units the database (or an override multiplier/alias) prices are returned: most
        models have no per-request fee, so a missing unit price is no cost, not "unpriced".
        """
        quotes = self._quotes(
            provider,
            dims.get("model", ""),
            day,
            dims.get("service_tier", ""),
            dims.get("batch", "") == "true",
            dims.get("context_window", ""),
        )
        out: dict[str, tuple[Decimal, str]] = {}
        for unit, n in unit_counts.items():
            q = quotes.get(unit)
            if n and q is not None:
                out[unit] = (_D.multiply(Decimal(n), q.usd_per_token), q.source)
        return out

    def price_table(
        self,
        provider_models: Iterable[tuple[str, str]],
        day: dt.date,
        token_types: Iterable[str] | None = None,
    ) -> list[PriceEntry]:
        """Standard-tier prices in force on `day` for `llm_price_usd_per_token`."""
        types = tuple(TOKEN_TYPES if token_types is None else token_types)
        out: list[PriceEntry] = []
        seen: set[tuple[str, str]] = set()
        for provider, model in provider_models:
            if (provider, model) in seen:
                continue
            seen.add((provider, model))
            quotes = self._quotes(provider, model, day, "", False, "")
            for tt in types:
                q = quotes.get(tt)
                if q is not None:
                    out.append(PriceEntry(provider, model, tt, q.usd_per_token, q.source))
        return out

    # --- data and refresh ----------------------------------------------------------------

    def fingerprint(self) -> str:
        """Identifies the prices in force (data version, refreshed data, overrides): stored
        estimates are only valid for the prices they were computed with."""
        snapshot = data_snapshot.get_snapshot()
        with self._lock:
            refreshed = self._refresh.success if snapshot.from_auto_update else None
        overrides = self.settings.model_dump_json(include={"overrides"})
        return f"{genai_prices.__version__}|{refreshed}|{overrides}"

    def data_info(self) -> DataInfo:
        """Which price data is in force, and how the latest refresh went."""
        snapshot = data_snapshot.get_snapshot()
        with self._lock:
            st = self._refresh
            refreshed = snapshot.from_auto_update
            return DataInfo(
                source=DATA_SOURCE_REFRESHED if refreshed else DATA_SOURCE,
                version=genai_prices.__version__,
                timestamp=st.success if refreshed else None,
                refresh=st.status,
                refresh_time=st.attempt,
            )

    def refresh_error(self) -> str:
        """The latest refresh failure, for logs ("" if none)."""
        with self._lock:
            return self._refresh.error

    def start_refresh(self) -> bool:
        """Start fetching the published data file every `refresh_interval` (if enabled)."""
        if not self.settings.refresh or self._updater is not None:
            return False
        with self._lock:
            self._refresh.status = "pending"
        self._updater = _RecordingUpdater(
            self._record_refresh,
            update_interval=self.settings.refresh_interval,
            url=self._refresh_url,
            required=frozenset(t.price_id or p for p, t in self._providers.items()),
        )
        self._updater.start()
        return True

    def stop_refresh(self) -> None:
        if self._updater is not None:
            self._updater.stop()  # type: ignore[no-untyped-call]
            self._updater = None

    def wait_refresh(self, timeout: float) -> bool:
        """Wait until a refresh attempt has finished (tests, start-up); True if one has."""
        return self._refresh.event.wait(timeout)

    def _record_refresh(self, error: Exception | None) -> None:
        now = self._clock()
        with self._lock:
            st = self._refresh
            st.attempt = now
            if error is None:
                st.status, st.success, st.error = "ok", now, ""
            else:
                st.status, st.error = "failed", f"{type(error).__name__}: {error}"
        if error is not None:
            log.warning(
                "price data refresh failed, keeping the data in force: %s", self._refresh.error
            )
        self._refresh.event.set()


def _count(token_type: str, raw: object) -> int:
    """A token count as an int; integral Decimals are accepted (ledger measures), others not."""
    if isinstance(raw, Decimal) and raw == raw.to_integral_value():
        n = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        n = raw
    else:
        raise TypeError(f"token count for {token_type} is not an integer: {raw!r}")
    if n < 0:
        raise ValueError(f"negative token count for {token_type}: {n}")
    return n


def _find_model(
    snapshot: data_snapshot.DataSnapshot, provider: str, traits: ProviderPricing, model: str
) -> tuple[Provider, ModelInfo] | None:
    """The database entry for a model: its reported name first, then the names its
    adapter offers for it (a fine-tune's own entry, its base model), matched exactly or by
    the database's own id in lower case."""
    if not model:
        return None
    pid = traits.price_id or provider
    try:
        return snapshot.find_provider_model(model, None, pid, None)
    except LookupError:
        pass
    candidates = traits.model_candidates(model)
    if not candidates:
        return None
    try:
        prov: Provider | None = snapshot.find_provider(None, pid, None)
    except LookupError:
        prov = None
    for name in candidates:
        try:
            return snapshot.find_provider_model(name, None, pid, None)
        except LookupError:
            pass
        if prov is not None:
            for m in prov.models:
                if m.id == name.lower():
                    return prov, m
    return None


def _has_batch_prices(model: ModelInfo, at: dt.datetime, ctx: Mapping[str, str]) -> bool:
    """Whether the database has batch prices for this model on this date."""
    batch_ctx = {**ctx, "processing": "batch"}
    for v in model.price_variants or ():
        if "processing" not in v.when:
            continue
        if v.constraint is not None and not v.constraint.active(at):
            continue
        if not all(batch_ctx.get(k) == val for k, val in v.when.items()):
            continue
        if any(p is not None for k, p in vars(v.prices).items() if not k.startswith("_")):
            return True
    return False


def _database_quotes(
    snapshot: data_snapshot.DataSnapshot,
    provider: str,
    traits: ProviderPricing,
    model: str,
    day: dt.date,
    service_tier: str,
    batch: bool,
    context_window: str,
) -> dict[str, Quote | None]:
    found = _find_model(snapshot, provider, traits, model)
    if found is None:
        return dict.fromkeys((*TOKEN_TYPES, *UNITS))
    prov, info = found
    at = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    own = any(m is info for m in prov.models)  # variants only for the provider's own models
    ctx: dict[str, str] = {}
    if own and service_tier:
        ctx["service_tier"] = service_tier
    db_batch = own and batch and _has_batch_prices(info, at, ctx)
    if db_batch:
        ctx["processing"] = "batch"
    prices: ModelPrice = info.get_prices(at, ctx or None)
    rule = traits.batch_discount if batch and not db_batch else None
    floor = context_floor(context_window)
    out: dict[str, Quote | None] = {}
    for tt, keys in TOKEN_PRICE_KEYS.items():
        out[tt] = None
        for key in keys:
            value = getattr(prices, key, None)
            if value is None:
                continue
            price = _D.divide(_tier_price(value, floor), _MTOK)
            if rule is not None:
                price = _D.multiply(price, rule)
            out[tt] = Quote(price, SOURCE_DATABASE, key, info.id, rule is not None)
            break
    for unit, (keys, per) in UNIT_PRICE_KEYS.items():
        out[unit] = None
        for key in keys:
            value = getattr(prices, key, None)
            if value is None:
                continue
            price = _D.divide(_tier_price(value, floor), per)
            if rule is not None:
                price = _D.multiply(price, rule)
            out[unit] = Quote(price, SOURCE_DATABASE, key, info.id, rule is not None)
            break
    return out
