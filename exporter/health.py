"""Self-health state of the sources: what was asked of each provider and how it went.

The HTTP client reports every attempt here (it implements `RequestRecorder` per account); the
poller reports poll outcomes. The model reads a consistent snapshot after each poll. Nothing
here knows a provider's JSON, and no message stored here contains a secret (SourceError
messages never do).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from exporter.redact import redact

# Buckets for provider API request durations: admin APIs are slow (up to tens of seconds).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class EndpointState:
    up: int | None = None  # None until first poll
    last_success: float | None = None
    last_error: str = ""
    last_error_reason: str = ""
    watermark: int | None = None
    latest_bucket: int | None = None
    rows_ingested: int = 0
    horizon: int | None = None  # revision horizon, seconds
    revisions: int = 0  # downward revisions seen since start


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        for i, le in enumerate(DURATION_BUCKETS):
            if v <= le:
                self.counts[i] += 1
        self.total += v
        self.n += 1


class Health:
    """Thread-safe registry of source health for all accounts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.endpoints: dict[tuple[str, str, str], EndpointState] = {}
        self.requests: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.failures: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.poll_duration: dict[tuple[str, str], float] = {}
        self.poll_requests: dict[tuple[str, str], int] = {}
        self.payload_errors: dict[tuple[str, str, str], int] = {}
        self.last_poll: float | None = None

    def recorder(self, provider: str, account: str) -> AccountRecorder:
        return AccountRecorder(self, provider, account)

    def endpoint(self, provider: str, account: str, endpoint: str) -> EndpointState:
        with self._lock:
            return self.endpoints.setdefault((provider, account, endpoint), EndpointState())

    def register(
        self, provider: str, account: str, endpoint: str, reasons: tuple[str, ...], horizon: int
    ) -> None:
        """Pre-create series so alerts and dashboards see zeros before the first failure."""
        with self._lock:
            st = self.endpoints.setdefault((provider, account, endpoint), EndpointState())
            st.horizon = horizon
            self.payload_errors.setdefault((provider, account, endpoint), 0)
            for r in reasons:
                self.failures.setdefault((provider, account, endpoint, r), 0)

    def success(
        self,
        provider: str,
        account: str,
        endpoint: str,
        at: float,
        watermark: int,
        latest_bucket: int | None,
        rows: int,
        revisions: int = 0,
    ) -> None:
        with self._lock:
            st = self.endpoints.setdefault((provider, account, endpoint), EndpointState())
            st.up = 1
            st.last_success = at
            st.last_error = st.last_error_reason = ""
            st.watermark = watermark if st.watermark is None else max(st.watermark, watermark)
            if latest_bucket is not None:
                st.latest_bucket = max(st.latest_bucket or 0, latest_bucket)
            st.rows_ingested += rows
            st.revisions += revisions

    def failure(
        self, provider: str, account: str, endpoint: str, reason: str, message: str
    ) -> None:
        with self._lock:
            st = self.endpoints.setdefault((provider, account, endpoint), EndpointState())
            st.up = 0
            st.last_error = redact(message)
            st.last_error_reason = reason

    def poll_done(
        self,
        provider: str,
        account: str,
        seconds: float,
        requests: int,
        payload_errors: dict[str, int],
    ) -> None:
        with self._lock:
            self.poll_duration[(provider, account)] = seconds
            self.poll_requests[(provider, account)] = requests
            for ep, n in payload_errors.items():
                self.payload_errors[(provider, account, ep)] = n

    def snapshot(self) -> Health:
        """A copy that the model can read without holding the lock."""
        copy = Health()
        with self._lock:
            copy.endpoints = {k: EndpointState(**vars(v)) for k, v in self.endpoints.items()}
            copy.requests = defaultdict(int, self.requests)
            copy.failures = defaultdict(int, self.failures)
            copy.durations = {
                k: Histogram(list(v.counts), v.total, v.n) for k, v in self.durations.items()
            }
            copy.poll_duration = dict(self.poll_duration)
            copy.poll_requests = dict(self.poll_requests)
            copy.payload_errors = dict(self.payload_errors)
            copy.last_poll = self.last_poll
        return copy


class AccountRecorder:
    """`RequestRecorder` for one account: feeds per-attempt counts into `Health`."""

    def __init__(self, health: Health, provider: str, account: str) -> None:
        self._h = health
        self.provider = provider
        self.account = account

    def request(self, endpoint: str, code: str, seconds: float) -> None:
        h = self._h
        with h._lock:
            h.requests[(self.provider, self.account, endpoint, code)] += 1
            h.durations.setdefault((self.provider, endpoint), Histogram()).observe(seconds)

    def failure(self, endpoint: str, reason: str) -> None:
        h = self._h
        with h._lock:
            h.failures[(self.provider, self.account, endpoint, reason)] += 1
