"""Groq adapter: rate integration arithmetic, its error bound, queries sent, Enterprise gate."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.rows import Bucket
from exporter.settings import AccountSettings
from exporter.sources import DAY, HOUR, Endpoint
from exporter.sources._http import (
    AUTH,
    CLIENT_ERROR,
    NOT_ENTITLED,
    SERVER_ERROR,
    ApiClient,
    RetryPolicy,
    SourceError,
)
from exporter.sources.groq import ADAPTER, DEFAULT_BASE_URL, DEFAULT_METRICS, GroqSource

headers = ADAPTER.headers

FIXTURES = Path(__file__).parent.parent / "fixtures" / "groq"
KEY = "test-groq-key"
S = 1793491200  # 2026-11-01T00:00:00Z
MODEL = "llama-3.3-70b-versatile"
PROJECT = "project_01testproject"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def matrix(series: Sequence[tuple[Mapping[str, str], Sequence[tuple[int, str]]]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": dict(labels), "values": [[t, v] for t, v in values]}
                for labels, values in series
            ],
        },
    }


EMPTY = matrix([])


class Harness:
    """A GroqSource whose query_range answers come from `answer(metric key, request)`."""

    def __init__(
        self,
        answer: Callable[[str, httpx.Request], httpx.Response],
        *,
        options: dict[str, Any] | None = None,
        group_by: list[str] | None = None,
        bucket_width: int = HOUR,
    ) -> None:
        self.requests: list[httpx.Request] = []
        options = options or {}
        custom = options.get("metrics")
        names = {**DEFAULT_METRICS, **(custom if isinstance(custom, dict) else {})}

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            query = request.url.params["query"]
            key = next(k for k, m in names.items() if m and query.endswith(f"({m})"))
            return answer(key, request)

        client = ApiClient(
            DEFAULT_BASE_URL,
            headers(KEY),
            retry=RetryPolicy(attempts=2, backoff_base=0.01),
            sleep=lambda s: None,
            transport=httpx.MockTransport(handler),
        )
        self.source = GroqSource(
            AccountSettings(account="groq-main", options=options),
            client,
            group_by=group_by if group_by is not None else ["model", "project"],
            bucket_width=bucket_width,
        )
        (self.endpoint,) = self.source.endpoints()

    def fetch(self, start: int, end: int) -> list[Bucket]:
        return self.source.fetch(self.endpoint, start, end)


def only(key: str, body: dict[str, Any]) -> Callable[[str, httpx.Request], httpx.Response]:
    return lambda k, r: httpx.Response(200, json=body if k == key else EMPTY)


def measures(bucket: Bucket, **dims: str) -> Mapping[str, Any]:
    want = tuple(sorted(dims.items()))
    (row,) = [r for r in bucket.rows if r.dims == want]
    return row.measures


# --- basics ----------------------------------------------------------------------------------


def test_headers_endpoint_and_defaults() -> None:
    h = Harness(only("tokens_in", EMPTY))
    assert headers(KEY) == {"Authorization": f"Bearer {KEY}"}
    assert h.source.provider == "groq" and h.source.account == "groq-main"
    assert h.source.endpoints() == [Endpoint("usage", HOUR, 2 * DAY)]
    assert h.source.payload_errors == {"usage": 0}
    h.fetch(S, S + HOUR)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in h.requests)
    assert {r.url.path for r in h.requests} == {"/v1/metrics/prometheus/api/v1/query_range"}


def test_queries_sent_exactly() -> None:
    h = Harness(only("tokens_in", EMPTY))
    h.fetch(S, S + 2 * HOUR)
    sent = [r.url.params.multi_items() for r in h.requests]
    # Cache hits are not queried unless declared to be tokens; start is the first window end.
    assert sent == [
        [
            ("query", f"sum by (model, project_id) ({DEFAULT_METRICS[k]})"),
            ("start", str(S + 300)),
            ("end", str(S + 7200)),
            ("step", "300"),
        ]
        for k in ("tokens_in", "tokens_out", "requests")
    ]


def test_fixture_integration_by_hand() -> None:
    """query_range_tokens_in.json, integrated by hand (1h buckets starting at S).

    llama/project_01: S+300 1532.4 -> 459720; S+600 1601.07 -> 480321; S+900 NaN (no data);
    S+1200 0; S+3900 2.5 -> 750 in the second bucket.
    new model, no project label: S+300 0.015 -> 4.5 -> 4 (half to even); +Inf skipped;
    "bogus" and "-3" are malformed (counted).
    """
    h = Harness(only("tokens_in", load("query_range_tokens_in.json")))
    first, second = h.fetch(S, S + 2 * HOUR)
    assert (first.start, first.end, second.start, second.end) == (
        S,
        S + HOUR,
        S + HOUR,
        S + 2 * HOUR,
    )
    assert measures(first, model=MODEL, project=PROJECT) == {
        "tokens.input": 940041,
        "tokens.output": 0,
        "requests": 0,
    }
    assert measures(first, model="a-model-released-tomorrow")["tokens.input"] == 4
    assert measures(second, model=MODEL, project=PROJECT)["tokens.input"] == 750
    assert len(second.rows) == 1
    assert h.source.payload_errors["usage"] == 2
    assert all(
        isinstance(v, int) for b in (first, second) for r in b.rows for v in r.measures.values()
    )


def test_window_edges_missing_sample_and_half_even_rounding() -> None:
    labels = {"model": MODEL, "project_id": PROJECT}
    # 1h bucket [S, S+3600): windows end at S+300 .. S+3600. The sample at S+3600 covers
    # (S+3300, S+3600] and belongs to the first bucket; S+2100 is missing; S+2400 is NaN.
    tokens_in = [(S + 300 * k, "2") for k in range(1, 13) if k != 7]
    tokens_in[7] = (S + 2400, "NaN")
    tokens_out = [(S + 3600, "0.015"), (S + 3900, "0.005")]  # 4.5 -> 4, 1.5 -> 2
    requests = [(S + 300 * k, "0.1") for k in range(1, 25)]

    def answer(key: str, request: httpx.Request) -> httpx.Response:
        series = {"tokens_in": tokens_in, "tokens_out": tokens_out, "requests": requests}[key]
        return httpx.Response(200, json=matrix([(labels, series)]))

    h = Harness(answer)
    first, second = h.fetch(S, S + 2 * HOUR)
    # 12 windows, one missing and one NaN: 10 x 2 x 300 (the gaps are not interpolated).
    assert measures(first, model=MODEL, project=PROJECT) == {
        "tokens.input": 6000,
        "tokens.output": 4,
        "requests": 360,
    }
    assert measures(second, model=MODEL, project=PROJECT) == {
        "tokens.input": 0,
        "tokens.output": 2,
        "requests": 360,
    }


def test_samples_outside_the_query_are_ignored_and_now_bounds_the_query() -> None:
    labels = {"model": MODEL, "project_id": PROJECT}
    # A gateway that returns more than asked must not make us count a window twice.
    body = matrix([(labels, [(S, "100"), (S + 300, "1"), (S + 1800, "1"), (S + 2100, "100")])])
    h = Harness(only("tokens_in", body))
    now = S + 1800 + 299  # mid-window: the newest usable sample is the one at S+1800
    (bucket,) = h.fetch(S, now)
    assert h.requests[0].url.params["end"] == str(S + 1800)
    assert measures(bucket, model=MODEL, project=PROJECT)["tokens.input"] == 600
    assert (bucket.start, bucket.end) == (S, S + HOUR)


def test_a_bucket_with_no_window_yet_is_empty_and_not_queried() -> None:
    h = Harness(only("tokens_in", EMPTY))
    assert h.fetch(S, S + 120) == [Bucket("usage", S, S + HOUR, [])]
    assert h.requests == []


def test_long_windows_are_split_into_queries_below_the_point_limit() -> None:
    h = Harness(only("tokens_in", EMPTY), bucket_width=DAY)
    buckets = h.fetch(S, S + 60 * DAY)
    assert len(buckets) == 60 and all(b.rows == [] for b in buckets)
    ranges = [(int(r.url.params["start"]), int(r.url.params["end"])) for r in h.requests[:2]]
    assert ranges == [(S + 300, S + 34 * DAY), (S + 34 * DAY + 300, S + 60 * DAY)]
    for start, end in ranges:
        assert (end - start) // 300 + 1 <= 11_000
    assert len(h.requests) == 6  # 2 ranges x 3 metrics


# --- the error bound -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 5_000_000), min_size=24, max_size=24),
    missing=st.sets(st.integers(0, 23), max_size=6),
    decimals=st.integers(0, 6),
)
def test_error_bound_against_exact_synthetic_counts(
    counts: list[int], missing: set[int], decimals: int
) -> None:
    """Synthetic truth: counts[k] events in window k. Groq quotes count/300 rounded to
    `decimals` places; some samples are missing. The documented bound must hold:
    |estimate - sum(present counts)| <= 0.5 + 300 * 0.5 * 10**-decimals * present samples,
    and the missing windows' counts are exactly what is lost."""
    labels = {"model": MODEL, "project_id": PROJECT}
    values = [
        (S + 300 * (k + 1), f"{Decimal(c) / 300:.{decimals}f}")
        for k, c in enumerate(counts)
        if k not in missing
    ]
    h = Harness(only("tokens_in", matrix([(labels, values)])))
    buckets = h.fetch(S, S + 2 * HOUR)
    for b, bucket in enumerate(buckets):
        idx = range(12 * b, 12 * b + 12)
        present = [k for k in idx if k not in missing]
        if not present:
            assert bucket.rows == []
            continue
        estimate = measures(bucket, model=MODEL, project=PROJECT)["tokens.input"]
        observed = sum(counts[k] for k in present)
        bound = Decimal("0.5") + 300 * Decimal("0.5") * Decimal(10) ** -decimals * len(present)
        assert abs(estimate - observed) <= bound
        truth = sum(counts[k] for k in idx)
        assert truth - estimate <= sum(counts[k] for k in idx if k in missing) + bound


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 10**9), min_size=12, max_size=12))
def test_float_quoted_rates_without_gaps_give_exact_counts(counts: list[int]) -> None:
    """Groq quotes float64 rates (shortest repr); with every sample present the count is exact."""
    labels = {"model": MODEL, "project_id": PROJECT}
    values = [(S + 300 * (k + 1), repr(c / 300)) for k, c in enumerate(counts)]
    h = Harness(only("tokens_out", matrix([(labels, values)])))
    (bucket,) = h.fetch(S, S + HOUR)
    assert measures(bucket, model=MODEL, project=PROJECT)["tokens.output"] == sum(counts)


# --- options ---------------------------------------------------------------------------------


def test_configurable_metric_names_labels_and_disabled_metrics() -> None:
    options = {
        "metrics": {"tokens_in": 'groq:prompt_tokens:rate5m{env="prod"}', "requests": None},
        "model_label": "model_name",
        "project_label": "project",
    }
    body = matrix([({"model_name": "m1", "project": "p1"}, [(S + 300, "1")])])
    h = Harness(only("tokens_in", body), options=options)
    (bucket,) = h.fetch(S, S + HOUR)
    queries = [r.url.params["query"] for r in h.requests]
    assert queries == [
        'sum by (model_name, project) (groq:prompt_tokens:rate5m{env="prod"})',
        f"sum by (model_name, project) ({DEFAULT_METRICS['tokens_out']})",
    ]
    assert measures(bucket, model="m1", project="p1") == {"tokens.input": 300, "tokens.output": 0}


def test_group_by_without_project_sums_projects_in_the_query() -> None:
    h = Harness(only("tokens_in", EMPTY), group_by=["model"])
    h.fetch(S, S + HOUR)
    assert h.requests[0].url.params["query"] == f"sum by (model) ({DEFAULT_METRICS['tokens_in']})"


def test_cache_hits_as_tokens_partition_input() -> None:
    labels = {"model": MODEL, "project_id": PROJECT}
    series = {
        "tokens_in": matrix([(labels, [(S + 300, "10"), (S + 3900, "1")])]),
        "prompt_cache_hits": matrix([(labels, [(S + 300, "4"), (S + 3900, "2")])]),
    }
    h = Harness(
        lambda k, r: httpx.Response(200, json=series.get(k, EMPTY)),
        options={"cache_hits_are_tokens": True},
    )
    first, second = h.fetch(S, S + 2 * HOUR)
    assert "prompt_cache_hits" in h.requests[-1].url.params["query"]
    assert measures(first, model=MODEL, project=PROJECT) == {
        "tokens.input": 1800,
        "tokens.cache_read": 1200,
        "tokens.output": 0,
        "requests": 0,
    }
    # Sampling noise: more hits than prompt tokens is clamped, input never goes negative.
    m = measures(second, model=MODEL, project=PROJECT)
    assert (m["tokens.input"], m["tokens.cache_read"]) == (0, 300)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"metrics": {"tokens_inn": "x"}}, "options.metrics.tokens_inn"),
        ({"metrics": {"tokens_in": "not a metric"}}, "options.metrics.tokens_in"),
        ({"metrics": "tokens"}, "options.metrics"),
        ({"model_label": "model-name"}, "options.model_label"),
        ({"cache_hits_are_tokens": "true"}, "options.cache_hits_are_tokens"),
        (
            {"cache_hits_are_tokens": True, "metrics": {"prompt_cache_hits": None}},
            "options.cache_hits_are_tokens",
        ),
        ({"usage_horizon": "10m"}, "options.usage_horizon"),
        ({"usage_horizon": "two days"}, "options.usage_horizon"),
        ({"metrics": {"tokens_in": None, "tokens_out": "", "requests": None}}, "options.metrics"),
        ({"step": 60}, "options.step"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        Harness(only("tokens_in", EMPTY), options=options)


# --- errors ----------------------------------------------------------------------------------


def test_404_means_not_entitled() -> None:
    h = Harness(lambda k, r: httpx.Response(404, json=load("error_unknown_url.json")))
    with pytest.raises(SourceError) as err:
        h.fetch(S, S + HOUR)
    assert err.value.reason == NOT_ENTITLED
    assert "Enterprise" in str(err.value)
    assert len(h.requests) == 1


def test_bad_key_is_auth_with_a_hint() -> None:
    h = Harness(lambda k, r: httpx.Response(401, json=load("error_invalid_key.json")))
    with pytest.raises(SourceError) as err:
        h.fetch(S, S + HOUR)
    assert err.value.reason == AUTH
    assert "Invalid API Key" in str(err.value) and "Enterprise" in str(err.value)
    assert KEY not in str(err.value)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (422, load("error_bad_query.json"), CLIENT_ERROR),  # via ApiClient
        (200, load("error_bad_query.json"), CLIENT_ERROR),  # an error body with HTTP 200
        (200, {"status": "error", "errorType": "timeout", "error": "query timed out"}, "timeout"),
        (200, {"status": "error", "errorType": "503", "error": "storage down"}, SERVER_ERROR),
        (200, {**EMPTY, "isPartial": True}, SERVER_ERROR),
        (200, {"status": "success", "data": {"resultType": "vector", "result": []}}, "decode"),
        (200, {"data": {"resultType": "matrix", "result": []}}, "decode"),
        (200, ["not", "an", "object"], "decode"),
    ],
)
def test_error_bodies(status: int, body: Any, reason: str) -> None:
    h = Harness(lambda k, r: httpx.Response(status, json=body))
    with pytest.raises(SourceError) as err:
        h.fetch(S, S + HOUR)
    assert err.value.reason == reason


def test_a_later_metric_failing_fails_the_whole_fetch() -> None:
    def answer(key: str, request: httpx.Request) -> httpx.Response:
        if key == "requests":
            return httpx.Response(503, json={"status": "error", "errorType": "503", "error": "x"})
        return httpx.Response(200, json=load("query_range_tokens_in.json"))

    h = Harness(answer)
    with pytest.raises(SourceError) as err:
        h.fetch(S, S + HOUR)
    assert err.value.reason == SERVER_ERROR
    assert len(h.requests) == 4  # tokens_in, tokens_out, requests twice (one retry)


def test_misaligned_start_and_width_are_refused() -> None:
    with pytest.raises(ValueError, match="bucket_width"):
        Harness(only("tokens_in", EMPTY), bucket_width=1000)
    h = Harness(only("tokens_in", EMPTY))
    with pytest.raises(ValueError, match="not aligned"):
        h.fetch(S + 300, S + HOUR)
