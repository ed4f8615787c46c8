"""Pricing: money arithmetic properties, token-type mapping, dates, tiers, batch, overrides.

Expected database prices are read from the installed genai-prices data (never hard-coded),
so a price update in the package does not break these tests; configured override prices are
asserted to the exact figure.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices.types import (
    ClauseEquals,
    ConditionalPrice,
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.pricing import (
    SOURCE_DATABASE,
    SOURCE_OVERRIDE,
    TOKEN_PRICE_KEYS,
    Estimate,
    PriceBook,
    context_floor,
    tokens_of,
    validate_overrides,
)
from exporter.rows import TOKEN_TYPES
from exporter.settings import PriceOverride, PricesSettings
from exporter.sources import pricing_traits

DAY = dt.date(2026, 11, 1)  # after the database's batch and service-tier variants start
BEFORE_VARIANTS = dt.date(2026, 6, 1)  # before them: no batch prices in the database
MTOK = Decimal(1_000_000)

GPT4O = ("openai", "gpt-4o")
GPT4O_MINI = ("openai", "gpt-4o-mini")
SONNET_4 = ("anthropic", "claude-sonnet-4-20250514")  # flat prices
SONNET_45 = ("anthropic", "claude-sonnet-4-5-20250929")  # long-context tiers
LLAMA = ("groq", "llama-3.3-70b-versatile")
FLAT_MODELS = [GPT4O, GPT4O_MINI, SONNET_4, LLAMA]
CACHED_MODELS = [GPT4O, GPT4O_MINI, SONNET_4, SONNET_45]
ALL_MODELS = [*FLAT_MODELS, SONNET_45]

TRAITS = pricing_traits()
BOOK = PriceBook(providers=TRAITS)

counts = st.integers(min_value=0, max_value=10**12)
token_dicts = st.dictionaries(st.sampled_from(TOKEN_TYPES), counts, max_size=len(TOKEN_TYPES))


def noon(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)


def db_model(provider: str, model: str) -> ModelInfo:
    return data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)[1]


def db_price(
    provider: str, model: str, key: str, day: dt.date = DAY, ctx: dict[str, str] | None = None
) -> Decimal:
    """USD per token of one database field, base tier, as genai-prices stores it."""
    value = getattr(db_model(provider, model).get_prices(noon(day), ctx), key)
    assert value is not None, f"{model} has no {key} in the installed database"
    if isinstance(value, TieredPrices):
        value = value.base
    return Decimal(str(value)) / MTOK


def book(*overrides: dict[str, Any]) -> PriceBook:
    return PriceBook(
        PricesSettings(overrides=[PriceOverride(**o) for o in overrides]), providers=TRAITS
    )


def all_values(est: Estimate) -> list[object]:
    vals: list[object] = [est.total, est.cache_savings, est.batch_savings]
    for p in est.priced.values():
        vals += [p.cost, p.usd_per_token]
    return vals


# --- real prices from the installed database ------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "token_type", "key"),
    [
        (*GPT4O, "input", "input_mtok"),
        (*GPT4O, "cache_read", "cache_read_mtok"),
        (*GPT4O, "output", "output_mtok"),
        (*GPT4O_MINI, "input", "input_mtok"),
        (*GPT4O_MINI, "cache_read", "cache_read_mtok"),
        (*GPT4O_MINI, "output", "output_mtok"),
        (*SONNET_4, "input", "input_mtok"),
        (*SONNET_4, "cache_read", "cache_read_mtok"),
        (*SONNET_4, "cache_write_5m", "cache_write_mtok"),
        (*SONNET_4, "cache_write_1h", "cache_write_1h_mtok"),
        (*SONNET_4, "output", "output_mtok"),
        (*SONNET_45, "input", "input_mtok"),
        (*SONNET_45, "output", "output_mtok"),
    ],
)
def test_database_prices(provider: str, model: str, token_type: str, key: str) -> None:
    q = BOOK.quote(provider, model, token_type, DAY)
    assert q is not None
    assert q.usd_per_token == db_price(provider, model, key)
    assert isinstance(q.usd_per_token, Decimal)
    assert (q.source, q.price_key, q.batch_rule) == (SOURCE_DATABASE, key, False)


def test_cache_prices_are_below_input_prices() -> None:
    for provider, model in CACHED_MODELS:
        qi = BOOK.quote(provider, model, "input", DAY)
        qc = BOOK.quote(provider, model, "cache_read", DAY)
        assert qi is not None and qc is not None
        assert qc.usd_per_token < qi.usd_per_token


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(FLAT_MODELS),
    uncached=counts,
    cached=counts,
    write_5m=counts,
    write_1h=counts,
    output=counts,
)
def test_agrees_with_genai_prices_calculator(
    model: tuple[str, str], uncached: int, cached: int, write_5m: int, write_1h: int, output: int
) -> None:
    """Per-type unit prices reproduce the database's own calculator on untiered models."""
    provider, name = model
    if provider == "anthropic":
        ours = {
            "input": uncached,
            "cache_read": cached,
            "cache_write_5m": write_5m,
            "cache_write_1h": write_1h,
            "output": output,
        }
        usage = genai_prices.Usage(
            input_tokens=uncached + cached + write_5m + write_1h,
            cache_read_tokens=cached,
            cache_write_tokens=write_5m + write_1h,
            cache_write_1h_tokens=write_1h,
            output_tokens=output,
        )
    else:  # OpenAI and Groq bill cache writes as input (no write price in the database)
        ours = {"input": uncached, "cache_read": cached, "cache_write": write_5m, "output": output}
        usage = genai_prices.Usage(
            input_tokens=uncached + cached + write_5m,
            cache_read_tokens=cached,
            cache_write_tokens=write_5m,
            output_tokens=output,
        )
    est = BOOK.estimate(provider, name, ours, DAY)
    calc = genai_prices.calc_price(
        usage, name, provider_id=provider, genai_request_timestamp=noon(DAY)
    )
    assert not est.unpriced
    assert est.total == calc.total_price


# --- money arithmetic properties -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(model=st.sampled_from(ALL_MODELS), tokens=token_dicts, batch=st.booleans())
def test_decimal_exact_and_non_negative(
    model: tuple[str, str], tokens: dict[str, int], batch: bool
) -> None:
    est = BOOK.estimate(*model, tokens, DAY, batch=batch)
    for v in all_values(est):
        assert isinstance(v, Decimal) and not isinstance(v, float)
        assert v >= 0
    for tt, line in est.priced.items():
        assert line.tokens == tokens[tt]
        assert line.cost == Decimal(line.tokens) * line.usd_per_token  # exact, no rounding
    assert est.total == sum((p.cost for p in est.priced.values()), Decimal(0))
    # every non-zero count is either priced or unpriced, never both, never dropped
    nonzero = {tt for tt, n in tokens.items() if n}
    assert set(est.priced) | set(est.unpriced) == nonzero
    assert not set(est.priced) & set(est.unpriced)


@settings(max_examples=100, deadline=None)
@given(model=st.sampled_from(ALL_MODELS), a=token_dicts, b=token_dicts, batch=st.booleans())
def test_additive_over_buckets(
    model: tuple[str, str], a: dict[str, int], b: dict[str, int], batch: bool
) -> None:
    """Pricing two buckets and summing == pricing their summed tokens (no tier is applied)."""
    both = {tt: a.get(tt, 0) + b.get(tt, 0) for tt in a.keys() | b.keys()}
    ea, eb, eab = (BOOK.estimate(*model, t, DAY, batch=batch) for t in (a, b, both))
    assert ea.total + eb.total == eab.total
    for tt, line in eab.priced.items():
        parts = [e.priced[tt].cost for e in (ea, eb) if tt in e.priced]
        assert sum(parts, Decimal(0)) == line.cost
    for tt, n in eab.unpriced.items():
        assert ea.unpriced.get(tt, 0) + eb.unpriced.get(tt, 0) == n
    assert ea.cache_savings + eb.cache_savings == eab.cache_savings
    assert ea.batch_savings + eb.batch_savings == eab.batch_savings


@settings(max_examples=100, deadline=None)
@given(model=st.sampled_from(CACHED_MODELS), total=counts, data=st.data())
def test_cache_partitioning(model: tuple[str, str], total: int, data: st.DataObject) -> None:
    """Input split into uncached + cache_read costs the parts at their own prices, and caching
    saves exactly what cache_savings reports."""
    cached = data.draw(st.integers(min_value=0, max_value=total))
    p_in = BOOK.quote(*model, "input", DAY)
    p_cr = BOOK.quote(*model, "cache_read", DAY)
    assert p_in is not None and p_cr is not None
    split = BOOK.estimate(*model, {"input": total - cached, "cache_read": cached}, DAY)
    whole = BOOK.estimate(*model, {"input": total}, DAY)
    assert split.total == (total - cached) * p_in.usd_per_token + cached * p_cr.usd_per_token
    assert split.total <= whole.total
    assert whole.total - split.total == split.cache_savings
    assert split.cache_savings == cached * (p_in.usd_per_token - p_cr.usd_per_token)


@settings(max_examples=50, deadline=None)
@given(tokens=token_dicts, batch=st.booleans(), tier=st.sampled_from(["", "priority", "flex"]))
def test_unknown_model_is_unpriced_not_zero(tokens: dict[str, int], batch: bool, tier: str) -> None:
    for provider, model in [
        ("openai", "no-such-model-zz9"),
        ("anthropic", ""),
        ("nosuchprovider", "gpt-4o"),
    ]:
        est = BOOK.estimate(provider, model, tokens, DAY, batch=batch, service_tier=tier)
        assert est.priced == {}
        assert est.unpriced == {tt: n for tt, n in tokens.items() if n}
        for tt in TOKEN_TYPES:
            assert BOOK.quote(provider, model, tt, DAY) is None


# --- token-type mapping ------------------------------------------------------------------------


def test_mapping_covers_every_token_type() -> None:
    assert set(TOKEN_PRICE_KEYS) == set(TOKEN_TYPES)


def test_image_input_of_chat_model_is_billed_as_input() -> None:
    qi = BOOK.quote(*GPT4O, "input_image", DAY)
    assert qi is not None and qi.price_key == "input_mtok"
    assert qi.usd_per_token == db_price(*GPT4O, "input_mtok")
    # a model with its own image-token price uses it
    q = BOOK.quote("openai", "gpt-image-1", "input_image", DAY)
    assert q is not None and q.price_key == "input_image_mtok"
    assert q.usd_per_token == db_price("openai", "gpt-image-1", "input_image_mtok")


def _fake(model_id: str, prices: ModelPrice | list[ConditionalPrice]) -> ModelInfo:
    return ModelInfo(id=model_id, match=ClauseEquals(equals=model_id), prices=prices)


D = Decimal
FAKE_PROVIDERS = [
    Provider(
        id="openai",
        name="OpenAI",
        api_pattern="x",
        models=[
            _fake("audio-gap", ModelPrice(input_mtok=D("2"), output_mtok=D("8"))),
            _fake(
                "audio-full",
                ModelPrice(
                    input_mtok=D("2"),
                    cache_read_mtok=D("1"),
                    output_mtok=D("8"),
                    input_audio_mtok=D("40"),
                    cache_audio_read_mtok=D("4"),
                    output_audio_mtok=D("80"),
                ),
            ),
            _fake("writes", ModelPrice(input_mtok=D("2"), cache_write_mtok=D("2.5"))),
            # a database release with a 12 h cache write field (0.2.5 has none)
            _fake(
                "writes-12h",
                ModelPrice(
                    input_mtok=D("2"), cache_write_mtok=D("2.5"), cache_write_12h_mtok=D("4")
                ),
            ),
            _fake(
                "dated",
                [
                    ConditionalPrice(prices=ModelPrice(input_mtok=D("10"))),
                    ConditionalPrice(
                        constraint=StartDateConstraint(start_date=dt.date(2026, 3, 1)),
                        prices=ModelPrice(input_mtok=D("4")),
                    ),
                ],
            ),
        ],
    )
]


@pytest.fixture
def fake_db() -> Iterator[PriceBook]:
    """A small database in force instead of the bundled one, for rules independent of the
    gaps and prices of any one genai-prices release."""
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=FAKE_PROVIDERS, from_auto_update=False)
    )
    try:
        yield PriceBook(providers=TRAITS)
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_audio_needs_an_audio_price(fake_db: PriceBook) -> None:
    # no audio price: audio stays unpriced rather than billed at the (much lower) text rate
    assert fake_db.quote("openai", "audio-gap", "input", DAY) is not None
    for tt in ("input_audio", "output_audio", "cache_read_audio"):
        assert fake_db.quote("openai", "audio-gap", tt, DAY) is None
    for tt, per_mtok in [("input_audio", "40"), ("output_audio", "80"), ("cache_read_audio", "4")]:
        q = fake_db.quote("openai", "audio-full", tt, DAY)
        assert q is not None and q.usd_per_token == D(per_mtok) / MTOK


def test_audio_prices_from_the_real_database() -> None:
    for tt, key in [
        ("input_audio", "input_audio_mtok"),
        ("output_audio", "output_audio_mtok"),
        ("cache_read_audio", "cache_audio_read_mtok"),
    ]:
        q = BOOK.quote("openai", "gpt-realtime", tt, DAY)
        assert q is not None and q.price_key == key
        assert q.usd_per_token == db_price("openai", "gpt-realtime", key)


def test_timed_cache_writes_never_fall_back_to_cheaper_prices(fake_db: PriceBook) -> None:
    # a write price without a 1 h price: 1 h writes are unpriced, 5 min writes use it
    assert fake_db.quote("openai", "writes", "cache_write_1h", DAY) is None
    q5 = fake_db.quote("openai", "writes", "cache_write_5m", DAY)
    assert q5 is not None and q5.usd_per_token == D("0.0000025")
    # no write price at all: a timed write is never billed as plain input
    assert fake_db.quote("openai", "audio-gap", "cache_write_5m", DAY) is None
    assert fake_db.quote("openai", "audio-gap", "cache_write_1h", DAY) is None
    # an unspecified-lifetime (OpenAI) write is billed as input, as the database bills it
    qw = fake_db.quote("openai", "audio-gap", "cache_write", DAY)
    assert qw is not None and qw.usd_per_token == D("0.000002")
    # and a cache read of a model without cache prices is input too (no discount)
    qr = fake_db.quote("openai", "audio-gap", "cache_read", DAY)
    assert qr is not None and qr.usd_per_token == D("0.000002")


def test_twelve_hour_cache_writes_have_only_their_own_price(fake_db: PriceBook) -> None:
    # neither the input price nor the 30 min write price: unpriced
    assert fake_db.quote("openai", "writes", "cache_write_12h", DAY) is None
    assert fake_db.quote("openai", "audio-gap", "cache_write_12h", DAY) is None
    # a database with a 12 h field prices them with it
    q = fake_db.quote("openai", "writes-12h", "cache_write_12h", DAY)
    assert q is not None and q.usd_per_token == D("0.000004")
    assert (q.source, q.price_key) == (SOURCE_DATABASE, "cache_write_12h_mtok")


def test_twelve_hour_cache_writes_are_unpriced_in_the_installed_database() -> None:
    """No genai-prices field prices them yet: counted as unpriced, the rest of the row
    priced as before, and caching's savings are those of the cache reads alone."""
    tokens = {"input": 4000, "cache_read": 3000, "cache_write": 2000, "cache_write_12h": 1000}
    for model in (GPT4O, GPT4O_MINI):
        assert BOOK.quote(*model, "cache_write_12h", DAY) is None
        est = BOOK.estimate(*model, tokens, DAY)
        assert est.unpriced == {"cache_write_12h": 1000}
        without = BOOK.estimate(*model, {**tokens, "cache_write_12h": 0}, DAY)
        assert est.total == without.total
        assert est.cache_savings == without.cache_savings > 0


def test_an_override_prices_twelve_hour_cache_writes() -> None:
    b = book({"provider": "openai", "model": "gpt-4o", "usd_per_mtok": {"cache_write_12h": 5}})
    est = b.estimate(*GPT4O, {"input": 1000, "cache_write_12h": 2_000_000}, DAY)
    assert est.unpriced == {}
    assert est.costs["cache_write_12h"] == (Decimal(10), SOURCE_OVERRIDE)
    assert est.costs["input"] == (1000 * db_price(*GPT4O, "input_mtok"), SOURCE_DATABASE)
    # the override is a standard price: OpenAI batch usage gets its 50% rule on top
    qb = b.quote(*GPT4O, "cache_write_12h", DAY, batch=True)
    assert qb is not None and qb.usd_per_token == Decimal("0.0000025") and qb.batch_rule


def test_date_changes_apply_from_their_day(fake_db: PriceBook) -> None:
    before = fake_db.quote("openai", "dated", "input", dt.date(2026, 2, 28))
    on = fake_db.quote("openai", "dated", "input", dt.date(2026, 3, 1))
    assert before is not None and before.usd_per_token == D("0.00001")
    assert on is not None and on.usd_per_token == D("0.000004")


def test_unknown_token_type_is_unpriced() -> None:
    est = BOOK.estimate(*GPT4O, {"input": 10, "telepathy": 7}, DAY)
    assert est.unpriced == {"telepathy": 7}
    assert BOOK.quote(*GPT4O, "telepathy", DAY) is None


# --- tiers, dates, service tiers, batch -------------------------------------------------------


def test_huge_daily_total_of_tiered_model_uses_base_tier() -> None:
    raw = db_model(*SONNET_45).get_prices(noon(DAY)).input_mtok
    assert isinstance(raw, TieredPrices) and raw.tiers
    base = Decimal(str(raw.base)) / MTOK
    top = Decimal(str(raw.tiers[-1].price)) / MTOK
    tokens = 50_000_000  # one day's total, far above any single-request threshold
    est = BOOK.estimate(*SONNET_45, {"input": tokens}, DAY)
    assert est.total == tokens * base
    # the database's per-request calculator would (rightly, for one request) use the tier
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=tokens),
        SONNET_45[1],
        provider_id="anthropic",
        genai_request_timestamp=noon(DAY),
    )
    assert calc.total_price == tokens * top > est.total


def test_reported_context_window_selects_long_context_tier() -> None:
    raw = db_model(*SONNET_45).get_prices(noon(DAY)).output_mtok
    assert isinstance(raw, TieredPrices)
    tier = next(t for t in raw.tiers if t.start == 200_000)
    long_ = BOOK.quote(*SONNET_45, "output", DAY, context_window="200k-1M")
    short = BOOK.quote(*SONNET_45, "output", DAY, context_window="0-200k")
    assert long_ is not None and short is not None
    assert long_.usd_per_token == Decimal(str(tier.price)) / MTOK
    assert short.usd_per_token == Decimal(str(raw.base)) / MTOK


@pytest.mark.parametrize(
    ("window", "floor"),
    [
        ("200k-1M", 200_000),
        ("0-200k", 0),
        ("", 0),
        ("1M-2M", 1_000_000),
        ("junk", 0),
        ("272K-1m", 272_000),
    ],
)
def test_context_floor(window: str, floor: int) -> None:
    assert context_floor(window) == floor


def test_priced_at_the_bucket_date() -> None:
    info = db_model("openai", "o3")
    assert isinstance(info.prices, list)
    change = next(p for p in info.prices if isinstance(p.constraint, StartDateConstraint))
    assert isinstance(change, ConditionalPrice) and isinstance(
        change.constraint, StartDateConstraint
    )
    start = change.constraint.start_date
    first = info.prices[0].prices.input_mtok
    assert first is not None and change.prices.input_mtok is not None
    before = BOOK.quote("openai", "o3", "input", start - dt.timedelta(days=1))
    after = BOOK.quote("openai", "o3", "input", start)
    assert before is not None and after is not None
    assert before.usd_per_token == Decimal(str(first)) / MTOK
    assert after.usd_per_token == Decimal(str(change.prices.input_mtok)) / MTOK
    assert before.usd_per_token != after.usd_per_token


def test_service_tier_uses_database_variant_from_its_date() -> None:
    prio = BOOK.quote(*GPT4O, "input", DAY, service_tier="priority")
    std = BOOK.quote(*GPT4O, "input", DAY, service_tier="default")
    early = BOOK.quote(*GPT4O, "input", BEFORE_VARIANTS, service_tier="priority")
    assert prio is not None and std is not None and early is not None
    assert prio.usd_per_token == db_price(*GPT4O, "input_mtok", ctx={"service_tier": "priority"})
    assert prio.usd_per_token > std.usd_per_token
    assert std.usd_per_token == db_price(*GPT4O, "input_mtok")
    # before the database records tier prices, the standard price is used
    assert early.usd_per_token == db_price(*GPT4O, "input_mtok", BEFORE_VARIANTS)


def test_batch_uses_database_batch_prices_when_it_has_them() -> None:
    q = BOOK.quote(*GPT4O, "input", DAY, batch=True)
    assert q is not None and not q.batch_rule
    assert q.usd_per_token == db_price(*GPT4O, "input_mtok", ctx={"processing": "batch"})
    assert q.usd_per_token < db_price(*GPT4O, "input_mtok")


@pytest.mark.parametrize("model", [GPT4O, SONNET_4])
def test_batch_rule_is_half_price_without_database_batch_prices(model: tuple[str, str]) -> None:
    day = BEFORE_VARIANTS
    for tt in ("input", "cache_read", "output"):
        std = BOOK.quote(*model, tt, day)
        bat = BOOK.quote(*model, tt, day, batch=True)
        assert std is not None and bat is not None
        assert bat.batch_rule
        assert bat.usd_per_token == std.usd_per_token / 2


def test_anthropic_batch_service_tier_is_batch() -> None:
    for tt in ("input", "output", "cache_write_1h"):
        assert BOOK.quote(*SONNET_45, tt, DAY, service_tier="batch") == BOOK.quote(
            *SONNET_45, tt, DAY, batch=True
        )


def test_groq_batch_without_database_price_keeps_standard_price() -> None:
    std = BOOK.quote(*LLAMA, "input", DAY)
    bat = BOOK.quote(*LLAMA, "input", DAY, batch=True)
    assert std is not None and bat == std


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(ALL_MODELS),
    tokens=token_dicts,
    day=st.sampled_from([DAY, BEFORE_VARIANTS]),
)
def test_batch_savings(model: tuple[str, str], tokens: dict[str, int], day: dt.date) -> None:
    saved = BOOK.batch_savings(*model, tokens, day)
    assert isinstance(saved, Decimal) and saved >= 0
    expected = Decimal(0)
    for tt, n in tokens.items():
        std, bat = BOOK.quote(*model, tt, day), BOOK.quote(*model, tt, day, batch=True)
        if std is not None and bat is not None:
            expected += n * max(std.usd_per_token - bat.usd_per_token, Decimal(0))
    assert saved == expected
    assert BOOK.estimate(*model, tokens, day, batch=True).batch_savings == saved
    assert BOOK.estimate(*model, tokens, day).batch_savings == 0


# --- overrides ---------------------------------------------------------------------------------


def test_override_effective_dates_and_precedence() -> None:
    b = book(
        {
            "provider": "openai",
            "model": "gpt-4o",
            "usd_per_mtok": {"input": 1.0},
            "effective_from": dt.date(2026, 1, 1),
        },
        {
            "provider": "openai",
            "model": "gpt-4o",
            "usd_per_mtok": {"input": 0.5},
            "effective_from": dt.date(2026, 6, 1),
        },
    )
    early = b.quote(*GPT4O, "input", dt.date(2025, 12, 31))
    mid = b.quote(*GPT4O, "input", dt.date(2026, 1, 1))
    late = b.quote(*GPT4O, "input", dt.date(2026, 6, 1))
    assert early is not None and early.source == SOURCE_DATABASE
    assert early.usd_per_token == db_price(*GPT4O, "input_mtok", dt.date(2025, 12, 31))
    assert mid == b.quote(*GPT4O, "input", dt.date(2026, 5, 31))
    assert mid is not None and mid.source == SOURCE_OVERRIDE
    assert mid.usd_per_token == Decimal("0.000001")
    assert late is not None and late.usd_per_token == Decimal("0.0000005")
    # a type the override does not list keeps the database price and label
    out = b.quote(*GPT4O, "output", DAY)
    assert out is not None and out.source == SOURCE_DATABASE
    assert out.usd_per_token == db_price(*GPT4O, "output_mtok")
    est = b.estimate(*GPT4O, {"input": 3_000_000}, DAY)
    assert est.priced["input"].cost == Decimal("1.5")
    assert est.costs == {"input": (Decimal("1.5"), SOURCE_OVERRIDE)}


@settings(max_examples=100, deadline=None)
@given(
    dated=st.dictionaries(
        st.dates(dt.date(2025, 1, 1), dt.date(2027, 1, 1)),
        st.integers(min_value=0, max_value=10**6),
        max_size=5,
    ),
    always=st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
    day=st.dates(dt.date(2024, 6, 1), dt.date(2027, 6, 1)),
)
def test_latest_effective_override_wins(
    dated: dict[dt.date, int], always: int | None, day: dt.date
) -> None:
    """Cents per MTok keep prices exact; the override in force is the latest one that started
    on or before the day, an undated one applies when none has, else the database."""
    entries = [
        {
            "provider": "openai",
            "model": "gpt-4o",
            "effective_from": d,
            "usd_per_mtok": {"input": c / 100},
        }
        for d, c in dated.items()
    ]
    if always is not None:
        entries.append(
            {"provider": "openai", "model": "gpt-4o", "usd_per_mtok": {"input": always / 100}}
        )
    q = book(*entries).quote(*GPT4O, "input", day)
    started = [d for d in dated if d <= day]
    assert q is not None
    if started:
        cents: int | None = dated[max(started)]
    else:
        cents = always
    if cents is None:
        assert q.source == SOURCE_DATABASE
        assert q.usd_per_token == db_price(*GPT4O, "input_mtok", day)
    else:
        assert q.source == SOURCE_OVERRIDE
        assert q.usd_per_token == Decimal(str(cents / 100)) / MTOK


def test_exact_override_beats_pattern() -> None:
    b = book(
        {"provider": "openai", "model": "ft:gpt-4o-mini:acme:*", "usd_per_mtok": {"input": 9}},
        {"provider": "openai", "model": "ft:gpt-4o-mini:acme::abc", "usd_per_mtok": {"input": 4}},
    )
    q1 = b.quote("openai", "ft:gpt-4o-mini:acme::abc", "input", DAY)
    q2 = b.quote("openai", "ft:gpt-4o-mini:acme::xyz", "input", DAY)
    q3 = b.quote("anthropic", "ft:gpt-4o-mini:acme::xyz", "input", DAY)
    assert q1 is not None and q1.usd_per_token == Decimal("0.000004")
    assert q2 is not None and q2.usd_per_token == Decimal("0.000009")
    assert q3 is None


def test_alias() -> None:
    b = book(
        {"provider": "openai", "model": "prod-chat", "alias_of": "gpt-4o-mini"},
        {"provider": "openai", "model": "ghost", "alias_of": "no-such-model-zz9"},
    )
    for tt in ("input", "cache_read", "output"):
        q, ref = b.quote("openai", "prod-chat", tt, DAY), BOOK.quote(*GPT4O_MINI, tt, DAY)
        assert q is not None and ref is not None
        assert q.usd_per_token == ref.usd_per_token and q.source == SOURCE_OVERRIDE
    est = b.estimate("openai", "ghost", {"input": 5}, DAY)
    assert est.unpriced == {"input": 5} and not est.priced


def test_multiplier_and_explicit_prices() -> None:
    b = book(
        {
            "provider": "openai",
            "model": "gpt-4o",
            "multiplier": 0.8,
            "usd_per_mtok": {"output": 2.0},
        }
    )
    qi = b.quote(*GPT4O, "input", DAY)
    qo = b.quote(*GPT4O, "output", DAY)
    assert qi is not None and qo is not None
    assert qi.usd_per_token == db_price(*GPT4O, "input_mtok") * Decimal("0.8")
    assert qi.source == SOURCE_OVERRIDE
    assert qo.usd_per_token == Decimal("0.000002")  # explicit price, multiplier not applied
    # explicit prices are standard rates: OpenAI batch usage gets the 50% rule on top
    qb = b.quote(*GPT4O, "output", DAY, batch=True)
    assert qb is not None and qb.usd_per_token == Decimal("0.000001") and qb.batch_rule


def test_explicit_prices_for_a_model_the_database_lacks() -> None:
    b = book(
        {"provider": "groq", "model": "in-house-7b", "usd_per_mtok": {"input": 0.1, "output": 0.3}}
    )
    est = b.estimate(
        "groq", "in-house-7b", {"input": 2_000_000, "output": 1_000_000, "cache_read": 5}, DAY
    )
    assert est.costs == {
        "input": (Decimal("0.2"), SOURCE_OVERRIDE),
        "output": (Decimal("0.3"), SOURCE_OVERRIDE),
    }
    assert est.total == Decimal("0.5")
    assert est.unpriced == {"cache_read": 5}


def test_invalid_overrides_are_reported() -> None:
    s = PricesSettings(
        overrides=[
            PriceOverride(provider="azure", model="x", multiplier=0.5),
            PriceOverride(provider="openai", model="gpt-4o", usd_per_mtok={"inptu": 1.0}),
            PriceOverride(provider="openai", model="gpt-4o"),
            PriceOverride(provider="openai", model="gpt-4o", multiplier=0.9),
            PriceOverride(provider="openai", model="gpt-4o", multiplier=0.8),
        ]
    )
    problems = validate_overrides(s, TRAITS)
    assert any(p.startswith("prices.overrides[0].provider:") for p in problems)
    assert any(p.startswith("prices.overrides[1].usd_per_mtok:") and "inptu" in p for p in problems)
    assert any(p.startswith("prices.overrides[2]:") for p in problems)
    assert any(p.startswith("prices.overrides[4]: duplicate") for p in problems)
    with pytest.raises(ValueError, match="inptu"):
        PriceBook(s, providers=TRAITS)
    assert validate_overrides(PricesSettings(), TRAITS) == []


# --- names, tables, helpers ------------------------------------------------------------------


def test_fine_tuned_names() -> None:
    # the database's own fine-tune entry wins over the base model
    q = BOOK.quote("openai", "ft:gpt-4o-mini:acme::abc123", "input", DAY)
    assert q is not None and q.model_ref == "ft:gpt-4o-mini"
    assert q.usd_per_token == db_price("openai", "ft:gpt-4o-mini-2024-07-18:x", "input_mtok")
    dated = BOOK.quote("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123", "input", DAY)
    assert dated == q
    # no fine-tune entry: priced as the base model
    base = BOOK.quote("openai", "ft:gpt-4.1-mini-2025-04-14:acme::abc", "output", DAY)
    ref = BOOK.quote("openai", "gpt-4.1-mini-2025-04-14", "output", DAY)
    assert base is not None and base == ref
    assert BOOK.quote("openai", "ft:no-such-base:acme::x", "input", DAY) is None


def test_price_table() -> None:
    b = book({"provider": "openai", "model": "gpt-4o-mini", "multiplier": 0.5})
    rows = b.price_table([GPT4O, GPT4O, GPT4O_MINI, ("openai", "no-such-model-zz9")], DAY)
    assert len({(r.provider, r.model, r.token_type) for r in rows}) == len(rows)
    got = {(r.model, r.token_type): (r.usd_per_token, r.source) for r in rows}
    assert got[("gpt-4o", "input")] == (db_price(*GPT4O, "input_mtok"), SOURCE_DATABASE)
    assert got[("gpt-4o-mini", "output")] == (
        db_price(*GPT4O_MINI, "output_mtok") / 2,
        SOURCE_OVERRIDE,
    )
    assert ("gpt-4o", "input_audio") not in got
    assert not any(r.model == "no-such-model-zz9" for r in rows)
    only = b.price_table([GPT4O], DAY, token_types=["output"])
    assert [(r.token_type, r.usd_per_token) for r in only] == [
        ("output", db_price(*GPT4O, "output_mtok"))
    ]


def test_estimate_dims_and_tokens_of() -> None:
    measures: dict[str, object] = {
        "tokens.input": 1000,
        "tokens.cache_read": Decimal(500),
        "requests": 3,
    }
    tokens = tokens_of(measures)
    assert tokens == {"input": 1000, "cache_read": 500}
    dims = {
        "model": "claude-sonnet-4-5-20250929",
        "service_tier": "standard",
        "context_window": "200k-1M",
        "batch": "true",
    }
    assert BOOK.estimate_dims("anthropic", dims, tokens, DAY) == BOOK.estimate(
        *SONNET_45, tokens, DAY, service_tier="standard", context_window="200k-1M", batch=True
    )


def test_bad_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        BOOK.estimate(*GPT4O, {"input": -1}, DAY)
    with pytest.raises(TypeError):
        BOOK.estimate(*GPT4O, {"input": 1.5}, DAY)  # type: ignore[dict-item]


def test_quotes_are_memoized_and_follow_the_data_in_force() -> None:
    b = PriceBook(providers=TRAITS)
    q1 = b.quote(*GPT4O, "input", DAY)
    assert q1 is not None and b.quote(*GPT4O, "input", DAY) is q1
    fake = Provider(
        id="openai",
        name="OpenAI",
        api_pattern="x",
        models=[
            ModelInfo(
                id="gpt-4o",
                match=ClauseEquals(equals="gpt-4o"),
                prices=ModelPrice(input_mtok=Decimal("7")),
            )
        ],
    )
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=[fake], from_auto_update=True)
    )
    try:
        q2 = b.quote(*GPT4O, "input", DAY)
        assert q2 is not None and q2.usd_per_token == Decimal("0.000007")
        assert b.data_info().source == "genai-prices-remote"
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert b.quote(*GPT4O, "input", DAY) == q1
    assert b.data_info().source == "genai-prices"


# --- data info and refresh ---------------------------------------------------------------------


def test_data_info_and_refresh_off_by_default() -> None:
    b = PriceBook(providers=TRAITS)
    assert PricesSettings().refresh is False
    assert b.start_refresh() is False
    info = b.data_info()
    assert (info.source, info.version) == ("genai-prices", genai_prices.__version__)
    assert (info.timestamp, info.refresh, info.refresh_time) == (None, "off", None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_refresh_keeps_prices_working() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/data.json"
    b = PriceBook(
        PricesSettings(refresh=True, refresh_interval=3600),
        providers=TRAITS,
        refresh_url=url,
        clock=lambda: 1_800_000_000.0,
    )
    before = b.quote(*GPT4O, "input", DAY)
    try:
        assert b.start_refresh() is True
        assert b.wait_refresh(10)
        info = b.data_info()
        assert (info.refresh, info.refresh_time) == ("failed", 1_800_000_000.0)
        assert (info.source, info.timestamp) == ("genai-prices", None)
        assert "ConnectError" in b.refresh_error()
        assert before is not None
        assert b.quote(*GPT4O, "input", DAY) == before
    finally:
        b.stop_refresh()


def _db_price(provider: str, model: str, key: str, day: dt.date) -> Decimal:
    snap = data_snapshot.get_snapshot()
    found = snap.find_provider_model(model, None, provider, None)
    assert found is not None
    prices = found[1].get_prices(dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC), None)
    return Decimal(str(getattr(prices, key)))


def test_non_token_units_use_the_database_unit_prices() -> None:
    day = dt.date(2026, 11, 10)
    tts = BOOK.estimate_units(
        "openai", {"model": "tts-1"}, {"character": 2_000_000, "request": 3}, day
    )
    assert tts == {"character": (2 * _db_price("openai", "tts-1", "input_mchars", day), "database")}
    whisper = BOOK.estimate_units("openai", {"model": "whisper-1"}, {"audio_second": 7200}, day)
    assert whisper["audio_second"][0] == 2 * _db_price(
        "openai", "whisper-1", "input_audio_hours", day
    )
    search = BOOK.estimate_units("openai", {"model": "gpt-4o"}, {"web_search": 500}, day)
    assert search["web_search"][0] == _db_price("openai", "gpt-4o", "web_searches_kcount", day) / 2
    assert BOOK.estimate_units("openai", {"model": "acme-internal-1"}, {"character": 5}, day) == {}


def test_a_multiplier_override_applies_to_unit_prices() -> None:
    day = dt.date(2026, 11, 10)
    book = PriceBook(
        PricesSettings(overrides=[PriceOverride(provider="openai", model="tts-1", multiplier=0.5)]),
        providers=TRAITS,
    )
    cost, source = book.estimate_units("openai", {"model": "tts-1"}, {"character": 1_000_000}, day)[
        "character"
    ]
    assert (cost, source) == (_db_price("openai", "tts-1", "input_mchars", day) / 2, "override")


def test_openai_moderations_are_free_not_unpriced() -> None:
    day = dt.date(2026, 11, 10)
    dims = {"operation": "moderations", "model": "omni-moderation-latest"}
    est = BOOK.estimate_dims("openai", dims, {"input": 5000}, day)
    assert est.unpriced == {} and est.costs == {"input": (Decimal(0), "free")}
    # the same model through another operation is priced (or unpriced) as usual
    other = BOOK.estimate_dims("openai", {**dims, "operation": "completions"}, {"input": 5000}, day)
    assert other.costs.get("input", (None, ""))[1] != "free"
