"""The simulator's price card: what its fake providers charge per unit of usage.

Reported costs must reconcile with usage exactly, so every cost the simulator serves is
quantity x unit price from this card. For models the `genai-prices` database knows, token,
character, audio-second and web-search prices are taken from it at the usage's UTC date, so an
exporter that estimates cost with genai-prices lands on the same amounts (ratio 1 up to the
wire's rounding). Each unit price is the *marginal* price genai-prices charges for one unit of
that measure (priced on a million units so no precision is lost): pricing is linear, so the
sum of quantity x marginal price equals genai-prices' price of the whole usage.

Everything genai-prices cannot price (the deliberately unknown `acme-internal-1`, OpenAI's
12 hour cache writes, which it has no field for, per-image, per-session, storage, file-search
and code-execution charges) has a fixed price here.

Batch and priority/flex discounts are off by default (`tier_pricing=False`): an exporter that
does not group by batch or service tier could not reproduce them, and the default must
reconcile. With `tier_pricing=True` the genai-prices variants are used, with the context
`{"processing": "batch"}` for OpenAI `batch=true` and Anthropic `service_tier=batch`, and
`{"service_tier": "priority" | "flex"}` for OpenAI service tiers.
"""

from __future__ import annotations

import datetime as dt
import threading
import warnings
from collections.abc import Mapping
from decimal import Decimal

import genai_prices

from simulator.vocab import AUDIO_SECONDS, CHARACTERS, IMAGES, SESSIONS, TOOL_CALLS

MILLION = 1_000_000
UNKNOWN_MODEL = "acme-internal-1"
CODE_EXECUTION_SECONDS = "code_execution_seconds"
STORAGE_BYTE_SECONDS = "storage_byte_seconds"

# genai-prices usage that one unit of a simulator token type stands for: the type's own usage
# key plus every ancestor (genai-prices' input_tokens includes cache reads and writes, its
# input_audio_tokens includes cached audio, and so on).
_TOKEN_USAGE: dict[str, tuple[str, ...]] = {
    "input": ("input_tokens",),
    "input_audio": ("input_tokens", "input_audio_tokens"),
    "input_image": ("input_tokens", "input_image_tokens"),
    "cache_read": ("input_tokens", "cache_read_tokens"),
    "cache_read_audio": (
        "input_tokens",
        "input_audio_tokens",
        "cache_read_tokens",
        "cache_audio_read_tokens",
    ),
    "cache_read_image": (
        "input_tokens",
        "input_image_tokens",
        "cache_read_tokens",
        "cache_image_read_tokens",
    ),
    "cache_write": ("input_tokens", "cache_write_tokens"),
    "cache_write_5m": ("input_tokens", "cache_write_tokens", "cache_write_5m_tokens"),
    "cache_write_1h": ("input_tokens", "cache_write_tokens", "cache_write_1h_tokens"),
    "output": ("output_tokens",),
    "output_audio": ("output_tokens", "output_audio_tokens"),
    "output_image": ("output_tokens", "output_image_tokens"),
}
_OTHER_USAGE: dict[str, tuple[str, ...]] = {
    CHARACTERS: ("input_characters",),
    AUDIO_SECONDS: ("audio_seconds",),
}

# USD per million tokens for the model genai-prices does not know (same on every provider),
# and for token types it cannot price on any model (those without a `_TOKEN_USAGE` entry).
_UNKNOWN_MTOK: dict[str, Decimal] = {
    "input": Decimal("1.00"),
    "input_audio": Decimal("8.00"),
    "input_image": Decimal("2.00"),
    "cache_read": Decimal("0.25"),
    "cache_read_audio": Decimal("2.00"),
    "cache_read_image": Decimal("0.50"),
    "cache_write": Decimal("1.25"),
    "cache_write_12h": Decimal("2.00"),  # any model: genai-prices has no 12 hour price
    "cache_write_5m": Decimal("1.25"),
    "cache_write_1h": Decimal("2.00"),
    "output": Decimal("4.00"),
    "output_audio": Decimal("16.00"),
    "output_image": Decimal("8.00"),
}
# USD per image by (model, size); sizes not listed use the model's "*" entry.
_IMAGE_USD: dict[tuple[str, str], Decimal] = {
    ("gpt-image-1", "1024x1024"): Decimal("0.042"),
    ("gpt-image-1", "1536x1024"): Decimal("0.063"),
    ("gpt-image-1", "*"): Decimal("0.063"),
    ("gpt-image-1-mini", "1024x1024"): Decimal("0.011"),
    ("gpt-image-1-mini", "*"): Decimal("0.016"),
    ("*", "*"): Decimal("0.050"),
}
# Fallback prices for non-token measures of models genai-prices prices differently.
_OWN_UNIT_USD: dict[str, Decimal] = {
    CHARACTERS: Decimal("0.000015"),  # per character (gpt-4o-mini-tts is token-priced there)
    AUDIO_SECONDS: Decimal("0.0001"),  # per second ($0.006 a minute)
    SESSIONS: Decimal("0.03"),  # code interpreter, per session
    CODE_EXECUTION_SECONDS: Decimal("0.05") / 3600,  # Anthropic code execution, per second
}
_TOOL_USD: dict[str, Decimal] = {
    "file_search": Decimal("0.0025"),  # per call
    "web_search": Decimal("0.01"),  # per call, when the model has no genai-prices price
}
# Vector storage: USD 0.10 per GiB per day, charged per byte-second.
STORAGE_USD_PER_GIB_DAY = Decimal("0.10")
_STORAGE = STORAGE_USD_PER_GIB_DAY / (Decimal(2**30) * 86400)


class PriceCard:
    """Unit prices in USD per unit of a measure, by provider, model, date and dimensions."""

    def __init__(self, tier_pricing: bool = False) -> None:
        self.tier_pricing = tier_pricing
        self._cache: dict[tuple[object, ...], Decimal | None] = {}
        self._by_price: dict[tuple[object, ...], Decimal] = {}
        self._lock = threading.Lock()

    @staticmethod
    def known(provider: str, model: str | None) -> bool:
        """Whether genai-prices resolves `model` (the exporter can estimate its cost)."""
        if not model:
            return False
        try:
            genai_prices.data_snapshot.get_snapshot().find_provider_model(
                model, None, provider, None
            )
        except LookupError:
            return False
        return True

    def context(self, provider: str, dims: Mapping[str, str | None]) -> tuple[tuple[str, str], ...]:
        if not self.tier_pricing:
            return ()
        ctx: dict[str, str] = {}
        tier = dims.get("service_tier")
        if dims.get("batch") == "true" or (provider == "anthropic" and tier == "batch"):
            ctx["processing"] = "batch"
        if provider == "openai" and tier in ("priority", "flex"):
            ctx["service_tier"] = str(tier)
        return tuple(sorted(ctx.items()))

    def unit_price(
        self,
        provider: str,
        model: str | None,
        measure: str,
        day: dt.date,
        dims: Mapping[str, str | None] | None = None,
    ) -> Decimal | None:
        """USD per unit of `measure` (a token, character, second, image, call, byte-second).

        None when the measure is not billed (requests, counts that only describe usage).
        """
        dims = dims or {}
        ctx = self.context(provider, dims)
        extra = (dims.get("size") or "", dims.get("tool") or "")
        key = (provider, model, measure, day, ctx, extra)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        price = self._price(provider, model, measure, day, ctx, extra)
        with self._lock:
            self._cache[key] = price
        return price

    def _price(
        self,
        provider: str,
        model: str | None,
        measure: str,
        day: dt.date,
        ctx: tuple[tuple[str, str], ...],
        extra: tuple[str, str],
    ) -> Decimal | None:
        size, tool = extra
        if measure == STORAGE_BYTE_SECONDS:
            return _STORAGE
        if measure == IMAGES:
            m = model or "*"
            for k in ((m, size), (m, "*"), ("*", "*")):
                if k in _IMAGE_USD:
                    return _IMAGE_USD[k]
        if measure == TOOL_CALLS:
            tool = tool or "web_search"  # Anthropic's server_tool_use counts web searches
            if tool == "web_search" and model:
                genai = self._genai(provider, model, ("web_searches",), day, ctx, 1000)
                if genai:
                    return genai
            return _TOOL_USD.get(tool)
        if measure.startswith("tokens."):
            token_type = measure.removeprefix("tokens.")
            if token_type not in _UNKNOWN_MTOK:
                return None
            if token_type in _TOKEN_USAGE and model and self.known(provider, model):
                return self._genai(provider, model, _TOKEN_USAGE[token_type], day, ctx, MILLION)
            return _UNKNOWN_MTOK[token_type] / MILLION
        if measure in _OTHER_USAGE and model and self.known(provider, model):
            per = 3600 if measure == AUDIO_SECONDS else MILLION
            genai = self._genai(provider, model, _OTHER_USAGE[measure], day, ctx, per)
            if genai:
                return genai
        return _OWN_UNIT_USD.get(measure)

    def _genai(
        self,
        provider: str,
        model: str,
        usage_keys: tuple[str, ...],
        day: dt.date,
        ctx: tuple[tuple[str, str], ...],
        per: int,
    ) -> Decimal:
        when = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        _, info = genai_prices.data_snapshot.get_snapshot().find_provider_model(
            model, None, provider, None
        )
        model_price = info.get_prices(when, dict(ctx) or None)
        # Without a context genai-prices returns the stored price object itself, so its
        # identity is a cheap key shared by every day on which the same prices apply.
        key = (id(model_price), usage_keys, per) if not ctx else None
        if key is not None and key in self._by_price:
            return self._by_price[key]

        def total(n: int) -> Decimal:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                usage = genai_prices.Usage(**dict.fromkeys(usage_keys, n))
                calc = genai_prices.calc_price(
                    usage,
                    model,
                    provider_id=provider,
                    genai_request_timestamp=when,
                    price_context=dict(ctx) or None,
                )
            return calc.total_price

        # Subtract the price of no usage, in case a model carries a per-request fee.
        price = (total(per) - total(0)) / per
        if key is not None:
            self._by_price[key] = price
        return price


def describe(provider: str, model: str, day: dt.date, card: PriceCard) -> dict[str, str]:
    """The card's token prices for one model and day, USD per million tokens (for /_sim)."""
    out: dict[str, str] = {}
    for token_type in _UNKNOWN_MTOK:
        price = card.unit_price(provider, model, "tokens." + token_type, day)
        if price is not None:
            out[token_type] = format((price * MILLION).normalize(), "f")
    return out
