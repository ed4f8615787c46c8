"""Groq source: token and request counts rebuilt from Groq's Prometheus-compatible metrics API.

Groq has no usage or billing API; Enterprise organizations get a Prometheus query API
(``/api/v1/query_range`` under ``https://api.groq.com/v1/metrics/prometheus``) whose series
are per-second rates over 5 minutes. This adapter integrates those rates into counts per
bucket, so the numbers are estimates, not counters.

Integration rule. Query ``sum by (<model label>, <project label>) (<metric>)`` with
``step=300``. A sample at time ``t`` is the average rate over ``(t-300, t]``, so it stands for
``value * 300`` events in that window, and it is credited to the bucket holding that window
(the bucket containing ``t - 150``: for aligned samples, ``t`` in ``(B, B+W]`` goes to bucket
``B``). With ``step`` equal to the 5-minute rate window and aligned samples, the windows tile
each bucket: every 5 minutes is counted exactly once. Per bucket and group:
``count = round_half_even(sum(Decimal(value) * 300))``.

Error bound, for one bucket of ``n = W/300`` windows with true counts ``C_1..C_n``:

    |estimate - true| <= 0.5 + 300 * sum(eps_k) + sum(C_k over missing windows) + edge shift

- 0.5: rounding the Decimal sum to an integer, once per bucket.
- ``eps_k``: how far the quoted rate text is from ``C_k / 300`` (Groq quotes float64 values,
  so ``eps_k <= rate * 2**-52``: negligible; a rate quoted with d decimals gives
  ``eps_k <= 0.5 * 10**-d``).
- Missing windows (no sample, ``NaN`` or ``Inf``) are not interpolated: their traffic is lost,
  so the estimate is low by at most ``300 * peak rate`` per missing sample.
- Edge shift: if the value Groq returns at a step was recorded ``delta`` seconds earlier
  (its rule runs on its own schedule), every window moves by ``delta``; totals are kept, but
  up to ``delta`` seconds of traffic land in the neighbouring bucket. Errors of Groq's own rate extrapolation are not visible through
  the API and mostly cancel between neighbouring windows.

With exact aligned samples and no gaps the count is exact (to within 0.5).

Measures: ``tokens_in`` -> ``tokens.input``, ``tokens_out`` -> ``tokens.output``, ``requests``
-> ``requests`` (all status codes: ``sum by`` collapses ``status_code``). The unit of
``prompt_cache_hits`` is undocumented; only with ``options.cache_hits_are_tokens: true`` does it
become ``tokens.cache_read``, carved out of ``tokens_in`` so the token types partition.
Metric and label names are options because Groq has renamed its metrics before.

The newest window may not be recorded yet when polled; the bucket that holds it is re-fetched
(and replaced) on every poll until its revision horizon passes, so it settles by itself.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Any, NoReturn

from pydantic import Field, StrictBool, field_validator, model_validator

from exporter import rows
from exporter.pricing import ProviderPricing
from exporter.rows import Bucket, Number, Row
from exporter.schema import GROUPABLE, AccountSettings, Duration, Strict
from exporter.sources import (
    DAY,
    Adapter,
    Endpoint,
    bearer,
    check_metric_names,
    horizon_option,
    parse_options,
)
from exporter.sources._http import (
    AUTH,
    CLIENT_ERROR,
    DECODE,
    NOT_ENTITLED,
    SERVER_ERROR,
    TIMEOUT,
    ApiClient,
    SourceError,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.groq.com/v1/metrics/prometheus"
QUERY_RANGE = "/api/v1/query_range"
USAGE = "usage"
OPERATION = "completions"  # the same kind of traffic as OpenAI/Anthropic completions
STEP = 300  # the rate window of Groq's :rate5m series; the integration needs step == window
MAX_POINTS = 10_000  # per series per query (Prometheus refuses more than 11,000)

# option key -> (default metric, what it becomes)
DEFAULT_METRICS = {
    "tokens_in": "model_project_id:tokens_in:rate5m",
    "tokens_out": "model_project_id:tokens_out:rate5m",
    "requests": "model_project_id_status_code:requests:rate5m",
    "prompt_cache_hits": "model_project_id:prompt_cache_hits:rate5m",
}

# A HELP suffix for metrics fed from this source (names.py owns the HELP strings).
ESTIMATE_NOTE = (
    "Groq values are estimates integrated from 5-minute rates (sum of rate x 300 s per "
    "bucket): exact to +-0.5 when every 5-minute sample is present; each missing sample "
    "undercounts by that window's traffic."
)

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# A metric name, optionally with label matchers: `name` or `name{env="prod"}`.
_SELECTOR = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$")
_ERROR_REASONS = {"timeout": TIMEOUT, "internal": SERVER_ERROR, "unavailable": SERVER_ERROR}

_NOT_ENTITLED_MSG = "the Groq metrics API needs an Enterprise plan"


class _Malformed(ValueError):
    """A series or sample the adapter cannot read; skipped and counted."""


class GroqOptions(Strict):
    """`options` of a Groq account. Metric and label names are options because Groq has
    renamed its metrics before."""

    # metric key -> metric name (optionally with {matchers}); null or "" disables a metric
    metrics: dict[str, str | None] = Field(default_factory=dict)
    model_label: str = "model"
    project_label: str = "project_id"
    # Unit of prompt_cache_hits is not documented (tokens or requests?). Only when the user
    # says they are tokens do they become cache_read, carved out of tokens_in.
    cache_hits_are_tokens: StrictBool = False
    usage_horizon: Duration | None = None

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        check_metric_names(
            value, DEFAULT_METRICS, _SELECTOR, "a metric name (optionally with {matchers})"
        )
        return value

    @field_validator("model_label", "project_label")
    @classmethod
    def _label_name(cls, value: str) -> str:
        if not _LABEL.match(value):
            raise ValueError(f"{value!r} is not a Prometheus label name")
        return value

    @model_validator(mode="after")
    def _something_to_poll(self) -> GroqOptions:
        named = self.polled_metrics(keep_cache_hits=True)
        if self.cache_hits_are_tokens and not (
            named.get("prompt_cache_hits") and named.get("tokens_in")
        ):
            raise ValueError(
                "cache_hits_are_tokens: needs metrics.prompt_cache_hits and metrics.tokens_in"
            )
        if not self.polled_metrics():
            raise ValueError("metrics: every metric is disabled; nothing to poll")
        return self

    def polled_metrics(self, *, keep_cache_hits: bool = False) -> dict[str, str]:
        """Metric key -> name of each metric polled: defaults overridden per key, disabled
        ones left out, and prompt_cache_hits only when its hits are tokens."""
        out: dict[str, str] = {}
        for key, default in DEFAULT_METRICS.items():
            name = self.metrics.get(key, default)
            if not name:
                continue
            if key == "prompt_cache_hits" and not (keep_cache_hits or self.cache_hits_are_tokens):
                continue
            out[key] = name.strip()
        return out


class GroqSource:
    """One Groq organization's usage, reconstructed from its Prometheus metrics API."""

    provider = "groq"

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        if bucket_width <= 0 or bucket_width % STEP:
            raise ValueError(f"bucket_width: must be a multiple of {STEP}s, not {bucket_width}s")
        self.account = account.account
        self.client = client
        self.bucket_width = bucket_width
        unknown_dims = [d for d in group_by if d not in GROUPABLE]
        if unknown_dims:
            raise ValueError(f"group_by: unknown dimension(s) {unknown_dims}")
        opts = parse_options(GroqOptions, account.options)
        self.metrics = opts.polled_metrics()
        model_label, project_label = opts.model_label, opts.project_label
        self.cache_hits_are_tokens = opts.cache_hits_are_tokens
        # Two days whatever the width: one query per metric covers it (576 five-minute points).
        self.usage_horizon = horizon_option(
            opts.usage_horizon, "usage_horizon", 2 * DAY, bucket_width
        )
        # our dimension -> Prometheus label; only what the account groups by
        self._dims = [
            (dim, label)
            for dim, label in (("model", model_label), ("project", project_label))
            if dim in group_by
        ]
        self.payload_errors: dict[str, int] = {USAGE: 0}

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(USAGE, self.bucket_width, self.usage_horizon)]

    def query(self, metric: str) -> str:
        """The PromQL sent for one metric: status codes and other labels summed away."""
        by = ", ".join(label for _, label in self._dims)
        return f"sum by ({by}) ({metric})" if by else f"sum({metric})"

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        if endpoint.name != USAGE:
            raise ValueError(f"unknown Groq endpoint {endpoint.name!r}")
        width = endpoint.width
        if width % STEP or start % width:
            raise ValueError(f"{USAGE}: start {start} is not aligned to {width}s")
        starts = list(range(start, end, width))
        last = (end // STEP) * STEP  # the newest sample we may use: its window ends by `end`
        sums: dict[tuple[int, tuple[tuple[str, str], ...]], dict[str, Decimal]] = {}
        per_query = max(1, MAX_POINTS * STEP // width)  # buckets per query
        for key, metric in self.metrics.items():
            for i in range(0, len(starts), per_query):
                q_start = starts[i] + STEP  # first window (start, start+300]
                q_end = min(starts[min(i + per_query, len(starts)) - 1] + width, last)
                if q_end < q_start:
                    continue
                body = self._query(self.query(metric), q_start, q_end)
                self._integrate(body, key, q_start, q_end, width, sums)

        grouped: dict[int, list[Row]] = {s: [] for s in starts}
        for (bucket, dims), measures in sums.items():
            if bucket in grouped:
                grouped[bucket].append(Row(OPERATION, dims, self._counts(measures)))
        return [Bucket(USAGE, s, s + width, grouped[s]) for s in starts]

    def _counts(self, sums: Mapping[str, Decimal]) -> dict[str, Number]:
        """Round each integrated sum once, then split input so token types partition.

        Every queried metric gets a measure (0 when the group had no sample of it), so a
        group's rows have one shape whatever the traffic.
        """
        zero = Decimal(0)
        out: dict[str, Number] = {}
        if "tokens_in" in self.metrics:
            tokens_in = _round(sums.get("tokens_in", zero))
            if self.cache_hits_are_tokens:
                # tokens_in counts every prompt token, cached ones included (like OpenAI's
                # input_tokens); sampling noise can push hits above it, so clamp.
                cached = min(_round(sums.get("prompt_cache_hits", zero)), tokens_in)
                out[rows.token_measure("cache_read")] = cached
                tokens_in -= cached
            out[rows.token_measure("input")] = tokens_in
        if "tokens_out" in self.metrics:
            out[rows.token_measure("output")] = _round(sums.get("tokens_out", zero))
        if "requests" in self.metrics:
            # Every request, whatever its status code: errors reached Groq too, and a
            # request count that hides them would not match Groq's own dashboards.
            out[rows.REQUESTS] = _round(sums.get("requests", zero))
        return out

    def _query(self, expr: str, q_start: int, q_end: int) -> Mapping[str, Any]:
        params: list[tuple[str, str | int]] = [
            ("query", expr),
            ("start", q_start),
            ("end", q_end),
            ("step", STEP),
        ]
        try:
            body = self.client.get_json(USAGE, QUERY_RANGE, params, {404: NOT_ENTITLED})
        except SourceError as exc:
            if exc.reason == NOT_ENTITLED:
                raise SourceError(
                    NOT_ENTITLED, f"{USAGE}: HTTP 404: {_NOT_ENTITLED_MSG}", exc.status
                ) from None
            if exc.reason == AUTH:
                raise SourceError(AUTH, f"{exc} (note: {_NOT_ENTITLED_MSG})", exc.status) from None
            raise
        if not isinstance(body, Mapping):
            self._fail(DECODE, "response is not a JSON object")
        status = body.get("status")
        if status == "error":
            kind = str(body.get("errorType") or "")
            reason = _ERROR_REASONS.get(
                kind, SERVER_ERROR if kind.startswith("5") else CLIENT_ERROR
            )
            self._fail(reason, f"query failed: {kind}: {str(body.get('error') or '')[:200]}")
        if status != "success":
            self._fail(DECODE, "response has no status 'success'")
        if body.get("isPartial") is True:
            # Partial data would replace complete buckets with smaller numbers: refuse it.
            self._fail(SERVER_ERROR, "partial result (isPartial); retried next poll")
        data = body.get("data")
        if not isinstance(data, Mapping) or not isinstance(data.get("result"), list):
            self._fail(DECODE, "response has no data.result list")
        if data.get("resultType") != "matrix":
            self._fail(DECODE, f"expected a matrix result, got {data.get('resultType')!r}")
        return data

    def _integrate(
        self,
        data: Mapping[str, Any],
        key: str,
        q_start: int,
        q_end: int,
        width: int,
        sums: dict[tuple[int, tuple[tuple[str, str], ...]], dict[str, Decimal]],
    ) -> None:
        with localcontext() as ctx:
            ctx.prec = 200  # Decimal sums stay exact
            for series in data["result"]:
                try:
                    if not isinstance(series, Mapping):
                        raise _Malformed("series is not an object")
                    labels = series.get("metric")
                    values = series.get("values")
                    if not isinstance(labels, Mapping) or not isinstance(values, list):
                        raise _Malformed("series has no metric labels or values")
                    found = {dim: _label_value(labels.get(lb)) for dim, lb in self._dims}
                    dims = Row.make(OPERATION, found, {}).dims
                except _Malformed as exc:
                    self._skip(exc)
                    continue
                for sample in values:
                    try:
                        t, rate = _sample(sample)
                    except _Malformed as exc:
                        self._skip(exc)
                        continue
                    if rate is None or not q_start <= t <= q_end:
                        continue  # NaN/Inf: no data; outside the query: not ours to count
                    mid = t - STEP / 2  # the middle of the window (t-300, t]
                    bucket = math.floor(mid / width) * width
                    group = sums.setdefault((bucket, dims), {})
                    group[key] = group.get(key, Decimal(0)) + rate * STEP

    def _fail(self, reason: str, message: str) -> NoReturn:
        self.client.recorder.failure(USAGE, reason)
        raise SourceError(reason, f"{USAGE}: {message}")

    def _skip(self, exc: _Malformed) -> None:
        self.payload_errors[USAGE] += 1
        log.warning("groq/%s %s: skipped malformed data: %s", self.account, USAGE, exc)


def _sample(sample: Any) -> tuple[float, Decimal | None]:
    """(t, rate) of one ``[t, "value"]`` pair; rate None for NaN/Inf (no data there)."""
    if not isinstance(sample, list | tuple) or len(sample) != 2:
        raise _Malformed("sample is not a [time, value] pair")
    t, value = sample
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise _Malformed("sample time is not a number")
    if not isinstance(value, str):
        raise _Malformed("sample value is not a string")
    try:
        rate = Decimal(value.strip())
    except InvalidOperation:
        raise _Malformed("sample value is not a number") from None
    if not rate.is_finite():
        return float(t), None
    if rate < 0:
        raise _Malformed("sample value is a negative rate")
    if rate.adjusted() > 15:  # 10^16 tokens a second: no bill; and rate * 300 stays exact
        raise _Malformed("sample value is out of bounds")
    return float(t), rate


def _label_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Malformed("label value is not a string")


def _round(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


ADAPTER = Adapter(
    name="groq",
    display_name="Groq",
    build=GroqSource,
    options=GroqOptions,
    base_url=DEFAULT_BASE_URL,
    key_env="GROQ_API_KEY",
    headers=bearer,  # an ordinary API key of an Enterprise organization
    pricing=ProviderPricing(price_id="groq"),  # no published batch discount to apply
)
