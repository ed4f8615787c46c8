"""The shared HTTP client: retries, Retry-After, reasons; and label values always encode."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from exporter.rows import Row
from exporter.sources._http import ApiClient, RetryPolicy, SourceError


def client(responses: list[httpx.Response], sleeps: list[float]) -> ApiClient:
    queue = list(responses)
    return ApiClient(
        "http://provider.test/v1",
        {},
        retry=RetryPolicy(attempts=3, backoff_base=1, backoff_max=2, retry_after_max=30),
        sleep=sleeps.append,
        transport=httpx.MockTransport(lambda request: queue.pop(0)),
    )


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", (7.0, 7.0)), ("soon", (0.5, 1.0)), ("Wed, 21 Oct 2015 07:28:00", (0.0, 0.0))],
)
def test_retry_after_is_honoured_or_falls_back_to_backoff(
    retry_after: str, expected: tuple[float, float]
) -> None:
    sleeps: list[float] = []
    c = client(
        [
            httpx.Response(429, headers={"retry-after": retry_after}),
            httpx.Response(200, json={"ok": 1}),
        ],
        sleeps,
    )
    assert c.get_json("usage", "usage") == {"ok": 1}
    assert len(sleeps) == 1 and expected[0] <= sleeps[0] <= expected[1]
    assert c.requests_made == 2


def test_a_4xx_reason_can_be_named_by_the_source_and_is_not_retried() -> None:
    sleeps: list[float] = []
    c = client([httpx.Response(404, json={"error": "not found"})], sleeps)
    with pytest.raises(SourceError) as err:
        c.get_json("usage", "usage", status_reasons={404: "not_entitled"})
    assert err.value.reason == "not_entitled" and sleeps == []


def test_server_errors_are_retried_then_reported() -> None:
    sleeps: list[float] = []
    c = client([httpx.Response(503) for _ in range(3)], sleeps)
    with pytest.raises(SourceError) as err:
        c.get_json("usage", "usage")
    assert err.value.reason == "server_error" and len(sleeps) == 2


def test_label_values_always_encode_as_utf8() -> None:
    row = Row.make("completions", {"model": "bad\ud800name"}, {})
    assert row.dim("model").encode("utf-8") == b"bad?name"


def test_the_auth_hook_gives_fresh_headers_per_attempt_and_post_sends_json() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.headers.get("authorization", ""), request.content))
        return httpx.Response(503) if len(seen) == 1 else httpx.Response(200, json={"ok": 1})

    tokens = iter(["t1", "t2"])
    c = ApiClient(
        "http://provider.test/v1",
        {},
        retry=RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01),
        sleep=lambda s: None,
        transport=httpx.MockTransport(reply),
    )
    c.auth = lambda: {"Authorization": f"Bearer {next(tokens)}"}
    assert c.post_json("costs", "http://other.test/q", {"query": "SELECT 1"}) == {"ok": 1}
    assert [(m, a) for m, a, _ in seen] == [("POST", "Bearer t1"), ("POST", "Bearer t2")]
    assert seen[0][2] == b'{"query":"SELECT 1"}'


def test_an_auth_hook_failure_is_counted_and_not_retried() -> None:
    failures: list[tuple[str, str]] = []

    class Recorder:
        def request(self, endpoint: str, code: str, seconds: float) -> None:
            pass

        def failure(self, endpoint: str, reason: str) -> None:
            failures.append((endpoint, reason))

    def refuse() -> dict[str, str]:
        raise SourceError("auth", "token: refused")

    c = ApiClient("http://provider.test/", {}, recorder=Recorder())
    c.auth = refuse
    with pytest.raises(SourceError, match="refused"):
        c.get_json("usage", "usage")
    assert failures == [("usage", "auth")] and c.requests_made == 0
