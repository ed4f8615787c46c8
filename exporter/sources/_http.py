"""The HTTP layer shared by all sources: retries, backoff, timeouts and request accounting.

It knows nothing of providers: a source hands it a path and query parameters and gets JSON
back, or a `SourceError` whose `reason` is one of a closed set, so that failures can be
counted and shown without leaking response bodies or keys. The client is httpx2 (the
maintained successor of httpx, already required by genai-prices): one client library only.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2 as httpx

from exporter.redact import redact

log = logging.getLogger(__name__)

# Failure reasons (closed set: they become label values).
AUTH = "auth"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
CLIENT_ERROR = "client_error"
TIMEOUT = "timeout"
CONNECTION = "connection"
DECODE = "decode"
NOT_ENTITLED = "not_entitled"
REASONS = (
    AUTH,
    RATE_LIMITED,
    SERVER_ERROR,
    CLIENT_ERROR,
    TIMEOUT,
    CONNECTION,
    DECODE,
    NOT_ENTITLED,
)

Params = Sequence[tuple[str, str | int]]


class SourceError(Exception):
    """A failed fetch. `reason` is a label value; the message never contains a secret."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class Cancelled(Exception):
    """The exporter is stopping: no further request is made (not a provider failure)."""


class RequestRecorder(Protocol):
    """Receives one call per HTTP attempt (retries included)."""

    def request(self, endpoint: str, code: str, seconds: float) -> None: ...

    def failure(self, endpoint: str, reason: str) -> None: ...


class NullRecorder:
    def request(self, endpoint: str, code: str, seconds: float) -> None:
        pass

    def failure(self, endpoint: str, reason: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4  # total tries per request
    backoff_base: float = 1.0  # seconds; doubled each retry, with full jitter
    backoff_max: float = 60.0
    retry_after_max: float = 120.0  # never sleep longer than this on one Retry-After


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or _vendor_retry_after(headers)
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date; anything unreadable falls back to the normal backoff
        parsed = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return max(0.0, parsed.timestamp() - time.time())


def _vendor_retry_after(headers: Mapping[str, str]) -> str | None:
    """A vendor's own retry hint in seconds where there is no Retry-After: Azure Resource
    Manager services send `x-ms-ratelimit-<service>-retry-after` (the largest one wins)."""
    hints = []
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith("x-ms-ratelimit-") and lowered.endswith("retry-after"):
            try:
                hints.append(float(value))
            except ValueError:
                continue
    return str(max(hints)) if hints else None


class DeadlinePassed(httpx.TimeoutException):
    """The whole request took longer than the client's deadline (a body that drips)."""


class TooLarge(Exception):
    """A response body past the client's byte cap."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_text(response: httpx.Response) -> str:
    """A short message from a provider error body, keys and tokens masked (a provider's
    401 text may quote the key it refused, masked or not)."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return redact(str(err.get("message") or err.get("type") or ""), 200)
        if isinstance(err, str):
            return redact(err, 200)
    return response.reason_phrase or ""


class ApiClient:
    """GET (or POST) JSON from one provider account, with retries and per-attempt accounting.

    `auth`, when set (a source may set it after it is built), is called before every attempt
    and its headers are added to that request: for credentials that expire, such as a cloud
    SDK's bearer token (the SDK caches and renews it). It raises `SourceError` when no
    credential can be had; that failure is counted and not retried here (the SDK retries its
    own token requests).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        recorder: RequestRecorder | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        max_bytes: int = 64 * 2**20,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        cancel: threading.Event | None = None,
        auth: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.auth = auth
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers=dict(headers),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )
        self.deadline = deadline if deadline is not None else 4 * timeout
        self.max_bytes = max_bytes
        self.recorder: RequestRecorder = recorder or NullRecorder()
        self.retry = retry or RetryPolicy()
        self.cancel = cancel or threading.Event()
        self._sleep = sleep or self._wait
        self.requests_made = 0  # attempts since the last reset_count(); read by the poller
        # After a 429 (or a 5xx with Retry-After) no request of this account, whatever its
        # endpoint, goes out before this time.monotonic() value.
        self.blocked_until = 0.0
        self._gate = threading.Lock()

    def _wait(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled()

    def backoff_remaining(self) -> float:
        """Seconds until the account may be asked again (0 if it may now)."""
        return max(0.0, self.blocked_until - time.monotonic())

    def _block(self, seconds: float) -> None:
        with self._gate:
            self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    @property
    def base_url(self) -> str:
        """The base URL every path is relative to (ends with a slash)."""
        return str(self._client.base_url)

    def close(self) -> None:
        self._client.close()

    def reset_count(self) -> int:
        n, self.requests_made = self.requests_made, 0
        return n

    def get_json(
        self,
        endpoint: str,
        path: str,
        params: Params = (),
        status_reasons: Mapping[int, str] | None = None,
    ) -> Any:
        """GET `path` (relative to the base URL, or an absolute URL) and decode JSON.

        `endpoint` is a short stable name for accounting (a label value, never the URL).
        `status_reasons` lets a source name what a 4xx status means for it (Groq's 404 is
        "not entitled"), so the failure is counted once, under that reason, and not retried.
        """
        return self.request_json(endpoint, "GET", path, params, status_reasons)

    def post_json(
        self,
        endpoint: str,
        path: str,
        body: Any,
        params: Params = (),
        status_reasons: Mapping[int, str] | None = None,
    ) -> Any:
        """POST `body` as JSON to `path` and decode the JSON answer (None for 204 No Content);
        otherwise as `get_json` (a query API that takes its query as a body)."""
        return self.request_json(endpoint, "POST", path, params, status_reasons, body)

    def _auth_headers(self, endpoint: str) -> Mapping[str, str] | None:
        if self.auth is None:
            return None
        try:
            return self.auth()
        except SourceError as exc:
            self.recorder.failure(endpoint, exc.reason)
            raise

    def _send(
        self,
        method: str,
        path: str,
        params: Params,
        body: Any,
        headers: Mapping[str, str] | None,
        began: float,
    ) -> httpx.Response:
        """One attempt, its body read in chunks against the deadline and the byte cap (the
        client's own timeout bounds each read, not a body that drips a byte at a time)."""
        request = self._client.build_request(
            method, path.lstrip("/"), params=list(params), json=body, headers=headers
        )
        response = self._client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise TooLarge(
                        response.status_code,
                        f"response larger than max_response_bytes ({self.max_bytes} bytes): "
                        "skipped (raise the account's max_response_bytes if it is real)",
                    )
                if time.monotonic() - began > self.deadline:
                    raise DeadlinePassed(f"the request's deadline of {self.deadline:g}s passed")
                if self.cancel.is_set():
                    raise Cancelled()
                chunks.append(chunk)
        finally:
            response.close()
        # What response.read() sets: the decoded body, so .json() and .text work as usual.
        response._content = b"".join(chunks)
        return response

    def request_json(
        self,
        endpoint: str,
        method: str,
        path: str,
        params: Params = (),
        status_reasons: Mapping[int, str] | None = None,
        body: Any = None,
    ) -> Any:
        """One request with retries (see `get_json`); 204 No Content answers None."""
        last: SourceError | None = None
        for attempt in range(self.retry.attempts):
            if self.cancel.is_set():
                raise Cancelled()
            wait = self.backoff_remaining() if attempt == 0 else 0.0
            if wait > 0:  # the account is backing off (an earlier request was rate limited)
                self._sleep(wait)
            delay: float | None = None
            headers = self._auth_headers(endpoint)
            began = time.monotonic()
            self.requests_made += 1
            try:
                response = self._send(method, path, params, body, headers, began)
            except TooLarge as exc:
                self.recorder.request(endpoint, str(exc.status), time.monotonic() - began)
                self.recorder.failure(endpoint, DECODE)
                raise SourceError(DECODE, f"{endpoint}: {exc}") from None  # same page again
            except httpx.DecodingError:  # a body that does not decode (corrupt gzip)
                self.recorder.request(endpoint, "200", time.monotonic() - began)
                last = SourceError(DECODE, f"{endpoint}: the response body does not decode")
            except httpx.TimeoutException as exc:
                self.recorder.request(endpoint, "timeout", time.monotonic() - began)
                what = str(exc) if isinstance(exc, DeadlinePassed) else type(exc).__name__
                last = SourceError(TIMEOUT, f"{endpoint}: timed out ({what})")
            except httpx.TransportError as exc:
                self.recorder.request(endpoint, "error", time.monotonic() - began)
                last = SourceError(
                    CONNECTION, f"{endpoint}: connection failed ({type(exc).__name__})"
                )
            else:
                self.recorder.request(endpoint, str(response.status_code), time.monotonic() - began)
                status = response.status_code
                if status == 204:
                    return None
                if status == 200:
                    try:
                        return response.json()
                    except (ValueError, json.JSONDecodeError):
                        last = SourceError(
                            DECODE, f"{endpoint}: response is not valid JSON", status
                        )
                elif status in (401, 403):
                    err = SourceError(
                        AUTH, f"{endpoint}: HTTP {status}: {_error_text(response)}", status
                    )
                    self.recorder.failure(endpoint, AUTH)
                    raise err  # not retried: a bad key stays bad
                elif status == 429:
                    delay = _retry_after(response.headers)
                    last = SourceError(RATE_LIMITED, f"{endpoint}: HTTP 429: rate limited", status)
                elif status >= 500:
                    delay = _retry_after(response.headers)
                    last = SourceError(
                        SERVER_ERROR, f"{endpoint}: HTTP {status}: {_error_text(response)}", status
                    )
                else:
                    reason = (status_reasons or {}).get(status, CLIENT_ERROR)
                    err = SourceError(
                        reason, f"{endpoint}: HTTP {status}: {_error_text(response)}", status
                    )
                    self.recorder.failure(endpoint, err.reason)
                    raise err
            assert last is not None
            self.recorder.failure(endpoint, last.reason)
            hinted = delay is not None
            if delay is None:
                cap = min(self.retry.backoff_max, self.retry.backoff_base * (2**attempt))
                delay = random.uniform(cap / 2, cap)
            else:
                delay = min(delay, self.retry.retry_after_max)
            if hinted or last.reason == RATE_LIMITED:
                self._block(delay)  # the whole account waits, not only this request
            if attempt + 1 >= self.retry.attempts:
                break
            log.info(
                "%s; retrying in %.1fs (attempt %d/%d)",
                last,
                delay,
                attempt + 2,
                self.retry.attempts,
            )
            self._sleep(delay)
        assert last is not None
        if last.reason == RATE_LIMITED:
            # Out of attempts: keep the account quiet for one more backoff step.
            cap = min(self.retry.backoff_max, self.retry.backoff_base * (2**self.retry.attempts))
            self._block(max(self.backoff_remaining(), cap))
        raise last


MAX_PAGES = 250  # a year of hourly buckets is 53 pages at the providers' page limits


def paginate(
    client: ApiClient, endpoint: str, path: str, params: Params, max_pages: int = MAX_PAGES
) -> list[Any]:
    """Follow a `has_more` / `next_page` cursor envelope to its end; return every page.

    The cursor is opaque and sent back unchanged with the same other parameters. A cursor that
    repeats (a provider bug) or a runaway page count is a `decode` failure, not a loop. The cap
    is far above any real window (a first start of a year of hourly buckets needs 53 pages) and
    bounds what a cursor that never ends costs each poll: it was 1,000 pages (1,001 requests,
    45 s), once per poll, for as long as the provider misbehaves.
    """
    pages: list[Any] = []
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        query = list(params) + ([("page", cursor)] if cursor else [])
        page = client.get_json(endpoint, path, query)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            client.recorder.failure(endpoint, DECODE)
            raise SourceError(DECODE, f"{endpoint}: page has no 'data' list")
        pages.append(page)
        cursor = page.get("next_page")
        if not page.get("has_more") or not cursor:
            return pages
        if cursor in seen:
            client.recorder.failure(endpoint, DECODE)
            raise SourceError(DECODE, f"{endpoint}: pagination cursor repeats")
        if len(pages) >= max_pages:
            client.recorder.failure(endpoint, DECODE)
            raise SourceError(
                DECODE, f"{endpoint}: more than {max_pages} pages: the cursor does not end"
            )
        seen.add(cursor)
