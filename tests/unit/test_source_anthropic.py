"""Anthropic adapter: exact request parameters, payload -> rows, paging, money, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from exporter.rows import Bucket, Row
from exporter.settings import AccountSettings
from exporter.sources import DAY, HOUR, Endpoint
from exporter.sources._http import AUTH, ApiClient, RetryPolicy, SourceError
from exporter.sources.anthropic import (
    CC_COMMITS,
    CC_ESTIMATED_COST,
    CC_LINES_ADDED,
    CC_LINES_REMOVED,
    CC_PULL_REQUESTS,
    DEFAULT_BASE_URL,
    AnthropicSource,
    headers,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
KEY = "test-admin-key"
NOV1 = 1793491200  # 2026-11-01T00:00:00Z
NOV2 = NOV1 + DAY
NOV3 = NOV2 + DAY
NOV4 = NOV3 + DAY
MESSAGES_PATH = "/v1/organizations/usage_report/messages"
COSTS_PATH = "/v1/organizations/cost_report"
CLAUDE_CODE_PATH = "/v1/organizations/usage_report/claude_code"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


Handler = Callable[[httpx.Request], httpx.Response]


class Harness:
    """An AnthropicSource over a MockTransport that records every request and sleep."""

    def __init__(
        self,
        handler: Handler,
        *,
        options: dict[str, Any] | None = None,
        group_by: list[str] | None = None,
        bucket_width: int = DAY,
    ) -> None:
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        self.client = ApiClient(
            DEFAULT_BASE_URL,
            headers(KEY),
            retry=RetryPolicy(attempts=3, backoff_base=0.01),
            sleep=self.sleeps.append,
            transport=httpx.MockTransport(record),
        )
        account = AccountSettings(account="acme", options=options or {})
        self.source = AnthropicSource(
            account,
            self.client,
            group_by=group_by if group_by is not None else ["model", "project"],
            bucket_width=bucket_width,
        )

    def endpoint(self, name: str) -> Endpoint:
        return next(ep for ep in self.source.endpoints() if ep.name == name)

    def params(self, i: int = 0) -> list[tuple[str, str]]:
        return self.requests[i].url.params.multi_items()


def by_dims(bucket: Bucket) -> dict[tuple[str, tuple[tuple[str, str], ...]], Row]:
    out = {(r.operation, r.dims): r for r in bucket.rows}
    assert len(out) == len(bucket.rows), "one row per (operation, dims) in a bucket"
    return out


def dims(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def paged(first: str, second: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        page = request.url.params.get("page")
        return httpx.Response(200, json=load(second if page else first))

    return handler


# --- headers and endpoints -------------------------------------------------------------------


def test_headers_and_every_request_carries_them() -> None:
    h = Harness(lambda r: httpx.Response(200, json={"data": [], "has_more": False}))
    assert headers(KEY) == {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    h.source.fetch(h.endpoint("messages"), NOV1, NOV2)
    sent = h.requests[0].headers
    assert sent["x-api-key"] == KEY
    assert sent["anthropic-version"] == "2023-06-01"
    assert h.requests[0].url.path == MESSAGES_PATH


def test_endpoints_and_horizons() -> None:
    h = Harness(lambda r: httpx.Response(500))
    assert h.source.provider == "anthropic"
    assert h.source.account == "acme"
    assert h.source.endpoints() == [
        Endpoint("messages", DAY, 2 * DAY),
        Endpoint("costs", DAY, 5 * DAY),
    ]
    assert h.source.payload_errors == {"messages": 0, "costs": 0}
    hourly = Harness(
        lambda r: httpx.Response(500),
        bucket_width=HOUR,
        options={"usage_horizon": "12h", "costs_horizon": "7d", "claude_code": True},
    )
    assert hourly.source.endpoints() == [
        Endpoint("messages", HOUR, 12 * HOUR),
        Endpoint("costs", DAY, 7 * DAY),
        Endpoint("claude_code", DAY, 3 * DAY),
    ]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"usage_horizon": "soon"}, "options.usage_horizon"),
        ({"costs_horizon": "3h"}, "options.costs_horizon"),  # shorter than a 1d bucket
        ({"claude_code": "yes"}, "options.claude_code"),
        ({"claude_code_actor_emails": 1}, "options.claude_code_actor_emails"),
        ({"claude_kode": True}, "options.claude_kode"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        Harness(lambda r: httpx.Response(500), options=options)


def test_unsupported_width_and_unaligned_start_are_refused() -> None:
    with pytest.raises(ValueError, match="bucket_width"):
        Harness(lambda r: httpx.Response(500), bucket_width=300)
    h = Harness(lambda r: httpx.Response(500))
    with pytest.raises(ValueError, match="not aligned"):
        h.source.fetch(h.endpoint("messages"), NOV1 + 60, NOV2)
    assert h.requests == []


# --- messages usage --------------------------------------------------------------------------


def test_messages_params_are_exact_rfc3339_and_bracket_group_by() -> None:
    h = Harness(paged("messages_page1.json", "messages_page2.json"))
    # `end` is "now" (mid-day): ending_at is the next UTC midnight so today's bucket is asked for.
    h.source.fetch(h.endpoint("messages"), NOV1, NOV3 + 45296)
    assert h.params(0) == [
        ("starting_at", "2026-11-01T00:00:00Z"),
        ("ending_at", "2026-11-04T00:00:00Z"),
        ("bucket_width", "1d"),
        ("limit", "31"),
        ("group_by[]", "model"),
        ("group_by[]", "workspace_id"),
        ("group_by[]", "context_window"),  # always with model: long-context pricing tier
    ]
    assert "group_by%5B%5D=model&group_by%5B%5D=workspace_id" in str(h.requests[0].url)
    # The second page repeats every parameter and adds the opaque cursor unchanged.
    assert h.params(1) == [*h.params(0), ("page", "page_MjAyNi0xMS0wMlQwMDowMDowMFo=")]
    assert len(h.requests) == 2


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (["project", "api_key"], ["workspace_id", "api_key_id"]),
        (["model", "service_tier"], ["model", "service_tier", "context_window"]),
        (["user", "batch"], []),  # not offered by the report; batch shows as service_tier
        (
            ["context_window", "api_key", "model", "project", "service_tier"],
            ["model", "workspace_id", "api_key_id", "service_tier", "context_window"],
        ),
    ],
)
def test_group_by_mapping(group_by: list[str], expected: list[str]) -> None:
    h = Harness(
        lambda r: httpx.Response(200, json={"data": [], "has_more": False}), group_by=group_by
    )
    h.source.fetch(h.endpoint("messages"), NOV1, NOV2)
    assert h.requests[0].url.params.get_list("group_by[]") == expected


def test_hourly_buckets_use_the_hourly_limit() -> None:
    h = Harness(
        lambda r: httpx.Response(200, json={"data": [], "has_more": False}), bucket_width=HOUR
    )
    h.source.fetch(h.endpoint("messages"), NOV1 + 5 * HOUR, NOV1 + 7 * HOUR + 1)
    assert h.params(0)[:4] == [
        ("starting_at", "2026-11-01T05:00:00Z"),
        ("ending_at", "2026-11-01T08:00:00Z"),
        ("bucket_width", "1h"),
        ("limit", "168"),
    ]


def test_messages_rows_token_types_tools_nulls_and_new_models() -> None:
    h = Harness(paged("messages_page1.json", "messages_page2.json"))
    buckets = h.source.fetch(h.endpoint("messages"), NOV1, NOV3 + 45296)
    assert [(b.endpoint, b.start, b.end) for b in buckets] == [
        ("messages", NOV1, NOV2),
        ("messages", NOV2, NOV3),
        ("messages", NOV3, NOV4),
    ]
    day1 = by_dims(buckets[0])
    # Default workspace (null) and Console key (null) map to "" (absent), like every null.
    opus = dims(model="claude-opus-4-6", context_window="0-200k")
    assert day1[("completions", opus)].measures == {
        "tokens.input": 1190021,
        "tokens.cache_write_5m": 40960,
        "tokens.cache_write_1h": 200000,
        "tokens.cache_read": 8120003,
        "tokens.output": 390442,
    }
    # Tool calls ride on their own rows so the tool label never splits tokens.
    assert day1[("completions", dims(**dict(opus), tool="web_search"))].measures == {
        "tool_calls": 7
    }
    assert day1[("completions", dims(**dict(opus), tool="web_fetch"))].measures == {"tool_calls": 2}
    # A model nobody has heard of, an unknown tier, absent cache_creation, a count > 2^53.
    nova = dims(
        model="claude-nova-9-20270101", project="wrkspc_01testworkspace", context_window="200k-1M"
    )
    assert day1[("completions", nova)].measures == {
        "tokens.input": 5,
        "tokens.cache_write_5m": 0,
        "tokens.cache_write_1h": 0,
        "tokens.cache_read": 0,
        "tokens.output": 9007199254740993,
    }
    assert len(day1) == 4  # no zero web_search row for nova; the bad rows are skipped
    # Anthropic reports no request count: none is invented.
    assert all("requests" not in r.measures for b in buckets for r in b.rows)
    # api_key and service_tier were not grouped, so they are not dims.
    assert all(
        k in {"model", "project", "context_window", "tool"}
        for b in buckets
        for r in b.rows
        for k, _ in r.dims
    )

    # The bucket split over two pages (empty on page 1, rows on page 2) is the union.
    day2 = by_dims(buckets[1])
    assert day2[("completions", opus)].measures["tokens.cache_read"] == 300
    assert day2[("completions", dims(**dict(opus), tool="web_search"))].measures == {
        "tool_calls": 1
    }
    assert len(day2) == 2  # code_execution_seconds is not a *_requests count: ignored
    assert len(buckets[2].rows) == 1

    # "lots" of output tokens and a non-object result: skipped and counted, page kept.
    assert h.source.payload_errors["messages"] == 2


def test_messages_rows_with_equal_dims_are_summed_and_out_of_range_buckets_dropped() -> None:
    result = {
        "uncached_input_tokens": 10,
        "output_tokens": 1,
        "model": "claude-opus-4-6",
        "workspace_id": None,
        "context_window": "0-200k",
        "server_tool_use": {"web_search_requests": 2},
    }
    page = {
        "data": [
            {"starting_at": "2026-10-31T00:00:00Z", "results": [result]},
            # The same group twice (the provider split it on a field we do not expose).
            {
                "starting_at": "2026-11-01T00:00:00Z",
                "results": [result, {**result, "inference_geo": "us"}],
            },
            {"starting_at": "not a time", "results": []},
        ],
        "has_more": False,
        "next_page": None,
    }
    h = Harness(lambda r: httpx.Response(200, json=page))
    buckets = h.source.fetch(h.endpoint("messages"), NOV1, NOV2)
    assert [b.start for b in buckets] == [NOV1]
    rows = by_dims(buckets[0])
    key = dims(model="claude-opus-4-6", context_window="0-200k")
    assert rows[("completions", key)].measures["tokens.input"] == 20
    assert rows[("completions", key)].measures["tokens.output"] == 2
    assert rows[("completions", dims(**dict(key), tool="web_search"))].measures == {"tool_calls": 4}
    assert h.source.payload_errors["messages"] == 1  # the unparseable bucket


def test_a_bucket_twice_on_one_page_is_counted_once_and_the_repeat_counted() -> None:
    """A bucket may continue on the next page (its results add up), but the same start twice
    on one page is a repeat: summing it doubled a closed bucket for good."""
    result = {"uncached_input_tokens": 10, "output_tokens": 1, "model": "claude-opus-4-6"}
    bucket = {"starting_at": "2026-11-01T00:00:00Z", "results": [result]}
    page = {"data": [bucket, {**bucket, "x_extra": 1}], "has_more": False, "next_page": None}
    h = Harness(lambda r: httpx.Response(200, json=page))
    [day] = h.source.fetch(h.endpoint("messages"), NOV1, NOV2)
    [row] = day.rows
    assert row.measures["tokens.input"] == 10 and row.measures["tokens.output"] == 1
    assert h.source.payload_errors["messages"] == 1


def test_an_empty_bucket_is_returned_so_it_replaces_old_rows() -> None:
    page = {"data": [{"starting_at": "2026-11-01T00:00:00Z", "results": []}], "has_more": False}
    h = Harness(lambda r: httpx.Response(200, json=page))
    assert h.source.fetch(h.endpoint("messages"), NOV1, NOV2) == [
        Bucket("messages", NOV1, NOV2, [])
    ]


# --- cost report -----------------------------------------------------------------------------


def test_costs_params_exact() -> None:
    h = Harness(lambda r: httpx.Response(200, json=load("costs_page.json")), bucket_width=HOUR)
    h.source.fetch(h.endpoint("costs"), NOV1, NOV3)
    assert h.requests[0].url.path == COSTS_PATH
    assert h.params(0) == [
        ("starting_at", "2026-11-01T00:00:00Z"),
        ("ending_at", "2026-11-03T00:00:00Z"),
        ("bucket_width", "1d"),
        ("limit", "31"),
        ("group_by[]", "workspace_id"),
        ("group_by[]", "description"),
    ]


def test_costs_cents_strings_to_exact_usd_and_equal_dims_summed() -> None:
    h = Harness(lambda r: httpx.Response(200, json=load("costs_page.json")))
    buckets = h.source.fetch(h.endpoint("costs"), NOV1, NOV3)
    assert [(b.start, b.end) for b in buckets] == [(NOV1, NOV2), (NOV2, NOV3)]
    day1 = by_dims(buckets[0])
    opus_out = dims(
        project="wrkspc_01testworkspace",
        line_item="Claude Opus 4.6 Usage - Output Tokens",
        model="claude-opus-4-6",
        service_tier="standard",
        context_window="0-200k",
        currency="usd",
        token_type="output",  # the cost report's output_tokens, in our token types
    )
    # "2010.50000" + "0.12345678901234567890" cents (two inference geos, one group), exactly.
    assert day1[("costs", opus_out)].measures == {"cost": Decimal("20.1062345678901234567890")}
    web = dims(line_item="Web Search Usage", currency="usd")  # default workspace -> no project
    assert day1[("costs", web)].measures == {"cost": Decimal("10.00")}
    nova = next(r for r in buckets[0].rows if r.dim("model") == "claude-nova-9-20270101")
    # 25 significant digits: Decimal(x) / 100 would still be exact here, but only by luck.
    assert nova.measures["cost"] == Decimal("987654321098765432.1012345")
    assert nova.dim("project") == "wrkspc_02testworkspace"
    assert all(isinstance(r.measures["cost"], Decimal) for r in buckets[0].rows)
    assert len(day1) == 3
    assert h.source.payload_errors["costs"] == 2  # null amount, "NaN" amount
    # Today's cost bucket is empty for a while: returned empty, not skipped.
    assert buckets[1].rows == []


@pytest.mark.parametrize(
    ("amount", "usd"),
    [
        ("1", "0.01"),
        ("123.45", "1.2345"),
        ("0.00001", "0.0000001"),
        ("7.12345678901234567890", "0.0712345678901234567890"),
        ("123456789012345678901234567890.5", "1234567890123456789012345678.905"),
        ("-250.5", "-2.505"),  # a credit
        ("1e3", "10"),
    ],
)
def test_cost_amounts_are_exact(amount: str, usd: str) -> None:
    page = {
        "data": [
            {
                "starting_at": "2026-11-01T00:00:00Z",
                "results": [{"amount": amount, "currency": "USD", "description": "x"}],
            }
        ],
        "has_more": False,
    }
    h = Harness(lambda r: httpx.Response(200, json=page))
    (bucket,) = h.source.fetch(h.endpoint("costs"), NOV1, NOV2)
    cost = bucket.rows[0].measures["cost"]
    assert isinstance(cost, Decimal)
    assert cost == Decimal(usd)  # Decimal equality is exact: no rounding slipped in


# --- errors and retries ----------------------------------------------------------------------


def test_529_overloaded_is_retried_then_succeeds() -> None:
    replies = [
        httpx.Response(529, json=load("error_overloaded.json")),
        httpx.Response(200, json=load("costs_page.json")),
    ]
    h = Harness(lambda r: replies.pop(0))
    buckets = h.source.fetch(h.endpoint("costs"), NOV1, NOV3)
    assert len(h.requests) == 2
    assert len(h.sleeps) == 1 and 0 < h.sleeps[0] <= 0.01
    assert h.params(1) == h.params(0)
    assert len(buckets[0].rows) == 3


def test_persistent_529_fails_the_whole_window() -> None:
    h = Harness(lambda r: httpx.Response(529, json=load("error_overloaded.json")))
    with pytest.raises(SourceError) as err:
        h.source.fetch(h.endpoint("messages"), NOV1, NOV2)
    assert err.value.reason == "server_error"
    assert "Overloaded" in str(err.value)
    assert len(h.requests) == 3


def test_a_failing_second_page_fails_the_fetch_no_partial_result() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page"):
            return httpx.Response(
                400,
                json={
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "bad page"},
                },
            )
        return httpx.Response(200, json=load("messages_page1.json"))

    h = Harness(handler)
    with pytest.raises(SourceError) as err:
        h.source.fetch(h.endpoint("messages"), NOV1, NOV3)
    assert err.value.reason == "client_error"


def test_bad_key_is_auth_and_the_key_is_never_echoed() -> None:
    h = Harness(lambda r: httpx.Response(401, json=load("error_invalid_key.json")))
    with pytest.raises(SourceError) as err:
        h.source.fetch(h.endpoint("costs"), NOV1, NOV2)
    assert err.value.reason == AUTH
    assert "invalid x-api-key" in str(err.value)
    assert KEY not in str(err.value)
    assert len(h.requests) == 1  # a bad key stays bad: no retry


# --- Claude Code -----------------------------------------------------------------------------


def cc_handler(request: httpx.Request) -> httpx.Response:
    assert request.url.path == CLAUDE_CODE_PATH
    if request.url.params["starting_at"] != "2026-11-01":
        return httpx.Response(200, json={"data": [], "has_more": False, "next_page": None})
    page = request.url.params.get("page")
    return httpx.Response(
        200, json=load("claude_code_page2.json" if page else "claude_code_page1.json")
    )


def test_claude_code_is_off_by_default() -> None:
    h = Harness(cc_handler)
    assert "claude_code" not in [ep.name for ep in h.source.endpoints()]
    assert "claude_code" not in h.source.payload_errors


def test_claude_code_one_request_per_day_and_paged() -> None:
    h = Harness(cc_handler, options={"claude_code": True})
    buckets = h.source.fetch(h.endpoint("claude_code"), NOV1, NOV2 + 3600)
    assert [(b.endpoint, b.start, b.end) for b in buckets] == [
        ("claude_code", NOV1, NOV2),
        ("claude_code", NOV2, NOV3),
    ]
    assert [r.url.params.multi_items() for r in h.requests] == [
        [("starting_at", "2026-11-01"), ("limit", "1000")],
        [
            ("starting_at", "2026-11-01"),
            ("limit", "1000"),
            ("page", "page_Y2xhdWRlX2NvZGVfdGVzdF9jdXJzb3I="),
        ],
        [("starting_at", "2026-11-02"), ("limit", "1000")],
    ]
    assert buckets[1].rows == []


def test_claude_code_rows_without_emails_by_default() -> None:
    h = Harness(cc_handler, options={"claude_code": True})
    (day1, _) = h.source.fetch(h.endpoint("claude_code"), NOV1, NOV3)
    assert not any("@" in v for r in day1.rows for _, v in r.dims)
    rows = by_dims(day1)
    # The two records of the same person (local and remote) are summed per model.
    sonnet = rows[("claude_code", dims(user="user", model="claude-sonnet-4-5"))].measures
    assert sonnet == {
        "tokens.input": 45230 + 1000,
        "tokens.output": 12450 + 100,
        "tokens.cache_read": 8790,
        "tokens.cache_write": 2340,
        CC_ESTIMATED_COST: Decimal("1.86") + Decimal("0.00375"),
    }
    haiku = rows[("claude_code", dims(user="user", model="claude-haiku-4-5"))].measures
    assert haiku[CC_ESTIMATED_COST] == Decimal("0.425")  # a JSON number in cents
    assert rows[("claude_code", dims(user="ci-pipeline"))].measures[CC_COMMITS] == 3
    bot = rows[("claude_code", dims(user="ci-pipeline", model="claude-sonnet-4-5"))].measures
    assert bot[CC_ESTIMATED_COST] == Decimal("0.12")
    # An actor type from the future is named by its kind, nulls in core metrics read as 0.
    assert rows[("claude_code", dims(user="service_account"))].measures["sessions"] == 1
    assert h.source.payload_errors["claude_code"] == 1  # model_breakdown "not a list"


def test_claude_code_user_row_sums_only_readable_records() -> None:
    h = Harness(cc_handler, options={"claude_code": True})
    (day1, _) = h.source.fetch(h.endpoint("claude_code"), NOV1, NOV3)
    user = by_dims(day1)[("claude_code", dims(user="user"))].measures
    # dev.two's record had an unreadable model_breakdown: the whole record is skipped, so
    # its sessions are not half-counted.
    assert user == {
        "sessions": 16,
        CC_LINES_ADDED: 352,
        CC_LINES_REMOVED: 128,
        CC_COMMITS: 8,
        CC_PULL_REQUESTS: 2,
    }


def test_claude_code_emails_only_when_enabled() -> None:
    h = Harness(cc_handler, options={"claude_code": True, "claude_code_actor_emails": True})
    (day1, _) = h.source.fetch(h.endpoint("claude_code"), NOV1, NOV3)
    users = {r.dim("user") for r in day1.rows}
    assert users == {"dev.one@example.com", "ci-pipeline", "service_account"}
