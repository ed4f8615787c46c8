"""Vertex AI adapter: Monitoring and BigQuery answers parsed from fixtures, the requests it
sends, SKU -> model, and pricing names (no network, no google-auth token request)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx2 as httpx
import pytest

from exporter.pricing import PriceBook
from exporter.settings import AccountSettings
from exporter.sources import DAY, HOUR, Endpoint, pricing_traits
from exporter.sources._http import ApiClient, RetryPolicy, SourceError
from exporter.sources.vertex_ai import (
    COSTS,
    USAGE,
    VertexSource,
    base_model,
    model_candidates,
    sku_model,
    sku_token_type,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vertex_ai"
S = 1793491200  # 2026-11-01T00:00:00Z
PROJECT = "my-vertex-prod"
TABLE = "billing-admin.billing.gcp_billing_export_v1_000000_000000_000000"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Creds:
    """Stands for google-auth credentials that already hold a token."""

    def __init__(self) -> None:
        self.token: str | None = "test-access-token"

    @property
    def valid(self) -> bool:
        return self.token is not None

    def refresh(self, request: Any) -> None:
        self.token = "refreshed-token"


Answer = Callable[[httpx.Request], httpx.Response]


def make(answer: Answer, group_by: tuple[str, ...] = ("model",), **options: Any) -> VertexSource:
    account = AccountSettings(
        account="prod",
        options={"project": PROJECT, "billing_table": TABLE, **options},
    )
    client = ApiClient(
        "http://unused.test/",
        {},
        retry=RetryPolicy(attempts=1),
        transport=httpx.MockTransport(answer),
    )
    src = VertexSource(account, client, group_by=group_by, bucket_width=HOUR)
    src._credentials = Creds()
    return src


def test_monitoring_series_become_hourly_rows_by_model() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        query = dict(parse_qsl(request.url.query.decode()))
        name = "token_count" if "token_count" in query["filter"] else "invocations"
        return httpx.Response(200, json=load(f"timeseries_{name}.json"))

    src = make(answer, locations=["us-central1", "global"])
    buckets = src.fetch(Endpoint(USAGE, HOUR, 2 * DAY), S, S + 2 * HOUR - 60)
    assert [(b.start, b.end) for b in buckets] == [(S, S + HOUR), (S + HOUR, S + 2 * HOUR)]
    first = {r.dim("model"): dict(r.measures) for r in buckets[0].rows}
    assert first == {
        "gemini-2.0-flash": {"tokens.input": 1200, "tokens.output": 300, "requests": 12},
        "claude-haiku-4-5": {"tokens.input": 70},
    }
    # Past 2**53 exactly; the negative point and the unknown token type are skipped, counted.
    second = {r.dim("model"): dict(r.measures) for r in buckets[1].rows}
    assert second == {"gemini-2.0-flash": {"tokens.input": 9007199254740993}}
    assert src.payload_errors == {USAGE: 2, COSTS: 0}

    q = dict(parse_qsl(sent[0].url.query.decode()))
    assert sent[0].url.path == f"/v3/projects/{PROJECT}/timeSeries"
    assert str(sent[0].url).startswith("https://monitoring.googleapis.com/")
    assert sent[0].headers["authorization"] == "Bearer test-access-token"
    assert q["filter"] == (
        'metric.type = "aiplatform.googleapis.com/publisher/online_serving/token_count" AND '
        'resource.type = "aiplatform.googleapis.com/PublisherModel" AND '
        'resource.labels.location = one_of("us-central1", "global")'
    )
    assert q["interval.startTime"] == "2026-11-01T00:00:00Z"
    assert q["interval.endTime"] == "2026-11-01T02:00:00Z"
    assert q["aggregation.alignmentPeriod"] == "3600s"
    assert q["aggregation.perSeriesAligner"] == "ALIGN_SUM"
    assert q["aggregation.crossSeriesReducer"] == "REDUCE_SUM"
    groups = [v for k, v in parse_qsl(sent[0].url.query.decode()) if k.endswith("groupByFields")]
    assert groups == ["resource.labels.model_user_id", "metric.labels.type"]


def test_next_page_tokens_are_followed_and_a_repeating_one_fails() -> None:
    pages = {"": {"timeSeries": [], "nextPageToken": "p2"}, "p2": {"timeSeries": []}}
    tokens: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        token = dict(parse_qsl(request.url.query.decode())).get("pageToken", "")
        tokens.append(token)
        return httpx.Response(200, json=pages[token])

    src = make(answer, metrics={"invocation_count": None})
    src.fetch(Endpoint(USAGE, HOUR, DAY), S, S + HOUR)
    assert tokens == ["", "p2"]
    pages["p2"]["nextPageToken"] = "p2"
    with pytest.raises(SourceError) as err:
        src.fetch(Endpoint(USAGE, HOUR, DAY), S, S + HOUR)
    assert err.value.reason == "decode"


def test_billing_query_pending_then_paged() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.method == "POST":
            return httpx.Response(200, json=load("bigquery_pending.json"))
        token = dict(parse_qsl(request.url.query.decode())).get("pageToken")
        return httpx.Response(200, json=load(f"bigquery_results_page{2 if token else 1}.json"))

    src = make(answer)
    buckets = src.fetch(Endpoint(COSTS, DAY, 5 * DAY, 6 * HOUR), S, S + DAY + 5)
    by_day = {
        b.start: {(r.dim("model"), r.dim("line_item"), r.dim("token_type")): r.measures["cost"]
                  for r in b.rows}
        for b in buckets
    }  # fmt: skip
    assert by_day == {
        S: {
            ("gemini-2.0-flash", "Gemini 2.0 Flash Input Tokens", "input"): Decimal("0.123456789"),
            ("gemini-2.0-flash", "Gemini 2.0 Flash Output Tokens", "output"): Decimal("0.4"),
        },
        S + DAY: {
            ("claude-haiku-4-5", "Claude Haiku 4.5 Output Tokens", "output"): Decimal("-0.25"),
            ("", "Vertex AI Search Enterprise Queries", ""): Decimal("2"),
        },
    }
    assert all(r.dim("currency") == "usd" for b in buckets for r in b.rows)
    assert src.payload_errors[COSTS] == 1  # the unreadable cost
    # jobs.query with named parameters, then getQueryResults in the job's location.
    body = json.loads(sent[0].content)
    assert sent[0].url.path == f"/bigquery/v2/projects/{PROJECT}/queries"
    assert f"FROM `{TABLE}`" in body["query"] and "UNNEST(credits)" in body["query"]
    params = {p["name"]: p["parameterValue"] for p in body["queryParameters"]}
    assert params["services"] == {"arrayValues": [{"value": "Vertex AI"}]}
    assert params["project"] == {"value": PROJECT}
    assert params["start"] == {"value": "2026-11-01T00:00:00Z"}
    assert params["end"] == {"value": "2026-11-03T00:00:00Z"}
    assert body["useLegacySql"] is False and body["parameterMode"] == "NAMED"
    follow = [dict(parse_qsl(r.url.query.decode())) for r in sent[1:]]
    assert [r.url.path for r in sent[1:]] == [
        f"/bigquery/v2/projects/{PROJECT}/queries/job_abc123"
    ] * 2
    assert [f.get("pageToken") for f in follow] == [None, "page-2"]
    assert all(f["location"] == "EU" for f in follow)


def test_focus_sql_and_overrides() -> None:
    src = make(
        lambda r: httpx.Response(500),
        billing_format="focus",
        sku_models={"AAAA-1111-0002": "gemini-2.0-flash-001"},
        billing_services=["Vertex AI", "Gemini API"],
    )
    sql = src.billing_sql()
    for column in ("ServiceName", "SubAccountId", "BilledCost", "ChargePeriodStart", "SkuId"):
        assert column in sql
    assert "service.description" not in sql and "credits" not in sql
    assert src.endpoints()[1] == Endpoint(COSTS, DAY, 5 * DAY, 6 * HOUR)


def test_a_401_drops_the_cached_token() -> None:
    answers = [httpx.Response(401, json=load("error_unauthenticated.json"))]
    src = make(lambda r: answers.pop(0), metrics={"invocation_count": None})
    with pytest.raises(SourceError) as err:
        src.fetch(Endpoint(USAGE, HOUR, DAY), S, S + HOUR)
    assert err.value.reason == "auth" and "invalid authentication credentials" in str(err.value)
    assert not src._credentials.valid  # the next request refreshes it


@pytest.mark.parametrize(
    ("description", "model", "token_type"),
    [
        ("Gemini 2.5 Flash Input Tokens", "gemini-2.5-flash", "input"),
        ("Gemini 2.5 Flash Lite Output Tokens", "gemini-2.5-flash-lite", "output"),
        ("Gemini 2.0 Flash Text Input - Predictions", "gemini-2.0-flash", "input"),
        ("Gemini 2.5 Pro Cached Input Tokens", "gemini-2.5-pro", "cache_read"),
        ("Claude Sonnet 4.5 Output Tokens", "claude-sonnet-4-5", "output"),
        ("Llama 3.3 70B Input Tokens", "llama-3.3-70b", "input"),
        ("Gemini 2.5 Flash Image Output", "gemini-2.5-flash", None),
        ("Vertex AI Online Prediction", None, None),
    ],
)
def test_sku_descriptions_name_models(
    description: str, model: str | None, token_type: str | None
) -> None:
    assert sku_model(description) == model
    assert sku_token_type(description) == token_type


def test_model_names_and_prices() -> None:
    assert base_model("claude-sonnet-4-5@20250929") == "claude-sonnet-4-5"
    assert base_model("publishers/google/models/gemini-2.0-flash-001") == "gemini-2.0-flash"
    assert model_candidates("claude-sonnet-4-5@20250929") == ("claude-sonnet-4-5",)
    book = PriceBook(providers=pricing_traits())
    day = dt.date(2026, 11, 10)
    # Gemini and Claude on Vertex are priced from genai-prices' "google" provider, as
    # reported or by their base name; Llama (a MaaS model) is not in it: unpriced, not $0.
    for model in ("gemini-2.5-flash", "claude-sonnet-4-5@20250929", "gemini-2.0-flash-001"):
        assert book.quote("vertex_ai", model, "input", day) is not None, model
    assert book.quote("vertex_ai", "llama-3.3-70b-instruct-maas", "input", day) is None


def test_bad_options_are_refused_offline() -> None:
    with pytest.raises(ValueError, match="bucket_width"):
        VertexSource(
            AccountSettings(account="a", options={"project": PROJECT}),
            ApiClient("http://unused.test/", {}),
            group_by=(),
            bucket_width=300,
        )
    with pytest.raises(ValueError, match="costs_horizon"):
        make(lambda r: httpx.Response(500), costs_horizon="2h")
    with pytest.raises(ValueError, match="billing_format: the table name 'my_view'"):
        make(lambda r: httpx.Response(500), billing_table="p-roject.ds.my_view")
    viewed = make(
        lambda r: httpx.Response(500), billing_table="p-roject.ds.v", billing_format="focus"
    )
    assert viewed.billing_format == "focus"
