"""The provider simulator is faithful to provider-apis.md and exact about its own truth.

One in-process simulator (port 0, frozen clock) serves every test; each test starts from the
state it was built with (`SimulatorServer.reset`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import httpx2 as httpx
import pytest

from exporter.sources._http import (
    DECODE,
    RATE_LIMITED,
    ApiClient,
    RetryPolicy,
    SourceError,
    paginate,
)
from simulator import dataset as ds
from simulator.prices import UNKNOWN_MODEL
from simulator.server import SimulatorServer, main

Params = dict[str, Any]
DAY = 86400
HOUR = 3600
START = dt.date(2026, 10, 1)
START_TS = 1790812800  # 2026-10-01T00:00:00Z
TODAY = 1795392000  # Monday 2026-11-23T00:00:00Z
NOW = TODAY + 12 * HOUR + 17 * 60 + 23  # mid-morning, deliberately not on a boundary
SUNDAY = TODAY - DAY  # its 02:00-04:00 UTC window has no activity at all

OPENAI_KEY = "test-openai-admin-key"
ANTHROPIC_KEY = "test-anthropic-admin-key"
GROQ_KEY = "test-groq-key"

USAGE_ENDPOINTS = {
    "completions": "organization.usage.completions.result",
    "embeddings": "organization.usage.embeddings.result",
    "moderations": "organization.usage.moderations.result",
    "images": "organization.usage.images.result",
    "audio_speeches": "organization.usage.audio_speeches.result",
    "audio_transcriptions": "organization.usage.audio_transcriptions.result",
    "vector_stores": "organization.usage.vector_stores.result",
    "code_interpreter_sessions": "organization.usage.code_interpreter_sessions.result",
    "file_search_calls": "organization.usage.file_searches.result",
    "web_search_calls": "organization.usage.web_searches.result",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server = SimulatorServer(host="127.0.0.1", port=0, seed=1, start=START, now=NOW)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").reset()


@pytest.fixture()
def oai(sim: SimulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    with httpx.Client(base_url=sim.openai_base_url, headers=headers, timeout=10) as c:
        yield c


@pytest.fixture()
def ant(sim: SimulatorServer) -> Iterator[httpx.Client]:
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=sim.anthropic_base_url, headers=headers, timeout=10) as c:
        yield c


@pytest.fixture()
def groq(sim: SimulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {GROQ_KEY}"}
    with httpx.Client(base_url=sim.groq_base_url, headers=headers, timeout=10) as c:
        yield c


@pytest.fixture()
def ctl(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


def pages(client: httpx.Client, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page of a cursor-paged report, as the exporter's loop would fetch them."""
    out = []
    query = dict(params)
    for _ in range(100):
        r = client.get(path, params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        out.append(page)
        if not page["has_more"]:
            assert page["next_page"] is None
            return out
        query = {**params, "page": page["next_page"]}
    raise AssertionError("pagination did not end")


def buckets(client: httpx.Client, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for p in pages(client, path, params) for b in p["data"]]


def summed(results: list[dict[str, Any]], field: str) -> int:
    return sum(r[field] for r in results)


# --- dataset ---------------------------------------------------------------------------------


def test_activity_is_additive_across_bucket_widths() -> None:
    data = ds.Dataset(seed=1, start=START)
    day = TODAY - 3 * DAY
    for stream in data.streams("openai") + data.streams("anthropic") + data.streams("groq"):
        if stream.profile == "level":
            continue
        whole = data.amounts(stream, day, day + DAY)
        hours = [data.amounts(stream, day + h * HOUR, day + (h + 1) * HOUR) for h in range(24)]
        assert whole == {m: sum(h[m] for h in hours) for m in whole}, stream.name
        minutes = [data.amounts(stream, day + 60 * i, day + 60 * (i + 1)) for i in range(1440)]
        assert whole == {m: sum(x[m] for x in minutes) for m in whole}, stream.name
        assert all(isinstance(v, int) for v in whole.values())


def test_activity_depends_only_on_seed_and_time() -> None:
    a, b, other = ds.Dataset(1, START), ds.Dataset(1, START), ds.Dataset(2, START)
    span = (TODAY - 2 * DAY, TODAY)
    assert a.totals("openai", *span) == b.totals("openai", *span)
    assert a.totals("openai", *span) != other.totals("openai", *span)
    assert a.totals("openai", START_TS - 5 * DAY, START_TS) == {"cost": Decimal(0)}


def test_weekdays_are_busier_than_weekends_and_nights() -> None:
    data = ds.Dataset(1, START)
    stream = next(s for s in data.streams("openai") if s.name == "oa-4o-web")
    saturday, monday = TODAY - 2 * DAY, TODAY - 7 * DAY
    noon, night = 12 * HOUR, 3 * HOUR
    monday_noon = data.amounts(stream, monday + noon, monday + noon + HOUR)["requests"]
    assert monday_noon > 2 * data.amounts(stream, monday + night, monday + night + HOUR)["requests"]
    assert (
        monday_noon > 2 * data.amounts(stream, saturday + noon, saturday + noon + HOUR)["requests"]
    )
    for provider in ds.PROVIDERS:
        flows = [s.operation for s in data.streams(provider) if s.profile != "level"]
        quiet = data.totals(provider, SUNDAY + 2 * HOUR, SUNDAY + 4 * HOUR, flows)
        assert quiet == {"cost": Decimal(0)}


def test_model_ids_are_known_to_genai_prices_except_one_per_provider() -> None:
    card = ds.Dataset(1, START).card
    for provider in ds.PROVIDERS:
        unknown = [m for m in ds.models(provider) if not card.known(provider, m)]
        assert unknown == [UNKNOWN_MODEL], provider
        assert len(ds.models(provider)) >= 4


def test_tier_pricing_uses_genai_prices_variants() -> None:
    day = TODAY - 7 * DAY  # after the 2026-10-14 batch price variants start
    standard = ds.Dataset(1, START).truth("openai", day, day + DAY, group=("batch", "model"))
    tiered = ds.Dataset(1, START, tier_pricing=True).truth(
        "openai", day, day + DAY, group=("batch", "model")
    )
    batch = ("true", "gpt-4o-mini")
    assert tiered[batch]["cost"] * 2 == standard[batch]["cost"]
    assert tiered[("false", UNKNOWN_MODEL)] == standard[("false", UNKNOWN_MODEL)]


def test_truth_groups_partition_the_totals() -> None:
    data = ds.Dataset(1, START)
    span = (TODAY - 7 * DAY, NOW)
    totals = data.totals("openai", *span)
    for group in (("model",), ("project", "user"), ("operation",), ("line_item",)):
        parts = data.truth("openai", *span, group=group)
        assert sum((p["cost"] for p in parts.values()), Decimal(0)) == totals["cost"], group
        if group != ("line_item",):
            assert sum(p.get("requests", 0) for p in parts.values()) == totals["requests"]


# --- OpenAI usage ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(USAGE_ENDPOINTS))
def test_openai_usage_envelope_and_result_shape(oai: httpx.Client, name: str) -> None:
    page = oai.get(f"/organization/usage/{name}", params={"start_time": TODAY - 3 * DAY}).json()
    assert set(page) == {"object", "data", "has_more", "next_page"}
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    assert [b["start_time"] for b in page["data"]] == [TODAY - 3 * DAY + i * DAY for i in range(4)]
    assert page["data"][-1]["end_time"] == NOW  # the current bucket ends at the request time
    for bucket in page["data"]:
        assert set(bucket) == {"object", "start_time", "end_time", "results"}
        assert bucket["object"] == "bucket"
        (result,) = bucket["results"]  # ungrouped: one result, every dimension null
        assert result["object"] == USAGE_ENDPOINTS[name]
        dims = {k: v for k, v in result.items() if k != "object" and not isinstance(v, int)}
        assert dims and all(v is None for v in dims.values())
        assert any(isinstance(v, int) and v > 0 for v in result.values())


def test_openai_usage_matches_truth_for_every_operation(oai: httpx.Client) -> None:
    data = ds.Dataset(1, START)
    fields = {
        "embeddings": {"input_tokens": "tokens.input", "num_model_requests": "requests"},
        "images": {"images": "images", "num_model_requests": "requests"},
        "audio_speeches": {"characters": "characters"},
        "audio_transcriptions": {"seconds": "audio_seconds"},
        "code_interpreter_sessions": {"num_sessions": "sessions"},
        "file_search_calls": {"num_requests": "tool_calls"},
        "web_search_calls": {"num_requests": "tool_calls", "num_model_requests": "requests"},
    }
    start = TODAY - 10 * DAY + 1234  # unaligned: the first bucket is clipped
    for name, mapping in fields.items():
        got = [
            r
            for b in buckets(oai, f"/organization/usage/{name}", {"start_time": start})
            for r in b["results"]
        ]
        truth = data.totals("openai", start - start % 60, NOW, operation=name)
        for wire, measure in mapping.items():
            assert summed(got, wire) == truth[measure], (name, wire)
    vs = buckets(
        oai, "/organization/usage/vector_stores", {"start_time": TODAY, "group_by": "project_id"}
    )
    levels = {r["project_id"]: r["usage_bytes"] for r in vs[0]["results"]}
    assert (
        sum(levels.values()) == data.totals("openai", TODAY, NOW, "vector_stores")["storage_bytes"]
    )


def test_openai_completions_token_identities_and_truth(oai: httpx.Client) -> None:
    params: Params = {
        "start_time": TODAY - 5 * DAY,
        "bucket_width": "1d",
        "group_by[]": ["model", "batch"],
    }
    results = [
        r for b in buckets(oai, "/organization/usage/completions", params) for r in b["results"]
    ]
    for r in results:
        cached = (
            r["input_cached_text_tokens"]
            + r["input_cached_audio_tokens"]
            + r["input_cached_image_tokens"]
        )
        uncached = r["input_text_tokens"] + r["input_audio_tokens"] + r["input_image_tokens"]
        assert r["input_cached_tokens"] == cached
        assert r["input_uncached_tokens"] == uncached
        writes = r["input_cache_write_tokens"] + r.get("input_cache_write_12h_tokens", 0)
        assert r["input_tokens"] == cached + writes + uncached
        assert (
            r["output_tokens"]
            == r["output_text_tokens"] + r["output_audio_tokens"] + r["output_image_tokens"]
        )
        assert isinstance(r["batch"], bool)
    assert any(r["input_audio_tokens"] and r["input_cached_image_tokens"] for r in results)
    truth = ds.Dataset(1, START).totals("openai", TODAY - 5 * DAY, NOW, "completions")
    assert summed(results, "input_text_tokens") == truth["tokens.input"]
    assert summed(results, "input_cached_audio_tokens") == truth["tokens.cache_read_audio"]
    assert summed(results, "input_cache_write_tokens") == truth["tokens.cache_write"]
    # the 12 hour field only on rows that have such writes (the others: the older shape)
    with_12h = [r for r in results if "input_cache_write_12h_tokens" in r]
    assert with_12h and len(with_12h) < len(results)
    assert all(r["input_cache_write_12h_tokens"] > 0 for r in with_12h)
    assert summed(with_12h, "input_cache_write_12h_tokens") == truth["tokens.cache_write_12h"]
    assert summed(results, "output_audio_tokens") == truth["tokens.output_audio"]
    assert summed(results, "num_model_requests") == truth["requests"]


def test_openai_optional_fields_can_be_absent(oai: httpx.Client, ctl: httpx.Client) -> None:
    params: Params = {"start_time": TODAY - DAY, "group_by": "model"}
    ctl.post("/_sim/control", json={"openai_fields": "minimal"})
    minimal = oai.get("/organization/usage/completions", params=params).json()
    for r in minimal["data"][0]["results"]:
        assert "input_audio_tokens" not in r and "input_uncached_tokens" not in r
        assert {
            "input_tokens",
            "output_tokens",
            "input_cached_tokens",
            "num_model_requests",
        } <= set(r)
    ctl.post("/_sim/control", json={"openai_fields": "sparse"})
    sparse = oai.get("/organization/usage/completions", params=params).json()["data"][0]["results"]
    by_model = {r["model"]: r for r in sparse}
    assert "output_audio_tokens" not in by_model["gpt-4o-mini"]
    assert by_model["gpt-realtime"]["output_audio_tokens"] > 0


def test_openai_group_by_forms_are_equivalent(oai: httpx.Client) -> None:
    path = "/organization/usage/completions"
    base: Params = {"start_time": TODAY - 2 * DAY}
    forms = [
        [("group_by[]", "model"), ("group_by[]", "project_id")],
        [("group_by", "model"), ("group_by", "project_id")],
        [("group_by", "model,project_id")],
    ]
    bodies = [oai.get(path, params=[*base.items(), *form]).json() for form in forms]
    assert bodies[0] == bodies[1] == bodies[2]
    results = bodies[0]["data"][0]["results"]
    assert {(r["model"], r["project_id"]) for r in results} >= {
        ("gpt-4o", "proj_sim_web"),
        ("gpt-4o", "proj_sim_research"),
        (UNKNOWN_MODEL, "proj_sim_research"),
    }
    assert all(r["user_id"] is None and r["batch"] is None for r in results)


def test_openai_null_dimensions_when_grouped(oai: httpx.Client) -> None:
    params: Params = {"start_time": TODAY - DAY, "group_by": "user_id,api_key_id,service_tier"}
    results = oai.get("/organization/usage/completions", params=params).json()["data"][0]["results"]
    assert any(r["user_id"] is None for r in results)
    assert any(r["api_key_id"] is None for r in results)  # unattributed usage
    assert {r["service_tier"] for r in results} == {"default", "flex", "priority"}


def test_openai_filters(oai: httpx.Client) -> None:
    params: Params = {
        "start_time": TODAY - DAY,
        "group_by": "model,batch",
        "models[]": ["gpt-4o-mini"],
    }
    results = oai.get("/organization/usage/completions", params=params).json()["data"][0]["results"]
    assert {r["model"] for r in results} == {"gpt-4o-mini"} and len(results) == 2
    only_batch = oai.get("/organization/usage/completions", params={**params, "batch": "true"})
    assert [r["batch"] for r in only_batch.json()["data"][0]["results"]] == [True]
    sizes: Params = {"start_time": TODAY - DAY, "group_by": "size,source", "sizes": "1536x1024"}
    (img,) = oai.get("/organization/usage/images", params=sizes).json()["data"][0]["results"]
    assert (img["size"], img["source"]) == ("1536x1024", "image.edit")


@pytest.mark.parametrize(
    ("width", "default", "maximum", "step"),
    [("1d", 7, 31, DAY), ("1h", 24, 168, HOUR), ("1m", 60, 1440, 60)],
)
def test_openai_limit_defaults_and_maxima(
    oai: httpx.Client, width: str, default: int, maximum: int, step: int
) -> None:
    start = NOW - NOW % step - (maximum + 5) * step
    path = "/organization/usage/embeddings"
    params: Params = {"start_time": start, "bucket_width": width}
    first = oai.get(path, params=params).json()
    assert len(first["data"]) == default and first["has_more"] is True
    assert first["data"][1]["start_time"] - first["data"][0]["start_time"] == step
    full = oai.get(path, params={**params, "limit": maximum}).json()
    assert len(full["data"]) == maximum
    bad = oai.get(path, params={**params, "limit": maximum + 1})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "limit"
    assert bad.json()["error"]["type"] == "invalid_request_error"


def test_openai_paging_is_by_bucket_and_reproduces_one_big_page(
    oai: httpx.Client, sim: SimulatorServer
) -> None:
    start = TODAY - 30 * DAY + 7 * HOUR + 30 * 60 + 17
    params: Params = {"start_time": start, "group_by": "model"}
    sim.stats.reset()
    paged = pages(oai, "/organization/usage/completions", params)
    assert [len(p["data"]) for p in paged] == [7, 7, 7, 7, 3]  # 31 buckets, default limit 7
    assert sim.stats.snapshot(0)["by_endpoint"]["openai/completions"] == {"200": 5}
    flat = [b for p in paged for b in p["data"]]
    one = oai.get("/organization/usage/completions", params={**params, "limit": 31}).json()
    assert one["data"] == flat and not one["has_more"]
    assert flat[0]["start_time"] == start - start % 60  # truncated to the minute, not the day
    assert flat[0]["end_time"] == TODAY - 29 * DAY
    assert all(a["end_time"] == b["start_time"] for a, b in itertools.pairwise(flat))
    assert flat[-1]["end_time"] == NOW


def test_openai_empty_buckets_are_listed(oai: httpx.Client) -> None:
    before = oai.get(
        "/organization/usage/completions", params={"start_time": START_TS - 3 * DAY, "limit": 5}
    ).json()["data"]
    assert [b["results"] for b in before[:3]] == [[], [], []]
    assert before[3]["results"]
    quiet = oai.get(
        "/organization/usage/completions",
        params={"start_time": SUNDAY, "bucket_width": "1h", "end_time": SUNDAY + 6 * HOUR},
    ).json()["data"]
    assert [bool(b["results"]) for b in quiet] == [True, True, False, False, True, True]
    assert quiet[-1]["end_time"] == SUNDAY + 6 * HOUR


def test_openai_1d_bucket_is_the_sum_of_its_1h_buckets(oai: httpx.Client) -> None:
    day = TODAY - 4 * DAY
    path, end = "/organization/usage/completions", day + DAY
    daily = oai.get(path, params={"start_time": day, "end_time": end, "group_by": "model"}).json()
    hourly = oai.get(
        path, params={"start_time": day, "end_time": end, "bucket_width": "1h", "group_by": "model"}
    ).json()
    assert len(daily["data"]) == 1 and len(hourly["data"]) == 24
    for field in ("input_tokens", "input_cached_tokens", "output_tokens", "num_model_requests"):
        for model in ds.models("openai"):
            d = sum(r[field] for r in daily["data"][0]["results"] if r["model"] == model)
            h = sum(r[field] for b in hourly["data"] for r in b["results"] if r["model"] == model)
            assert d == h, (field, model)


def test_openai_current_bucket_grows_as_the_clock_advances(
    oai: httpx.Client, ctl: httpx.Client
) -> None:
    params: Params = {"start_time": TODAY}
    before = oai.get("/organization/usage/completions", params=params).json()["data"]
    ctl.post("/_sim/control", json={"advance": 1800})
    after = oai.get("/organization/usage/completions", params=params).json()["data"]
    assert before[0]["end_time"] == NOW and after[0]["end_time"] == NOW + 1800
    grew = after[0]["results"][0]["input_tokens"] - before[0]["results"][0]["input_tokens"]
    truth = ds.Dataset(1, START).totals("openai", NOW, NOW + 1800, "completions")
    assert grew == truth["tokens.input"] + truth["tokens.cache_read"] + truth[
        "tokens.cache_write"
    ] + sum(
        truth[f"tokens.{t}"]
        for t in (
            "input_audio",
            "input_image",
            "cache_read_audio",
            "cache_read_image",
            "cache_write_12h",
        )
    )
    assert grew > 0
    ctl.post("/_sim/control", json={"now": TODAY + DAY + 60})
    rolled = oai.get("/organization/usage/completions", params=params).json()["data"]
    assert [b["end_time"] for b in rolled] == [TODAY + DAY, TODAY + DAY + 60]


def test_openai_bad_parameters(oai: httpx.Client) -> None:
    cases: list[tuple[Params, str]] = [
        ({}, "start_time"),
        ({"start_time": TODAY, "bucket_width": "5m"}, "bucket_width"),
        ({"start_time": TODAY, "group_by": "model,size"}, "group_by"),
        ({"start_time": TODAY, "end_time": TODAY - 1}, "end_time"),
        ({"start_time": TODAY, "page": "page_garbage"}, "page"),
    ]
    for params, param in cases:
        r = oai.get("/organization/usage/completions", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"]["param"] == param
    assert oai.get("/organization/usage/nothing", params={"start_time": TODAY}).status_code == 404


def test_openai_projects_list(oai: httpx.Client) -> None:
    first = oai.get("/organization/projects", params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    rest = oai.get("/organization/projects", params={"after": first["last_id"]}).json()
    names = {p["id"]: p["name"] for p in first["data"] + rest["data"]}
    assert names == ds.OPENAI_PROJECTS


# --- OpenAI costs ----------------------------------------------------------------------------


def _value(result: dict[str, Any]) -> Decimal:
    value = result["amount"]["value"]
    assert isinstance(value, str | Decimal)
    return Decimal(value)


def exact(response: httpx.Response) -> Any:
    """The JSON body with numbers as Decimal, as an exporter must parse money."""
    return json.loads(response.text, parse_float=Decimal)


def test_openai_costs_shape_and_amount_formats(oai: httpx.Client, ctl: httpx.Client) -> None:
    params: Params = {
        "start_time": TODAY - 20 * DAY,
        "group_by": "line_item,project_id",
        "limit": 21,
    }
    r = oai.get("/organization/costs", params=params)
    raw = r.text
    page = json.loads(raw, parse_float=Decimal)
    results = [x for b in page["data"] for x in b["results"]]
    assert {x["object"] for x in results} == {"organization.costs.result"}
    assert {x["amount"]["currency"] for x in results} == {"usd"}
    kinds = {type(x["amount"]["value"]).__name__ for x in results}
    assert kinds == {"str", "Decimal"}  # mixed: numbers and numeric strings
    assert any(
        len(x["amount"]["value"].split(".")[-1]) == 28
        for x in results
        if isinstance(x["amount"]["value"], str)
    )
    assert all(x["api_key_id"] is None for x in results)
    tokens = [x for x in results if x["line_item"] == "gpt-4o, input"]
    assert tokens and all(x["quantity_unit"] == "tokens" for x in tokens)
    ctl.post("/_sim/control", json={"openai_amount_format": "string"})
    strings = oai.get("/organization/costs", params=params).json()
    assert all(isinstance(x["amount"]["value"], str) for b in strings["data"] for x in b["results"])
    bad = oai.get("/organization/costs", params={"start_time": TODAY, "bucket_width": "1h"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket_width"


def test_openai_costs_limits(oai: httpx.Client) -> None:
    params: Params = {"start_time": TODAY - 200 * DAY}
    assert len(oai.get("/organization/costs", params=params).json()["data"]) == 7
    assert (
        len(oai.get("/organization/costs", params={**params, "limit": 180}).json()["data"]) == 180
    )
    assert oai.get("/organization/costs", params={**params, "limit": 181}).status_code == 400


def test_openai_costs_equal_usage_times_genai_prices(oai: httpx.Client, ctl: httpx.Client) -> None:
    """An exporter pricing the usage API with genai-prices reconciles to the reported cost."""
    day = TODAY - 6 * DAY
    span: Params = {"start_time": day, "end_time": day + DAY}
    usage = oai.get("/organization/usage/completions", params={**span, "group_by": "model"}).json()
    costs = exact(oai.get("/organization/costs", params={**span, "group_by": "line_item"}))
    reported: dict[str, Decimal] = {}
    for x in costs["data"][0]["results"]:
        model = x["line_item"].split(", ")[0]
        reported[model] = reported.get(model, Decimal(0)) + _value(x)
    when = dt.datetime.fromtimestamp(day, dt.UTC)
    checked = 0
    for r in usage["data"][0]["results"]:
        if r["model"] == UNKNOWN_MODEL:
            continue
        usage_obj = genai_prices.Usage(
            input_tokens=r["input_tokens"],
            cache_read_tokens=r["input_cached_tokens"],
            cache_write_tokens=r["input_cache_write_tokens"],
            input_audio_tokens=r["input_audio_tokens"] + r["input_cached_audio_tokens"],
            cache_audio_read_tokens=r["input_cached_audio_tokens"],
            input_image_tokens=r["input_image_tokens"] + r["input_cached_image_tokens"],
            cache_image_read_tokens=r["input_cached_image_tokens"],
            output_tokens=r["output_tokens"],
            output_audio_tokens=r["output_audio_tokens"],
            output_image_tokens=r["output_image_tokens"],
        )
        estimate = genai_prices.calc_price(
            usage_obj, r["model"], provider_id="openai", genai_request_timestamp=when
        ).total_price
        assert estimate == reported[r["model"]], r["model"]
        checked += 1
    assert checked >= 4
    assert reported[UNKNOWN_MODEL] > 0  # priced by the simulator's own card
    total = sum((_value(x) for x in costs["data"][0]["results"]), Decimal(0))
    assert total == ds.Dataset(1, START).totals("openai", day, day + DAY)["cost"]


def test_openai_costs_lag_usage(oai: httpx.Client, ctl: httpx.Client, sim: SimulatorServer) -> None:
    lag = sim.settings.cost_lag
    data = ds.Dataset(1, START)

    def today_cost() -> Decimal:
        page = exact(oai.get("/organization/costs", params={"start_time": TODAY}))
        return sum((_value(x) for x in page["data"][0]["results"]), Decimal(0))

    assert today_cost() == data.totals("openai", TODAY, NOW - lag)["cost"]
    ctl.post("/_sim/control", json={"advance": 600})
    assert today_cost() == data.totals("openai", TODAY, NOW + 600 - lag)["cost"]
    ctl.post("/_sim/control", json={"now": TODAY + lag - 60})
    page = oai.get("/organization/costs", params={"start_time": TODAY - DAY}).json()
    assert page["data"][0]["results"] and page["data"][1]["results"] == []
    ctl.post("/_sim/control", json={"now": NOW, "cost_lag": 0})
    assert today_cost() == data.totals("openai", TODAY, NOW)["cost"]


# --- auth and faults -------------------------------------------------------------------------


def test_openai_keys(sim: SimulatorServer) -> None:
    path = "/v1/organization/usage/completions"
    params: Params = {"start_time": TODAY}
    wrong = httpx.get(sim.url + path, params=params, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert "nope" not in wrong.text
    missing = httpx.get(sim.url + path, params=params)
    assert missing.status_code == 401
    project = httpx.get(
        sim.url + path, params=params, headers={"Authorization": "Bearer test-openai-project-key"}
    )
    assert project.status_code == 403 and "api.usage.read" in project.json()["error"]["message"]


def test_fault_429_with_retry_after_then_recovers(oai: httpx.Client, ctl: httpx.Client) -> None:
    fault = {
        "provider": "openai",
        "endpoint": "completions",
        "mode": "429",
        "count": 2,
        "retry_after": 3,
    }
    assert ctl.post("/_sim/faults", json=fault).status_code == 200
    params: Params = {"start_time": TODAY}
    for _ in range(2):
        r = oai.get("/organization/usage/completions", params=params)
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert oai.get("/organization/usage/embeddings", params=params).status_code == 200
    assert oai.get("/organization/usage/completions", params=params).status_code == 200
    stats = ctl.get("/_sim/stats").json()
    assert stats["by_path"]["/v1/organization/usage/completions"] == {"200": 1, "429": 2}


def test_fault_5xx_until_cleared(oai: httpx.Client, ctl: httpx.Client) -> None:
    ctl.post("/_sim/faults", json={"mode": "500", "count": -1, "retry_after": None})
    for _ in range(3):
        r = oai.get("/organization/costs", params={"start_time": TODAY})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "retry-after" not in r.headers
    assert len(ctl.get("/_sim/faults").json()["faults"]) == 1
    assert ctl.post("/_sim/faults", json={"mode": "500", "count": 0}).status_code == 400
    assert ctl.post("/_sim/faults", json={"mode": "teapot"}).status_code == 400
    ctl.delete("/_sim/faults")
    assert oai.get("/organization/costs", params={"start_time": TODAY}).status_code == 200


def test_fault_auth_slow_and_malformed(oai: httpx.Client, ctl: httpx.Client) -> None:
    params: Params = {"start_time": TODAY}
    faults = [
        {"mode": "auth"},
        {"mode": "403"},
        {"mode": "slow", "delay": 0.3},
        {"mode": "malformed"},
    ]
    ctl.post("/_sim/faults", json=faults)
    assert oai.get("/organization/usage/completions", params=params).status_code == 401
    assert oai.get("/organization/usage/completions", params=params).status_code == 403
    began = time.monotonic()
    assert oai.get("/organization/usage/completions", params=params).status_code == 200
    assert time.monotonic() - began >= 0.3
    broken = oai.get("/organization/usage/completions", params=params)
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        json.loads(broken.text)
    assert oai.get("/organization/usage/completions", params=params).json()["object"] == "page"


def test_fault_repeat_cursor_is_caught_by_the_exporter_paginator(sim: SimulatorServer) -> None:
    sim.add_fault("repeat_cursor", provider="openai")
    client = ApiClient(sim.openai_base_url, {"Authorization": f"Bearer {OPENAI_KEY}"})
    params = [("start_time", TODAY - 20 * DAY)]
    with pytest.raises(SourceError) as err:
        paginate(client, "completions", "organization/usage/completions", params)
    assert err.value.reason == DECODE
    assert len(paginate(client, "completions", "organization/usage/completions", params)) == 3
    client.close()


def test_fault_429_is_retried_by_the_exporter_client(sim: SimulatorServer) -> None:
    sleeps: list[float] = []
    client = ApiClient(
        sim.openai_base_url,
        {"Authorization": f"Bearer {OPENAI_KEY}"},
        retry=RetryPolicy(attempts=3),
        sleep=sleeps.append,
    )
    sim.add_fault("429", count=2, retry_after=7)
    page = client.get_json("costs", "organization/costs", [("start_time", TODAY)])
    assert page["object"] == "page" and sleeps == [7.0, 7.0]
    sim.add_fault("429", count=-1)
    with pytest.raises(SourceError) as err:
        client.get_json("costs", "organization/costs", [("start_time", TODAY)])
    assert err.value.reason == RATE_LIMITED
    client.close()


def test_fault_revise_shrinks_closed_days_only(oai: httpx.Client, ctl: httpx.Client) -> None:
    params: Params = {"start_time": TODAY - 2 * DAY, "group_by": "model"}

    def inputs() -> list[int]:
        data = oai.get("/organization/usage/completions", params=params).json()["data"]
        return [summed(b["results"], "input_tokens") for b in data]

    def costs() -> list[Decimal]:
        data = exact(oai.get("/organization/costs", params={"start_time": TODAY - 2 * DAY}))["data"]
        return [sum((_value(x) for x in b["results"]), Decimal(0)) for b in data]

    usage_before, cost_before = inputs(), costs()
    ctl.post("/_sim/faults", json={"mode": "revise", "factor": 0.5})
    usage_after, cost_after = inputs(), costs()
    for before, after in zip(usage_before[:2], usage_after[:2], strict=True):
        assert before // 2 - 1000 <= after <= before // 2 + 1000
    assert usage_after[2] == usage_before[2]  # today is not closed
    assert cost_after[0] < cost_before[0] and cost_after[2] == cost_before[2]
    assert ctl.get("/_sim/control").json()["revisions"] == [[TODAY, "1/2"]]


# --- Anthropic -------------------------------------------------------------------------------


def test_anthropic_messages_envelope_and_truth(ant: httpx.Client) -> None:
    path = "/v1/organizations/usage_report/messages"
    params: Params = {
        "starting_at": "2026-11-13T05:06:07Z",
        "group_by[]": ["model", "workspace_id"],
    }
    data = [b for p in pages(ant, path, params) for b in p["data"]]
    assert data[0]["starting_at"] == "2026-11-13T00:00:00Z"  # snapped to the day
    assert data[-1]["ending_at"] == "2026-11-24T00:00:00Z"
    assert [b["starting_at"][:10] for b in data] == [f"2026-11-{d}" for d in range(13, 24)]
    results = [r for b in data for r in b["results"]]
    first = results[0]
    assert set(first["cache_creation"]) == {
        "ephemeral_1h_input_tokens",
        "ephemeral_5m_input_tokens",
    }
    assert set(first["server_tool_use"]) == {"web_search_requests"}
    assert "speed" not in first  # only with the fast-mode beta header
    assert {r["api_key_id"] for r in results} == {None} and any(
        r["workspace_id"] is None for r in results
    )
    truth = ds.Dataset(1, START).totals("anthropic", 1794528000, NOW, "messages")
    assert summed(results, "uncached_input_tokens") == truth["tokens.input"]
    assert summed(results, "cache_read_input_tokens") == truth["tokens.cache_read"]
    assert (
        sum(r["cache_creation"]["ephemeral_1h_input_tokens"] for r in results)
        == truth["tokens.cache_write_1h"]
    )
    assert sum(r["server_tool_use"]["web_search_requests"] for r in results) == truth["tool_calls"]


def test_anthropic_nulls_limits_and_group_by(ant: httpx.Client) -> None:
    path = "/v1/organizations/usage_report/messages"
    grouped = ant.get(
        path,
        params={
            "starting_at": "2026-11-20T00:00:00Z",
            "group_by[]": ["api_key_id", "service_tier", "inference_geo"],
        },
    ).json()["data"][0]["results"]
    assert any(r["api_key_id"] is None for r in grouped)  # console usage
    assert {r["service_tier"] for r in grouped} == {"standard", "batch"}
    assert "not_available" in {r["inference_geo"] for r in grouped}
    for width, default, maximum in (("1d", 7, 31), ("1h", 24, 168), ("1m", 60, 1440)):
        params: Params = {"starting_at": "2026-08-01T00:00:00Z", "bucket_width": width}
        assert len(ant.get(path, params=params).json()["data"]) == default
        assert len(ant.get(path, params={**params, "limit": maximum}).json()["data"]) == maximum
        bad = ant.get(path, params={**params, "limit": maximum + 1})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert ant.get(path, params={"starting_at": "yesterday"}).status_code == 400
    speed = ant.get(path, params={"starting_at": "2026-11-20T00:00:00Z", "group_by[]": "speed"})
    assert speed.status_code == 400
    beta = ant.get(
        path,
        params={"starting_at": "2026-11-20T00:00:00Z", "group_by[]": "speed"},
        headers={"anthropic-beta": "fast-mode-2026-02-01"},
    )
    assert [r["speed"] for r in beta.json()["data"][0]["results"]] == ["standard"]


def test_anthropic_cost_report_cents_strings(ant: httpx.Client, sim: SimulatorServer) -> None:
    path = "/v1/organizations/cost_report"
    params: Params = {
        "starting_at": "2026-11-10T00:00:00Z",
        "group_by[]": ["workspace_id", "description"],
    }
    data = [b for p in pages(ant, path, params) for b in p["data"]]
    results = [r for b in data for r in b["results"]]
    assert all(isinstance(r["amount"], str) and r["currency"] == "USD" for r in results)
    usd = sum((Decimal(r["amount"]) for r in results), Decimal(0)) / 100
    assert (
        usd
        == ds.Dataset(1, START).totals("anthropic", 1794268800, NOW - sim.settings.cost_lag)["cost"]
    )
    kinds = {r["cost_type"] for r in results}
    assert kinds == {"tokens", "web_search", "code_execution"}
    token_rows = [r for r in results if r["cost_type"] == "tokens"]
    assert {r["token_type"] for r in token_rows} == set(ds.ANTHROPIC_TOKEN_TYPES.values())
    assert any(r["workspace_id"] is None for r in results)  # the default workspace
    assert all(
        (r["model"] and r["description"].startswith("Claude")) or r["model"] == UNKNOWN_MODEL
        for r in token_rows
    )
    ungrouped = ant.get(path, params={"starting_at": "2026-11-20T00:00:00Z"}).json()["data"][0][
        "results"
    ]
    assert len(ungrouped) == 1 and ungrouped[0]["description"] is None
    assert (
        ant.get(
            path, params={"starting_at": "2026-11-20T00:00:00Z", "bucket_width": "1h"}
        ).status_code
        == 400
    )
    assert (
        ant.get(path, params={"starting_at": "2026-11-20T00:00:00Z", "limit": 32}).status_code
        == 400
    )


def test_anthropic_claude_code_report(ant: httpx.Client) -> None:
    path = "/v1/organizations/usage_report/claude_code"
    records = [
        r for p in pages(ant, path, {"starting_at": "2026-11-20", "limit": 1}) for r in p["data"]
    ]
    assert len(records) >= 3
    actors = {r["actor"]["type"] for r in records}
    assert actors == {"user_actor", "api_actor"}
    for r in records:
        assert r["date"] == "2026-11-20T00:00:00Z" and isinstance(r["is_remote"], bool)
        for m in r["model_breakdown"]:
            assert isinstance(m["estimated_cost"]["amount"], float | int)
            assert set(m["tokens"]) == {"input", "output", "cache_read", "cache_creation"}
    sessions = sum(r["core_metrics"]["num_sessions"] for r in records)
    day = TODAY - 3 * DAY  # 2026-11-20
    assert (
        sessions
        == ds.Dataset(1, START).totals("anthropic", day, day + DAY, "claude_code")["sessions"]
    )
    assert ant.get(path, params={"starting_at": "2026-11-20T00:00:00Z"}).status_code == 400
    assert ant.get(path, params={"starting_at": "2026-12-20"}).json()["data"] == []


def test_anthropic_auth_and_errors(
    sim: SimulatorServer, ant: httpx.Client, ctl: httpx.Client
) -> None:
    url = sim.url + "/v1/organizations/usage_report/messages"
    params: Params = {"starting_at": "2026-11-20T00:00:00Z"}
    wrong = httpx.get(
        url, params=params, headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"}
    )
    assert wrong.status_code == 401
    body = wrong.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["request_id"] == wrong.headers["request-id"]
    no_version = httpx.get(url, params=params, headers={"x-api-key": ANTHROPIC_KEY})
    assert no_version.status_code == 400
    ctl.post(
        "/_sim/faults",
        json=[{"provider": "anthropic", "mode": "529"}, {"provider": "anthropic", "mode": "429"}],
    )
    overloaded = ant.get("/v1/organizations/usage_report/messages", params=params)
    assert (
        overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    )
    limited = ant.get("/v1/organizations/usage_report/messages", params=params)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    ok = ant.get("/v1/organizations/usage_report/messages", params=params)
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")


# --- Groq ------------------------------------------------------------------------------------


def test_groq_query_range_integrates_to_exact_counts(groq: httpx.Client) -> None:
    start, end = TODAY + 300, TODAY + 6 * HOUR
    r = groq.get(
        "/api/v1/query_range",
        params={
            "query": "sum by (model) (model_project_id:tokens_in:rate5m)",
            "start": start,
            "end": end,
            "step": "5m",
        },
    )
    body = r.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "matrix"
    series = {s["metric"]["model"]: s["values"] for s in body["data"]["result"]}
    assert set(series) == set(ds.models("groq"))
    truth = ds.Dataset(1, START).truth("groq", start - 300, end, group=("model",))
    for model, values in series.items():
        assert all(isinstance(v, str) for _, v in values)
        assert [t for t, _ in values] == list(range(start, end + 1, 300))
        total = sum((Decimal(v) * 300 for _, v in values), Decimal(0))
        counted = truth[(model,)]["tokens.input"] + truth[(model,)].get("tokens.cache_read", 0)
        assert abs(total - counted) < Decimal("0.01"), model


def test_groq_instant_query_matchers_and_metadata(groq: httpx.Client) -> None:
    query = 'model_project_id_status_code:requests:rate5m{status_code!="200", model=~"llama.*"}'
    body = groq.post("/api/v1/query", data={"query": query}).json()
    assert body["data"]["resultType"] == "vector"
    result = body["data"]["result"]
    assert result and all(s["metric"]["status_code"] in ("429", "500") for s in result)
    assert all(s["value"][0] == NOW and isinstance(s["value"][1], str) for s in result)
    hits = groq.get(
        "/api/v1/query", params={"query": "model_project_id:prompt_cache_hits:rate5m"}
    ).json()
    cached = [s for s in hits["data"]["result"] if float(s["value"][1]) > 0]
    assert [s["metric"]["model"] for s in cached] == ["openai/gpt-oss-120b"]
    labels = groq.get("/api/v1/label/model/values").json()["data"]
    assert labels == sorted(ds.models("groq"))
    bad = groq.get("/api/v1/query", params={"query": "rate(foo[5m])"})
    assert bad.status_code == 422 and bad.json()["status"] == "error"
    too_many = groq.get(
        "/api/v1/query_range", params={"query": "x", "start": 0, "end": NOW, "step": 1}
    )
    assert too_many.status_code == 400 and too_many.json()["errorType"] == "bad_data"


def test_groq_gate_and_nan_fault(
    sim: SimulatorServer, groq: httpx.Client, ctl: httpx.Client
) -> None:
    url = sim.groq_base_url + "/api/v1/query"
    params: Params = {"query": "model_project_id:tokens_out:rate5m"}
    wrong = httpx.get(url, params=params, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    free = {"Authorization": "Bearer test-groq-free-key"}
    assert httpx.get(url, params=params, headers=free).status_code == 403
    ctl.post("/_sim/control", json={"groq_unentitled_status": 404})
    assert httpx.get(url, params=params, headers=free).status_code == 404
    ctl.post("/_sim/faults", json={"provider": "groq", "mode": "nan"})
    values = [
        s["value"][1] for s in groq.get("/api/v1/query", params=params).json()["data"]["result"]
    ]
    assert values and set(values) == {"NaN"}
    before = groq.get("/api/v1/query", params={**params, "time": sim.dataset.start_ts - 60}).json()
    assert before["data"]["result"] == []  # no series before the data starts


# --- control API and entry points -----------------------------------------------------------


def test_truth_over_http_matches_in_process(ctl: httpx.Client) -> None:
    params: Params = {"provider": "anthropic", "start": TODAY - DAY, "end": TODAY, "group": "model"}
    body = ctl.get("/_sim/truth", params=params).json()
    local = ds.Dataset(1, START).truth("anthropic", TODAY - DAY, TODAY, group=("model",))
    got = {g["group"]["model"]: g["measures"] for g in body["groups"]}
    assert set(got) == {k[0] for k in local}
    for (model,), measures in local.items():
        assert Decimal(got[model]["cost"]) == measures["cost"]
        assert got[model].get("tokens.input") == measures.get("tokens.input")
    assert Decimal(body["totals"]["cost"]) == sum((m["cost"] for m in local.values()), Decimal(0))
    catalog = ctl.get("/_sim/catalog").json()
    assert catalog["groq"]["models"][UNKNOWN_MODEL] == {"known": False}
    prices = ctl.get("/_sim/prices", params={"provider": "openai", "date": "2026-11-01"}).json()
    assert prices["usd_per_mtok"]["gpt-4o"]["input"] == "2.5"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_main_serves_until_interrupted() -> None:
    """Ctrl-C once it serves (SIGINT after its banner, not after a fixed delay: on a loaded
    machine the start can take longer, and an interrupt before serving is another path)."""
    cmd = [sys.executable, "-m", "simulator", "--listen", "127.0.0.1:0", "--seed", "3"]
    proc = subprocess.Popen(
        [*cmd, "--start", "2026-10-01"],
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        # The child must meet SIGINT as a user's Ctrl-C does: a shell without job control
        # starts background jobs with SIGINT ignored, and a thread that forks may have it
        # blocked; both are inherited (the CI run hung 30 s with the signal sent).
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stderr is not None
        banner = ""
        for line in proc.stderr:  # ends when the process does
            banner += line
            if "OpenAI base_url http://127.0.0.1:" in line:
                proc.send_signal(signal.SIGINT)
                break
        assert "OpenAI base_url http://127.0.0.1:" in banner, banner
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert main(["--listen", "nonsense"]) == 2
