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


def test_auth_headers_are_asked_for_before_every_attempt() -> None:
    seen: list[str | None] = []
    tokens = iter(["t1", "t2", "t3"])

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(503) if len(seen) == 1 else httpx.Response(200, json={"ok": 1})

    c = ApiClient(
        "http://provider.test/",
        {"x-static": "1"},
        retry=RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01),
        sleep=lambda s: None,
        transport=httpx.MockTransport(answer),
        auth=lambda: {"Authorization": f"Bearer {next(tokens)}"},
    )
    assert c.get_json("usage", "usage") == {"ok": 1}
    assert seen == ["Bearer t1", "Bearer t2"]  # a fresh token per attempt


def test_an_auth_failure_is_counted_and_no_request_is_made() -> None:
    failures: list[tuple[str, str]] = []

    class Recorder:
        def request(self, endpoint: str, code: str, seconds: float) -> None:
            raise AssertionError("no request may be made")

        def failure(self, endpoint: str, reason: str) -> None:
            failures.append((endpoint, reason))

    def refuse() -> dict[str, str]:
        raise SourceError("auth", "token: refused")

    c = ApiClient("http://provider.test/", {}, recorder=Recorder(), auth=refuse)
    with pytest.raises(SourceError) as err:
        c.get_json("usage", "usage")
    assert err.value.reason == "auth" and failures == [("usage", "auth")]
    assert c.requests_made == 0


def test_post_sends_json_and_204_is_no_content() -> None:
    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        assert request.method == "POST" and request.url.params["api-version"] == "1"
        return httpx.Response(204)

    c = ApiClient("http://provider.test/", {}, transport=httpx.MockTransport(answer))
    assert c.post_json("costs", "query", {"a": 1}, [("api-version", "1")]) is None
    assert bodies == [b'{"a":1}'] or bodies == [b'{"a": 1}']


def test_a_vendor_retry_hint_counts_as_retry_after() -> None:
    sleeps: list[float] = []
    hint = {"x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": "9"}
    c = client([httpx.Response(429, headers=hint), httpx.Response(200, json={})], sleeps)
    assert c.get_json("costs", "query") == {}
    assert sleeps == [9.0]


def test_post_sends_json_to_an_absolute_url_with_the_auth_hook_per_attempt() -> None:
    seen: list[tuple[str, str, str, bytes]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(
            (
                request.method,
                str(request.url),
                request.headers.get("authorization", ""),
                request.content,
            )
        )
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
    assert [(m, u, a) for m, u, a, _ in seen] == [
        ("POST", "http://other.test/q", "Bearer t1"),
        ("POST", "http://other.test/q", "Bearer t2"),
    ]
    assert seen[0][3] == b'{"query":"SELECT 1"}'


class _Hostile:
    """A loopback server whose one page either drips (a byte every 0.2 s, for ever) or is
    `size` bytes of valid JSON."""

    def __init__(self, size: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if size:
                    body = b'{"data": "' + b"x" * (size - 12) + b'"}'
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()
                self.wfile.write(b'{"data": "')
                while not stop.wait(0.2):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_dripping_response_ends_at_the_deadline() -> None:
    """One byte every 0.2 s never trips a 1 s read timeout; the 2 s deadline ends it."""
    import time

    server = _Hostile()
    api = ApiClient(server.url, {}, timeout=1.0, deadline=2.0, retry=RetryPolicy(attempts=1))
    began = time.monotonic()
    try:
        with pytest.raises(SourceError) as info:
            api.get_json("usage", "page")
    finally:
        server.close()
        api.close()
    took = time.monotonic() - began
    assert info.value.reason == "timeout" and "deadline" in str(info.value)
    assert took < 5, took


def test_a_page_past_the_byte_cap_is_a_payload_error_not_retried() -> None:
    server = _Hostile(size=300_000)
    api = ApiClient(server.url, {}, max_bytes=100_000, retry=RetryPolicy(attempts=3))
    try:
        with pytest.raises(SourceError) as info:
            api.get_json("usage", "page")
        assert info.value.reason == "decode" and "max_response_bytes" in str(info.value)
        assert api.requests_made == 1  # the same page again would be as large
        api.max_bytes = 400_000
        assert len(api.get_json("usage", "page")["data"]) == 300_000 - 12
    finally:
        server.close()
        api.close()


def test_a_cursor_that_never_ends_stops_at_the_page_cap() -> None:
    """A fresh cursor on every page (it never repeats) cost 1,001 requests each poll; it now
    stops at MAX_PAGES with its own message."""
    from exporter.sources._http import MAX_PAGES, paginate

    asked = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(
            200, json={"data": [], "has_more": True, "next_page": f"c{len(asked)}"}
        )

    api = ApiClient("http://x.test/", {}, transport=httpx.MockTransport(answer))
    with pytest.raises(SourceError) as info:
        paginate(api, "usage", "page", [])
    assert len(asked) == MAX_PAGES <= 250
    assert info.value.reason == "decode" and "does not end" in str(info.value)
