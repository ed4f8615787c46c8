"""OpenAI source adapter: JSON fixtures served through httpx2.MockTransport.

Fixtures under tests/fixtures/openai/ are composed from the documented shapes
(provider-apis.md section 1) with synthetic values.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.rows import MAX_COUNT, Bucket, Row
from exporter.settings import AccountSettings
from exporter.sources import DAY, HOUR, Endpoint
from exporter.sources._http import AUTH, DECODE, ApiClient, SourceError
from exporter.sources.openai import ENDPOINTS, OpenAISource, _completion_tokens, _Malformed

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"
BASE = "https://api.openai.com/v1"
D18, D19, D20, D21 = 1787011200, 1787097600, 1787184000, 1787270400
ALL_DIMS = ["model", "project", "user", "api_key", "service_tier", "batch", "context_window"]
USAGE = [e for e in ENDPOINTS if e != "costs"]

Reply = str | httpx.Response  # a fixture file name, or a ready response


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeOpenAI:
    """Serves replies per (path under /v1, page cursor); the last reply of a list repeats."""

    def __init__(self, routes: dict[tuple[str, str | None], list[Reply]]) -> None:
        self.routes = {k: list(v) for k, v in routes.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer test-admin-key"
        key = (request.url.path.removeprefix("/v1/"), request.url.params.get("page"))
        replies = self.routes[key]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, str):
            return httpx.Response(200, json=fixture(reply))
        return reply

    def queries(self) -> list[list[tuple[str, str]]]:
        return [list(r.url.params.multi_items()) for r in self.requests]


def datetime_date(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()


def path(endpoint: str) -> str:
    return "organization/costs" if endpoint == "costs" else f"organization/usage/{endpoint}"


def make(
    fake: FakeOpenAI,
    *,
    group_by: Sequence[str] = ("model", "project"),
    width: int = DAY,
    options: dict[str, Any] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> OpenAISource:
    account = AccountSettings(account="acme", options=options or {})
    client = ApiClient(
        BASE,
        {"Authorization": "Bearer test-admin-key"},
        transport=httpx.MockTransport(fake),
        sleep=sleep or (lambda s: None),
    )
    return OpenAISource(account, client, group_by=list(group_by), bucket_width=width)


def serve(endpoint: str, reply: Reply, **kw: Any) -> tuple[OpenAISource, FakeOpenAI]:
    fake = FakeOpenAI({(path(endpoint), None): [reply]})
    return make(fake, **kw), fake


def endpoint(source: OpenAISource, name: str) -> Endpoint:
    return next(e for e in source.endpoints() if e.name == name)


def fetch(source: OpenAISource, name: str, start: int = D19, end: int = D21) -> list[Bucket]:
    return source.fetch(endpoint(source, name), start, end)


def rows_by(bucket: Bucket, dim: str) -> dict[str, Row]:
    out = {r.dim(dim): r for r in bucket.rows}
    assert len(out) == len(bucket.rows)
    return out


def token_sum(row: Row) -> int:
    return sum(int(v) for k, v in row.measures.items() if k.startswith("tokens."))


# --- endpoints and options -------------------------------------------------------------------


def test_endpoints_default_daily() -> None:
    source = make(FakeOpenAI({}))
    assert source.provider == "openai" and source.account == "acme"
    eps = {e.name: e for e in source.endpoints()}
    assert list(eps) == list(ENDPOINTS)
    assert len(eps) == 11
    assert all(e.width == DAY and e.horizon == 2 * DAY for n, e in eps.items() if n != "costs")
    assert eps["costs"] == Endpoint("costs", DAY, 5 * DAY)
    assert source.payload_errors == dict.fromkeys(ENDPOINTS, 0)


def test_endpoints_hourly_keeps_costs_daily() -> None:
    eps = {e.name: e for e in make(FakeOpenAI({}), width=HOUR).endpoints()}
    assert eps["completions"] == Endpoint("completions", HOUR, 2 * DAY)
    assert eps["costs"] == Endpoint("costs", DAY, 5 * DAY)


def test_options_select_endpoints_and_horizons() -> None:
    opts = {"endpoints": ["costs", "completions"], "usage_horizon": "36h", "costs_horizon": "10d"}
    source = make(FakeOpenAI({}), options=opts)
    assert list(source.endpoints()) == [
        Endpoint("completions", DAY, 36 * HOUR),
        Endpoint("costs", DAY, 10 * DAY),
    ]
    assert set(source.payload_errors) == {"completions", "costs"}
    with pytest.raises(ValueError, match="not an enabled"):
        source.fetch(Endpoint("embeddings", DAY, DAY), D19, D20)


@pytest.mark.parametrize(
    ("options", "width", "key"),
    [
        ({"endpoint": ["costs"]}, DAY, "options.endpoint:"),
        ({"endpoints": "costs"}, DAY, "options.endpoints:"),
        ({"endpoints": ["costs", "chat"]}, DAY, "options.endpoints: unknown endpoint"),
        ({"endpoints": []}, DAY, "options.endpoints: is empty"),
        ({"usage_horizon": "two days"}, DAY, "options.usage_horizon:"),
        ({"usage_horizon": "12h"}, DAY, "options.usage_horizon: '12h' is shorter"),
        ({"usage_horizon": "30m"}, HOUR, "options.usage_horizon:"),
        ({"costs_horizon": "6h"}, HOUR, "options.costs_horizon:"),
        ({"costs_horizon": True}, DAY, "options.costs_horizon:"),
    ],
)
def test_invalid_options_name_the_option(options: dict[str, Any], width: int, key: str) -> None:
    with pytest.raises(ValueError) as info:
        make(FakeOpenAI({}), options=options, width=width)
    assert str(info.value).startswith(key)


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="bucket_width"):
        make(FakeOpenAI({}), width=60)
    with pytest.raises(ValueError, match="group_by: unknown dimension"):
        make(FakeOpenAI({}), group_by=["model", "region"])


# --- query parameters ------------------------------------------------------------------------

GROUPS_ALL = {
    "completions": ["project_id", "user_id", "api_key_id", "model", "batch", "service_tier"],
    "embeddings": ["project_id", "user_id", "api_key_id", "model"],
    "moderations": ["project_id", "user_id", "api_key_id", "model"],
    "images": ["project_id", "user_id", "api_key_id", "model", "size", "source"],
    "audio_speeches": ["project_id", "user_id", "api_key_id", "model"],
    "audio_transcriptions": ["project_id", "user_id", "api_key_id", "model"],
    "vector_stores": ["project_id"],
    "code_interpreter_sessions": ["project_id"],
    "file_search_calls": ["project_id", "user_id", "api_key_id"],
    "web_search_calls": ["project_id", "user_id", "api_key_id", "model"],
    "costs": ["project_id", "line_item", "api_key_id"],
}
GROUPS_DEFAULT = {
    "completions": ["project_id", "model"],
    "images": ["project_id", "model", "size", "source"],
    "vector_stores": ["project_id"],
    "file_search_calls": ["project_id"],
    "web_search_calls": ["project_id", "model"],
    "costs": ["project_id", "line_item"],
}
GROUPS_NONE = {
    "completions": [],
    "images": ["size", "source"],
    "vector_stores": [],
    "costs": ["project_id", "line_item"],
}


@pytest.mark.parametrize(
    ("group_by", "name", "groups"),
    [(ALL_DIMS, n, g) for n, g in GROUPS_ALL.items()]
    + [(["model", "project"], n, g) for n, g in GROUPS_DEFAULT.items()]
    + [([], n, g) for n, g in GROUPS_NONE.items()],
)
def test_exact_query_with_bracket_group_by(
    group_by: list[str], name: str, groups: list[str]
) -> None:
    source, fake = serve(name, "empty_page.json", group_by=group_by)
    assert fetch(source, name) == []
    limit = "180" if name == "costs" else "31"
    assert fake.queries() == [
        [
            ("start_time", str(D19)),
            ("end_time", str(D21)),
            ("bucket_width", "1d"),
            ("limit", limit),
            *[("group_by[]", g) for g in groups],
        ]
    ]
    assert fake.requests[0].url.path == f"/v1/{path(name)}"


def test_api_source_is_grouped_on_completions_only() -> None:
    """group_by api_source: sent to completions (the only endpoint that has it), and its
    values (agents_api, unlabeled, null) become the row's api_source dimension."""
    page = fixture("completions_cache_12h.json")
    results = page["data"][0]["results"][:3]
    for r, value in zip(results, ("agents_api", "unlabeled", None), strict=True):
        r["api_source"] = value
    page["data"][0]["results"] = results
    source, fake = serve("completions", httpx.Response(200, json=page), group_by=["api_source"])
    [day, _] = fetch(source, "completions")
    assert [g for k, g in fake.queries()[0] if k == "group_by[]"] == ["api_source"]
    assert sorted(r.dims for r in day.rows) == [(), (("api_source", "agents_api"),),
                                                (("api_source", "unlabeled"),)]  # fmt: skip
    for name in USAGE:
        if name != "completions":
            other, fake = serve(name, "empty_page.json", group_by=["api_source"])
            fetch(other, name)
            assert ("group_by[]", "api_source") not in fake.queries()[0], name


def test_hourly_query_aligns_start_and_keys_buckets_by_aligned_start() -> None:
    source, fake = serve("completions", "completions_hourly.json", width=HOUR)
    buckets = fetch(source, "completions", start=D19 + 125, end=D19 + 2 * HOUR)
    assert fake.queries()[0][:4] == [
        ("start_time", str(D19)),
        ("end_time", str(D19 + 2 * HOUR)),
        ("bucket_width", "1h"),
        ("limit", "168"),
    ]
    # first bucket clipped to the minute by the provider, last one ends "now"
    assert [(b.start, b.end) for b in buckets] == [(D19, D19 + HOUR), (D19 + HOUR, D19 + 2 * HOUR)]
    assert [b.rows[0].measures["requests"] for b in buckets] == [1, 2]


def test_costs_stay_daily_under_hourly_usage() -> None:
    source, fake = serve("costs", "empty_page.json", width=HOUR)
    fetch(source, "costs")
    assert ("bucket_width", "1d") in fake.queries()[0]
    assert ("limit", "180") in fake.queries()[0]


def test_empty_window_makes_no_request() -> None:
    source, fake = serve("completions", "empty_page.json")
    assert fetch(source, "completions", start=D20, end=D20) == []
    assert fake.requests == []


# --- completions -----------------------------------------------------------------------------


def test_completions_july_2026_fine_grained_shape() -> None:
    source, _ = serve("completions", "completions_2026_07.json", group_by=ALL_DIMS)
    day, today = fetch(source, "completions")
    assert (day.endpoint, day.start, day.end) == ("completions", D19, D20)
    # the current bucket's end_time is "now" on the wire; ours is start + width, and empty
    assert (today.start, today.end, today.rows) == (D20, D21, [])
    rows = rows_by(day, "model")
    gpt = rows["gpt-5.4-2026-03-05"]
    assert gpt.operation == "completions"
    assert gpt.dims == (
        ("api_key", "key_alpha1"),
        ("batch", "false"),
        ("model", "gpt-5.4-2026-03-05"),
        ("project", "proj_alpha"),
        ("service_tier", "default"),
    )
    assert gpt.measures == {
        "tokens.input": 600000,
        "tokens.input_audio": 20000,
        "tokens.input_image": 30000,
        "tokens.cache_read": 200000,
        "tokens.cache_read_audio": 5000,
        "tokens.cache_write": 45000,
        "tokens.output": 120000,
        "tokens.output_audio": 8000,
        "tokens.output_image": 2000,
        "requests": 1500,
    }  # cache_read_image is 0: omitted; unknown extra fields ignored
    assert token_sum(gpt) == 900000 + 130000
    new = rows["gpt-7-preview-2026-08-15"]  # a model never seen before: kept as a label value
    assert new.dim("batch") == "true" and new.dim("service_tier") == "priority"
    assert new.measures == {
        "tokens.input": 1000,
        "tokens.cache_read": 500,
        "tokens.output": 300,
        "requests": 7,
    }
    unattributed = rows[""]  # every group field null: no dimensions at all
    assert unattributed.dims == ()
    assert unattributed.measures == {"tokens.input": 42, "tokens.output": 8, "requests": 1}
    assert source.token_mismatches["completions"] == 0
    assert source.payload_errors["completions"] == 0


def test_completions_dec_2024_shape_subtracts_cached_input() -> None:
    source, _ = serve("completions", "completions_2024_12.json")
    [day] = fetch(source, "completions")
    rows = rows_by(day, "model")
    mini = rows["gpt-4o-mini-2024-07-18"]
    assert mini.measures == {
        "tokens.input": 5000 - 1200,
        "tokens.cache_read": 1200,
        "tokens.output": 800,
        "requests": 12,
    }
    assert token_sum(mini) == 5000 + 800
    # cached > input cannot hold: uncached is clamped at 0, the total still holds
    odd = rows["gpt-4o-2024-08-06"]
    assert odd.measures == {
        "tokens.input": 0,
        "tokens.cache_read": 100,
        "tokens.output": 10,
        "requests": 1,
    }
    assert source.token_mismatches["completions"] == 1


def test_completions_may_2026_shape_adds_audio_on_top_of_text() -> None:
    source, _ = serve("completions", "completions_2026_05.json", group_by=["model", "batch"])
    [day] = fetch(source, "completions")
    [row] = day.rows
    assert row.dims == (("batch", "false"), ("model", "gpt-4o-realtime-preview-2025-06-03"))
    assert row.measures == {
        "tokens.input": 2000,
        "tokens.cache_read": 1000,
        "tokens.input_audio": 2500,
        "tokens.output": 400,
        "tokens.output_audio": 600,
        "requests": 20,
    }
    assert token_sum(row) == 3000 + 400 + 2500 + 600


def test_completions_with_twelve_hour_cache_writes() -> None:
    """input = cached + 30 min writes + 12 h writes + uncached; the 12 h field as a number,
    null or a numeric string; a value of another shape skips its result, counted."""
    source, _ = serve("completions", "completions_cache_12h.json")
    day, today = fetch(source, "completions")
    assert today.rows == []
    # model: (input, cache_read, cache_write, cache_write_12h, output, requests); a zero
    # count is not a measure. gpt-4o-mini's 12 h field is null, gpt-4.1-mini's is "2500".
    names = ("input", "cache_read", "cache_write", "cache_write_12h", "output")
    expected = {
        "gpt-4o": (550000, 300000, 100000, 50000, 80000, 900),
        "gpt-4o-mini": (7000, 2000, 1000, 0, 3000, 40),
        "gpt-4.1-mini": (12500, 5000, 0, 2500, 4000, 25),
    }  # m-odd-12h (its 12 h field is an object) is skipped
    got = {r.dim("model"): dict(r.measures) for r in day.rows}
    assert got == {
        model: {
            **{f"tokens.{t}": n for t, n in zip(names, counts[:5], strict=True) if n},
            "requests": counts[5],
        }
        for model, counts in expected.items()
    }
    assert sum(got["gpt-4o"][f"tokens.{t}"] for t in names[:4]) == 1000000  # input_tokens
    assert source.payload_errors["completions"] == 1
    assert source.token_mismatches["completions"] == 0


def test_twelve_hour_cache_writes_are_estimated_only_at_their_own_price() -> None:
    """The adapter's row priced: the 12 h writes are unpriced with the installed database
    (never billed as input), and priced exactly once an override names their price."""
    from exporter.pricing import PriceBook, tokens_of
    from exporter.settings import PriceOverride, PricesSettings
    from exporter.sources import pricing_traits

    source, _ = serve("completions", "completions_cache_12h.json")
    day, _ = fetch(source, "completions")
    gpt = rows_by(day, "model")["gpt-4o"]
    tokens = tokens_of(gpt.measures)
    on = datetime_date(D19)
    plain = PriceBook(providers=pricing_traits())
    est = plain.estimate("openai", "gpt-4o", tokens, on)
    assert est.unpriced == {"cache_write_12h": 50000}
    rate = plain.quote("openai", "gpt-4o", "input", on)
    assert rate is not None and est.costs["input"][0] == 550000 * rate.usd_per_token
    override = PriceOverride(
        provider="openai", model="gpt-4o", usd_per_mtok={"cache_write_12h": 3.75}
    )
    priced = PriceBook(PricesSettings(overrides=[override]), providers=pricing_traits())
    full = priced.estimate("openai", "gpt-4o", tokens, on)
    assert full.unpriced == {}
    assert full.costs["cache_write_12h"] == (Decimal("0.1875"), "override")
    assert full.total == est.total + Decimal("0.1875")


def test_an_older_response_without_the_twelve_hour_field_keeps_its_mismatch() -> None:
    """A gap in input = cached + write + uncached is not read as 12 h writes."""
    result = {
        "input_tokens": 100,
        "input_cached_tokens": 30,
        "input_cache_write_tokens": 10,
        "input_uncached_tokens": 50,
        "output_tokens": 5,
    }
    tokens, ok = _completion_tokens(result)
    assert not ok
    assert "cache_write_12h" not in tokens
    assert (tokens["input"], tokens["cache_read"], tokens["cache_write"]) == (60, 30, 10)


FINE = (
    "input_text_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "input_cached_text_tokens",
    "input_cached_audio_tokens",
    "input_cached_image_tokens",
    "input_cache_write_tokens",
    "output_text_tokens",
    "output_audio_tokens",
    "output_image_tokens",
)
counts = st.integers(min_value=0, max_value=2**70)


@given(parts=st.fixed_dictionaries({k: counts for k in FINE}))
def test_partition_is_exact_when_identities_hold(parts: dict[str, int]) -> None:
    cached = sum(parts[k] for k in FINE[3:6])
    uncached = sum(parts[k] for k in FINE[:3])
    result = {
        **parts,
        "input_cached_tokens": cached,
        "input_uncached_tokens": uncached,
        "input_tokens": cached + uncached + parts["input_cache_write_tokens"],
        "output_tokens": sum(parts[k] for k in FINE[7:]),
    }
    tokens, ok = _completion_tokens(result)
    assert ok
    expected = dict(zip(
        ("input", "input_audio", "input_image", "cache_read", "cache_read_audio",
         "cache_read_image", "cache_write", "output", "output_audio", "output_image"),
        (parts[k] for k in FINE),
        strict=True,
    ))  # fmt: skip
    assert tokens == expected


@given(parts=st.fixed_dictionaries({k: counts for k in FINE}), w12=counts)
def test_partition_with_twelve_hour_writes_is_exact(parts: dict[str, int], w12: int) -> None:
    cached = sum(parts[k] for k in FINE[3:6])
    uncached = sum(parts[k] for k in FINE[:3])
    result = {
        **parts,
        "input_cache_write_12h_tokens": w12,
        "input_cached_tokens": cached,
        "input_uncached_tokens": uncached,
        "input_tokens": cached + uncached + parts["input_cache_write_tokens"] + w12,
        "output_tokens": sum(parts[k] for k in FINE[7:]),
    }
    tokens, ok = _completion_tokens(result)
    assert ok
    assert tokens["cache_write_12h"] == w12
    assert tokens["cache_write"] == parts["input_cache_write_tokens"]
    assert tokens["input"] == parts["input_text_tokens"]
    assert sum(tokens.values()) == result["input_tokens"] + result["output_tokens"]


optional = st.one_of(st.none(), counts)


@given(
    it=counts,
    ot=counts,
    fields=st.fixed_dictionaries(
        {},
        optional={k: optional for k in (*FINE, "input_cached_tokens", "input_uncached_tokens")},
    ),
)
def test_partition_rule_holds_for_any_shape(it: int, ot: int, fields: dict[str, Any]) -> None:
    """Whatever fields are present or how they disagree, the types sum to the aggregates."""
    tokens, _ = _completion_tokens({"input_tokens": it, "output_tokens": ot, **fields})
    assert all(v >= 0 for v in tokens.values())
    legacy = not any(
        fields.get(k) is not None
        for k in (*FINE, "input_uncached_tokens")
        if k not in ("input_audio_tokens", "output_audio_tokens")
    )
    extra = (
        (fields.get("input_audio_tokens") or 0) + (fields.get("output_audio_tokens") or 0)
        if legacy
        else 0
    )
    assert sum(tokens.values()) == it + ot + extra


@given(
    it=counts,
    ot=counts,
    # A numeric string past 64 bits is refused as malformed (the next test), not split.
    w12=st.one_of(st.none(), counts, st.integers(0, MAX_COUNT).map(str)),
    fields=st.fixed_dictionaries(
        {}, optional={k: optional for k in (*FINE, "input_cached_tokens")}
    ),
)
def test_partition_rule_holds_with_the_twelve_hour_field(
    it: int, ot: int, w12: int | str | None, fields: dict[str, Any]
) -> None:
    """With the 12 h field (a count, a numeric string or null) in any company, the types
    still sum to the aggregates, and never to more 12 h writes than the field says."""
    result = {"input_tokens": it, "output_tokens": ot, **fields}
    result["input_cache_write_12h_tokens"] = w12
    tokens, _ = _completion_tokens(result)
    assert all(v >= 0 for v in tokens.values())
    assert tokens.get("cache_write_12h", 0) <= int(w12 or 0)
    if w12 is not None:
        assert sum(tokens.values()) == it + ot


def test_a_twelve_hour_string_past_64_bits_is_malformed() -> None:
    result = {"input_tokens": 1, "output_tokens": 0}
    result["input_cache_write_12h_tokens"] = str(2**63)  # type: ignore[assignment]
    with pytest.raises(_Malformed, match="input_cache_write_12h_tokens"):
        _completion_tokens(result)


def test_fine_fields_that_contradict_the_aggregate_are_counted_and_fitted() -> None:
    result = {
        "input_tokens": 100,
        "input_cached_tokens": 30,
        "input_uncached_tokens": 90,  # 30 + 90 > 100
        "input_text_tokens": 90,
        "output_tokens": 10,
        "output_text_tokens": 10,
    }
    tokens, ok = _completion_tokens(result)
    assert not ok
    assert sum(tokens.values()) == 110
    assert tokens["input"] + tokens["cache_read"] == 100


# --- the other usage endpoints ---------------------------------------------------------------


def test_embeddings_counts_above_2_pow_53_stay_exact_ints() -> None:
    source, _ = serve("embeddings", "embeddings.json")
    day, today = fetch(source, "embeddings")
    rows = rows_by(day, "model")
    large = rows["text-embedding-3-large"]
    assert large.dims == (("model", "text-embedding-3-large"), ("project", "proj_x"))
    assert large.measures == {"tokens.input": 9007199254740993, "requests": 9120}
    assert type(large.measures["tokens.input"]) is int
    small = rows["text-embedding-3-small"]
    assert small.dims == (("model", "text-embedding-3-small"),)  # null project dropped
    assert small.measures == {"tokens.input": 48200771, "requests": 310}
    assert today.rows == []


@pytest.mark.parametrize(
    ("name", "dims", "measures"),
    [
        (
            "moderations",
            (("model", "omni-moderation-latest"), ("project", "proj_x")),
            {"tokens.input": 5123, "requests": 88},
        ),
        (
            "audio_speeches",
            (("model", "tts-1"), ("project", "proj_x")),
            {"characters": 120345, "requests": 40},
        ),
        (
            "code_interpreter_sessions",
            (("project", "proj_x"),),
            {"sessions": 17},
        ),
        (
            "file_search_calls",  # object name differs from the path; vector_store_id ignored
            (("project", "proj_x"), ("tool", "file_search")),
            {"tool_calls": 33},
        ),
        (
            "web_search_calls",  # context_level is not grouped by: ignored
            (("model", "gpt-5.4-mini"), ("project", "proj_x"), ("tool", "web_search")),
            {"tool_calls": 41, "requests": 25},
        ),
    ],
)
def test_single_row_endpoints(name: str, dims: tuple[Any, ...], measures: dict[str, int]) -> None:
    source, _ = serve(name, f"{name}.json")
    [day] = fetch(source, name)
    assert day.rows == [Row(name, dims, measures)]


def test_images_group_by_size_and_source() -> None:
    source, _ = serve("images", "images.json")
    [day] = fetch(source, "images")
    assert {r.dims: dict(r.measures) for r in day.rows} == {
        (
            ("model", "gpt-image-1"),
            ("project", "proj_x"),
            ("size", "1536x1024"),  # a free string, not in the filter enum
            ("source", "image.generation"),
        ): {"images": 14, "requests": 14},
        (
            ("model", "dall-e-3"),
            ("project", "proj_x"),
            ("size", "1024x1024"),
            ("source", "image.edit"),
        ): {"images": 3, "requests": 2},
        (("model", "gpt-image-1"),): {"images": 1, "requests": 1},
    }


def test_audio_transcriptions_seconds() -> None:
    source, _ = serve("audio_transcriptions", "audio_transcriptions.json")
    [day] = fetch(source, "audio_transcriptions")
    rows = rows_by(day, "model")
    assert rows["whisper-1"].measures == {"audio_seconds": 3605, "requests": 12}
    assert rows["gpt-4o-transcribe"].measures == {"audio_seconds": 60, "requests": 1}


def test_vector_stores_storage_level_with_null_project() -> None:
    source, _ = serve("vector_stores", "vector_stores.json")
    [day] = fetch(source, "vector_stores")
    assert {r.dims: dict(r.measures) for r in day.rows} == {
        (("project", "proj_x"),): {"storage_bytes": 1073741824},
        (): {"storage_bytes": 2048},
    }


# --- costs -----------------------------------------------------------------------------------


def test_costs_amounts_are_exact_decimals() -> None:
    source, fake = serve("costs", "costs.json", group_by=["model", "project", "api_key"])
    day, today = fetch(source, "costs")
    assert ("group_by[]", "api_key_id") in fake.queries()[0]
    rows = rows_by(day, "line_item")
    number = rows["gpt-5.4-2026-03-05, input"]
    assert number.operation == "costs"
    assert number.dims == (
        ("currency", "usd"),
        ("line_item", "gpt-5.4-2026-03-05, input"),
        ("model", "gpt-5.4-2026-03-05"),  # a token line item names its model and token type
        ("project", "proj_x"),
        ("token_type", "input"),
    )
    assert number.measures == {"cost": Decimal("4.60935")}
    string = rows["web search tool calls"]
    assert string.dims == (("currency", "usd"), ("line_item", "web search tool calls"))
    cost = string.measures["cost"]
    assert isinstance(cost, Decimal)
    assert str(cost) == "0.1739150000000000000000000000"
    assert rows["gpt-5.4-2026-03-05, output"].dim("api_key") == "key_alpha1"
    assert rows["gpt-5.4-2026-03-05, output"].measures == {"cost": Decimal("12.50")}
    [zero] = today.rows
    assert (today.start, today.end) == (D20, D21)
    assert zero.measures == {"cost": Decimal(0)}
    assert source.payload_errors["costs"] == 0


def test_costs_without_api_key_dimension_do_not_group_by_it() -> None:
    source, fake = serve("costs", "costs.json")
    day, _ = fetch(source, "costs")
    assert ("group_by[]", "api_key_id") not in fake.queries()[0]
    assert all(r.dim("api_key") == "" for r in day.rows)


# --- pagination, retries, errors -------------------------------------------------------------

CURSOR = "page_AAAAAGkhCgAAAAAAaSFbgA=="


def test_pagination_follows_cursor_with_same_params_and_merges_split_bucket() -> None:
    fake = FakeOpenAI(
        {
            (path("completions"), None): ["completions_page1.json"],
            (path("completions"), CURSOR): ["completions_page2.json"],
        }
    )
    source = make(fake)
    buckets = fetch(source, "completions", start=D18, end=D21)
    first, second = fake.queries()
    assert second == [*first, ("page", CURSOR)]
    assert [(b.start, b.end) for b in buckets] == [(D18, D19), (D19, D20), (D20, D21)]
    split = rows_by(buckets[1], "project")
    # the bucket's results straddle the pages: proj_a on page 1, proj_b on page 2
    assert split["proj_a"].measures == {
        "tokens.input": 150,
        "tokens.cache_read": 50,
        "tokens.output": 20,
        "requests": 2,
    }
    assert split["proj_b"].measures == {"tokens.input": 300, "tokens.output": 30, "requests": 3}


def test_buckets_outside_the_window_are_dropped() -> None:
    fake = FakeOpenAI(
        {
            (path("completions"), None): ["completions_page1.json"],
            (path("completions"), CURSOR): ["completions_page2.json"],
        }
    )
    buckets = fetch(make(fake), "completions", start=D19, end=D20)
    assert [b.start for b in buckets] == [D19]


def test_rows_with_equal_labels_are_summed() -> None:
    """Distinct results that map to the same labels (batch true and "true") are both usage."""
    page = fixture("empty_page.json")
    results = [
        {
            "model": "m",
            "batch": batch,
            "input_tokens": n,
            "output_tokens": 1,
            "num_model_requests": 1,
        }
        for batch, n in ((True, 1), ("true", 2), ("TRUE", 4))
    ]
    page["data"] = [{"object": "bucket", "start_time": D19, "end_time": D20, "results": results}]
    source, _ = serve("completions", httpx.Response(200, json=page), group_by=["model", "batch"])
    [day] = fetch(source, "completions")
    assert day.rows == [
        Row(
            "completions",
            (("batch", "true"), ("model", "m")),
            {"tokens.input": 7, "tokens.output": 3, "requests": 3},
        )
    ]


def test_429_is_retried_after_retry_after() -> None:
    slept: list[float] = []
    limited = httpx.Response(
        429,
        headers={"Retry-After": "7"},
        json={"error": {"message": "Rate limit", "type": "rate_limit_error"}},
    )
    source, fake = serve("completions", "empty_page.json", sleep=slept.append)
    fake.routes[(path("completions"), None)] = [limited, limited, "completions_2024_12.json"]
    [day] = fetch(source, "completions")
    assert slept == [7.0, 7.0]
    assert len(fake.requests) == 3
    assert fake.queries()[0] == fake.queries()[2]
    assert len(day.rows) == 2


def test_401_is_not_retried() -> None:
    slept: list[float] = []
    denied = httpx.Response(
        401,
        json={
            "error": {
                "message": "Incorrect API key provided: test-adm*******key.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )
    source, fake = serve("costs", denied, sleep=slept.append)
    with pytest.raises(SourceError) as info:
        fetch(source, "costs")
    assert info.value.reason == AUTH and info.value.status == 401
    assert len(fake.requests) == 1 and slept == []


def test_page_without_data_is_a_decode_error() -> None:
    source, _ = serve("images", httpx.Response(200, json={"object": "page", "has_more": False}))
    with pytest.raises(SourceError) as info:
        fetch(source, "images")
    assert info.value.reason == DECODE


def test_malformed_rows_and_buckets_are_skipped_and_counted() -> None:
    source, _ = serve("embeddings", "embeddings_malformed.json")
    buckets = fetch(source, "embeddings")
    [day] = buckets  # the bucket without results and the non-object bucket are skipped
    assert {r.dim("model"): dict(r.measures) for r in day.rows} == {
        "m-good": {"tokens.input": 100, "requests": 2},  # its exact repeat is dropped
        "m-float": {"tokens.input": 12, "requests": 3},  # 12.0 -> 12
        "m-numstr": {"tokens.input": 77, "requests": 1},
    }
    assert all(type(v) is int for r in day.rows for v in r.measures.values())
    # "abc", -5, 1.5, model 42, missing input_tokens, "oops", true; plus 2 bad buckets
    assert source.payload_errors["embeddings"] == 9
    fetch(source, "embeddings")
    assert source.payload_errors["embeddings"] == 18  # cumulative
    assert source.payload_errors["completions"] == 0


@pytest.mark.parametrize(
    ("line_item", "expected"),
    [
        ("gpt-4o-2024-08-06, input", {"model": "gpt-4o-2024-08-06", "token_type": "input"}),
        ("gpt-4o, cached input", {"model": "gpt-4o", "token_type": "cache_read"}),
        ("gpt-realtime, audio output", {"model": "gpt-realtime", "token_type": "output_audio"}),
        ("gpt-5.6-sol, cache writes", {"model": "gpt-5.6-sol", "token_type": "cache_write"}),
        (
            "gpt-5.6-sol, cache writes - 12hr",
            {"model": "gpt-5.6-sol", "token_type": "cache_write_12h"},
        ),
        ("gpt-image-1, images 1024x1024", {}),  # not a token line: stays opaque
        ("web search tool calls", {}),
        (", input", {}),
        (None, {}),
    ],
)
def test_token_cost_lines_name_model_and_token_type(
    line_item: str | None, expected: dict[str, str]
) -> None:
    from exporter.sources.openai import _token_line

    assert _token_line(line_item) == expected


def test_a_count_beyond_64_bits_skips_its_row_and_not_the_endpoint() -> None:
    """Counts of "1e5000" (past Python's 4,300-digit int limit) and 2^64 as strings: each is
    one skipped, counted row; the other results of the page are kept."""
    page = json.loads((FIXTURES / "completions_2024_12.json").read_text())
    results = page["data"][0]["results"]
    good = len(results)
    results.append({**results[0], "model": "m-huge", "input_tokens": "1e5000"})
    results.append({**results[0], "model": "m-wide", "output_tokens": str(2**64)})
    source, _ = serve("completions", httpx.Response(200, json=page))
    [day, *_] = fetch(source, "completions")
    assert {r.dim("model") for r in day.rows}.isdisjoint({"m-huge", "m-wide"})
    assert len(day.rows) == good
    assert source.payload_errors["completions"] == 2


def test_a_bucket_repeated_with_an_extra_field_is_counted_once() -> None:
    """The same bucket twice on one page, each result of the copy with one field more: no
    row doubles. A copy whose counts differ keeps the first and counts the other."""
    page = json.loads((FIXTURES / "completions_2024_12.json").read_text())
    once = json.loads(json.dumps(page))
    copy = json.loads(json.dumps(page["data"][0]))
    for r in copy["results"]:
        r["x_debug"] = "added"
    page["data"].append(copy)
    source, _ = serve("completions", httpx.Response(200, json=once))
    expected = [sorted(map(repr, b.rows)) for b in fetch(source, "completions")]
    source, _ = serve("completions", httpx.Response(200, json=page))
    got = [sorted(map(repr, b.rows)) for b in fetch(source, "completions")]
    assert got == expected and expected[0]
    assert source.payload_errors["completions"] == 0
    conflict = json.loads(json.dumps(once))
    changed = json.loads(json.dumps(once["data"][0]))
    changed["results"][0]["output_tokens"] += 1
    conflict["data"].append(changed)
    source, _ = serve("completions", httpx.Response(200, json=conflict))
    assert [sorted(map(repr, b.rows)) for b in fetch(source, "completions")] == expected
    assert source.payload_errors["completions"] == 1
