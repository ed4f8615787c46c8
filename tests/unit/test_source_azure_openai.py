"""Azure OpenAI adapter: Monitor metrics and Cost Management answers parsed from fixtures.

The fixtures (tests/fixtures/azure) follow provider-apis.md section 4: dimension names
lower-cased, values as floats, points without `total`, a series without `modelname`, a bad
point; cost pages with CostUSD and a billing currency, a nextLink, a bad row, a day outside
the window. Requests go through a real ApiClient on a mock transport; the token comes from a
stand-in credential (the real azure-identity is driven in tests/integration).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import httpx2 as httpx
import pytest

from exporter.rows import Row
from exporter.schema import AccountSettings
from exporter.sources import DAY, HOUR, adapters
from exporter.sources._http import ApiClient, RetryPolicy, SourceError
from exporter.sources.azure_openai import (
    COSTS,
    USAGE,
    AzureOpenAISource,
    meter_dims,
    model_candidates,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
T10 = int(dt.datetime(2026, 11, 23, 10, tzinfo=dt.UTC).timestamp())
D22 = int(dt.datetime(2026, 11, 22, tzinfo=dt.UTC).timestamp())
OPTIONS = {"subscription_id": "sub-fixture", "resource_group": "rg-fixture", "account_name": "oai"}
RESOURCE = (
    "/subscriptions/sub-fixture/resourceGroups/rg-fixture/providers/"
    "Microsoft.CognitiveServices/accounts/oai"
)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Token(NamedTuple):
    token: str
    expires_on: int


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str) -> Token:
        self.scopes += scopes
        return Token("fixture-token", 0)


Handler = Callable[[httpx.Request], httpx.Response]


def source(
    handler: Handler, width: int = HOUR, group_by: tuple[str, ...] = ("model",), **options: Any
) -> AzureOpenAISource:
    client = ApiClient(
        "https://management.azure.com",
        {},
        retry=RetryPolicy(attempts=1),
        transport=httpx.MockTransport(handler),
    )
    acc = AccountSettings(account="prod", options={**OPTIONS, **options})
    src = AzureOpenAISource(acc, client, group_by=list(group_by), bucket_width=width)
    src.credential = FakeCredential()
    return src


def metrics_handler(seen: list[httpx.Request]) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["authorization"] == "Bearer fixture-token"
        names = request.url.params["metricnames"]
        body = {
            "ProcessedPromptTokens,GeneratedTokens": "metrics_tokens.json",
            "AudioPromptTokens,AudioCompletionTokens": "metrics_audio.json",
            "AzureOpenAIRequests": "metrics_requests.json",
        }[names]
        return httpx.Response(200, json=fixture(body))

    return answer


def by_model(rows: list[Row]) -> dict[str, dict[str, Any]]:
    return {r.dim("model"): {"op": r.operation, **r.measures} for r in rows}


def test_metrics_become_hourly_rows_per_model_with_audio_carved_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[httpx.Request] = []
    src = source(metrics_handler(seen))
    (usage,) = [e for e in src.endpoints() if e.name == USAGE]
    with caplog.at_level(logging.WARNING):
        buckets = src.fetch(usage, T10, T10 + 3 * HOUR)
    assert [(b.start, b.end) for b in buckets] == [
        (T10 + i * HOUR, T10 + (i + 1) * HOUR) for i in range(3)
    ]
    first, second, third = (by_model(b.rows) for b in buckets)
    # Two deployments of gpt-4o are one model; a bad point ("lots") is skipped and counted.
    # The 429s are requests too, and counted apart as the callers' failures.
    assert first["gpt-4o"] == {
        "op": "completions",
        "tokens.input": 183000,
        "tokens.output": 5000,
        "requests": 43,
        "failed_requests.throttled": 3,
    }
    # The audio metrics are part of the prompt/generated ones: carved out, so types partition.
    assert first["gpt-realtime"] == {
        "op": "completions",
        "tokens.input": 300,
        "tokens.output": 100,
        "tokens.input_audio": 1200,
        "tokens.output_audio": 800,
        "requests": 0,
    }
    # A point without `total` is no data; the 500 still counts as a request.
    assert second == {
        "gpt-4o": {
            "op": "completions",
            "tokens.input": 0,
            "tokens.output": 0,
            "requests": 1,
            "failed_requests.server_error": 1,
        }
    }
    # A series without modelname whose deployment made no request is named by it.
    assert third["legacy"]["tokens.input"] == 10
    assert third["gpt-4o"] == {
        "op": "completions",
        "tokens.input": 1000,
        "tokens.output": 7,
        "requests": 2,
    }
    assert src.payload_errors == {USAGE: 1, COSTS: 0}
    assert "3 of 46 requests" in caplog.text and "1 failed (5xx)" in caplog.text

    # The requests: one per metric group, split by deployment and model (and status); the
    # requests metric first, since it maps deployments to models (chat-prod's token series
    # has no modelname, as provider-apis.md 4.1 lists the token metrics' dimensions).
    assert len(seen) == 3
    params = seen[1].url.params
    assert seen[1].url.path == RESOURCE + "/providers/Microsoft.Insights/metrics"
    assert params["ValidateDimensions"] == "false"
    assert params["api-version"] == "2023-10-01" and params["aggregation"] == "Total"
    assert params["interval"] == "PT1H"
    assert params["timespan"] == "2026-11-23T10:00:00Z/2026-11-23T13:00:00Z"
    assert params["$filter"] == "ModelDeploymentName eq '*' and ModelName eq '*'"
    assert seen[0].url.params["$filter"].endswith(" and StatusCode eq '*'")
    assert int(params["top"]) > 10  # Azure's default of 10 series would drop deployments
    assert src.credential.scopes == ["https://management.azure.com/.default"] * 3  # type: ignore[attr-defined]


def test_daily_buckets_sum_the_hours_and_ungrouped_rows_have_no_model() -> None:
    src = source(metrics_handler([]), width=DAY, group_by=())
    (usage,) = [e for e in src.endpoints() if e.name == USAGE]
    day = T10 - T10 % DAY
    (bucket,) = src.fetch(usage, day, day + DAY)
    ops = {(r.operation, r.dims): r.measures for r in bucket.rows}
    (measures,) = ops.values()
    assert measures["tokens.input"] == 183000 + 300 + 10 + 1000
    assert measures["requests"] == 46


def test_metric_and_dimension_names_are_options() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"value": []})

    src = source(
        answer,
        metrics={"prompt_tokens": "PromptTokensV2", "audio_prompt_tokens": None,
                 "audio_completion_tokens": "", "requests": None},
        model_dimension="ModelFamily",
        costs=False,
    )  # fmt: skip
    assert [e.name for e in src.endpoints()] == [USAGE]
    src.fetch(src.endpoints()[0], T10, T10 + HOUR)
    (req,) = seen
    assert req.url.params["metricnames"] == "PromptTokensV2,GeneratedTokens"
    assert "ModelFamily eq '*'" in req.url.params["$filter"]


def cost_handler(seen: list[httpx.Request]) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        page = "cost_page2.json" if "$skiptoken" in request.url.params else "cost_page1.json"
        return httpx.Response(200, json=fixture(page))

    return answer


def test_cost_query_pages_become_daily_rows_by_meter() -> None:
    seen: list[httpx.Request] = []
    src = source(cost_handler(seen))
    (costs,) = [e for e in src.endpoints() if e.name == COSTS]
    assert costs.width == DAY and costs.min_interval == 6 * HOUR and costs.horizon == 5 * DAY
    buckets = src.fetch(costs, D22, D22 + 2 * DAY)
    assert [b.start for b in buckets] == [D22, D22 + DAY]
    day1 = {r.dim("line_item"): r for r in buckets[0].rows}
    day2 = {r.dim("line_item"): r for r in buckets[1].rows}
    inp = day1["gpt-4o 1120 Input Global Tokens"]
    assert inp.measures == {"cost": Decimal("12.25")}  # CostUSD, not the EUR Cost
    assert (inp.dim("model"), inp.dim("token_type"), inp.dim("currency")) == (
        "gpt-4o",
        "input",
        "usd",
    )
    assert day1["gpt-4o 1120 Cached Input Global Tokens"].dim("token_type") == "cache_read"
    # The same meter on two pages is one row; the bad row is skipped and counted; a meter
    # that names no model keeps only its line item; the day outside the window is dropped.
    assert day2["gpt-4o 1120 Output Global Tokens"].measures == {"cost": Decimal("5.7")}
    unit = day2["Provisioned Managed Global Unit"]
    assert unit.dim("model") == "" and unit.measures == {"cost": Decimal("0.8")}
    assert src.payload_errors[COSTS] == 1

    # The query: resource group scope filtered to the account, daily, by meter; the nextLink
    # is followed under the base URL with the same body.
    assert len(seen) == 2
    first, second = seen
    assert first.method == "POST" and first.url.path == (
        "/subscriptions/sub-fixture/resourceGroups/rg-fixture/providers/"
        "Microsoft.CostManagement/query"
    )
    body = json.loads(first.content)
    assert body["type"] == "ActualCost" and body["timeframe"] == "Custom"
    assert body["timePeriod"] == {"from": "2026-11-22T00:00:00Z", "to": "2026-11-23T23:59:59Z"}
    assert body["dataset"]["granularity"] == "Daily"
    assert [g["name"] for g in body["dataset"]["grouping"]] == ["Meter", "MeterSubCategory"]
    assert body["dataset"]["filter"]["dimensions"]["values"] == [RESOURCE]
    assert second.url.params["$skiptoken"] == "AQAAAA=="
    assert json.loads(second.content) == body


def test_without_a_usd_column_costs_keep_the_billing_currency() -> None:
    src = source(cost_handler([]), usd_column=None)
    buckets = src.fetch(src.endpoints()[1], D22, D22 + DAY)
    (inp,) = [r for r in buckets[0].rows if r.dim("token_type") == "input"]
    assert inp.measures == {"cost": Decimal("11.5")} and inp.dim("currency") == "eur"


def test_no_content_is_an_empty_window_not_a_failure() -> None:
    src = source(lambda request: httpx.Response(204))
    buckets = src.fetch(src.endpoints()[1], D22, D22 + 3 * DAY)
    assert [b.rows for b in buckets] == [[], [], []]


@pytest.mark.parametrize(
    "link",
    [
        "https://elsewhere.example/subscriptions/x/query?$skiptoken=1",  # the token stays home
        "same",  # a nextLink that repeats would loop
    ],
)
def test_a_next_link_that_leaves_the_base_url_or_repeats_is_refused(link: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        page = fixture("cost_page1.json")
        if link != "same":
            page["properties"]["nextLink"] = link
        return httpx.Response(200, json=page)

    src = source(answer)
    with pytest.raises(SourceError) as err:
        src.fetch(src.endpoints()[1], D22, D22 + DAY)
    assert err.value.reason == "decode"


def test_an_unreadable_answer_is_a_decode_failure() -> None:
    src = source(lambda request: httpx.Response(200, json={"value": "nope"}))
    with pytest.raises(SourceError) as err:
        src.fetch(src.endpoints()[0], T10, T10 + HOUR)
    assert err.value.reason == "decode"


@pytest.mark.parametrize(
    ("meter", "expected"),
    [
        ("gpt-4o-mini-0718-Inp-glbl Tokens", ("gpt-4o-mini", "input")),
        ("gpt 35 turbo Outp regnl 1K Tokens", ("gpt-35-turbo", "output")),
        ("o4-mini 0416 cchd Inp glbl Tokens", ("o4-mini", "cache_read")),
        ("gpt-realtime 0828 Audio Output Global Tokens", ("gpt-realtime", "output_audio")),
        ("GPT-4.1-mini 0414 Batch Output Global 1M Tokens", ("gpt-4.1-mini", "output")),
        ("acme-internal-1 1 Input Global Tokens", None),
        ("Provisioned Managed Global Unit", None),
    ],
)
def test_meters_name_a_model_and_token_type_where_they_can(
    meter: str, expected: tuple[str, str] | None
) -> None:
    dims = meter_dims(meter)
    assert (dims["model"], dims["token_type"]) == expected if expected else dims == {}


def test_price_lookup_uses_genai_prices_azure_provider_and_azure_spellings() -> None:
    pricing = adapters()["azure_openai"].pricing
    assert pricing.price_id == "azure"
    assert model_candidates("gpt-35-turbo") == ("gpt-3.5-turbo",)
    assert model_candidates("gpt-4o-2024-11-20") == ("gpt-4o",)
    assert model_candidates("gpt-4o") == ()
    import genai_prices

    snapshot = genai_prices.data_snapshot.get_snapshot()
    provider, _ = snapshot.find_provider_model("gpt-4o-mini", None, pricing.price_id, None)
    assert provider.id == "azure"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"account_name": "a/b"}, "options.account_name"),
        ({"metrics": {"tokens": "X"}}, "options.metrics.tokens: unknown metric key"),
        ({"authority": "http://login.example"}, "must be an https:// URL"),
        ({"tenant_id": "t"}, "tenant_id and client_id go together"),
        ({"costs_interval": "10s"}, "options.costs_interval"),
        ({"bogus": 1}, "options.bogus: unknown option"),
    ],
)
def test_bad_options_are_reported_with_their_path(options: dict[str, Any], problem: str) -> None:
    client = ApiClient("http://unused.test/", {})
    acc = AccountSettings(account="prod", options={**OPTIONS, **options})
    with pytest.raises(ValueError) as err:
        AzureOpenAISource(acc, client, group_by=["model"], bucket_width=HOUR)
    assert problem in str(err.value)


def test_a_missing_azure_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # import fails as if absent
    acc = AccountSettings(account="prod", options=OPTIONS)
    with pytest.raises(ValueError) as err:
        AzureOpenAISource(acc, ApiClient("http://unused.test/", {}), group_by=[], bucket_width=HOUR)
    assert str(err.value) == (
        "options: the azure-identity package is not installed: "
        "pip install 'llm-cost-exporter[azure]'"
    )
