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
