"""Google Vertex AI source: publisher-model usage from Cloud Monitoring, invoiced cost from the
Cloud Billing export in BigQuery.

Two endpoints, keyed by aligned UTC bucket start:

- ``usage`` (1h or 1d buckets): Cloud Monitoring v3 ``projects.timeSeries.list`` (REST,
  ``GET {monitoring}/v3/projects/{project}/timeSeries``) on the publisher-model metrics,
  resource type ``aiplatform.googleapis.com/PublisherModel`` (resource labels
  ``model_user_id``, ``location``), aligned to the bucket width with ``ALIGN_SUM`` and summed
  across series (``REDUCE_SUM``) by model (and token type), every ``nextPageToken`` followed:

  ==========================================================  ===============================
  metric (option key, default)                                becomes
  ==========================================================  ===============================
  ``token_count``: ``aiplatform.googleapis.com/publisher/     ``tokens.input`` / ``tokens.
  online_serving/token_count``, metric label ``type``         output`` by ``type`` = input /
                                                              output
  ``invocation_count``: ``aiplatform.googleapis.com/          ``requests`` (every response
  publisher/online_serving/model_invocation_count``           code: an error reached Vertex
                                                              too)
  ==========================================================  ===============================

  Names: shared/provider-apis.md section 5 (observed by several independent clients), and
  Google's "Model monitoring metrics" page (cloud.google.com/vertex-ai/generative-ai/docs/
  learn/model-observability: "model requests per second, token throughput, first token
  latencies, API error rates", pointing at the "aiplatform" section of the Google Cloud
  metrics list). Clouds rename metrics, so metric and label names are options, with these as
  defaults. Model ids lose their version pin and revision suffix (``claude-sonnet-4-5@20250929``
  -> ``claude-sonnet-4-5``, ``gemini-2.0-flash-001`` -> ``gemini-2.0-flash``) unless
  ``keep_model_versions``: billing SKUs cannot tell versions apart, and usage and invoice
  should name a model the same way. A ``type`` other than input/output is skipped and counted in
  ``llm_source_payload_errors_total`` (token types must partition; an unknown one has no
  meaning to map). Throttles and errors: ``model_invocation_count`` carries a response-code
  label (``response_code_label``, default ``response_code`` [U: name not verified]): every
  code is a request, and 429, other 4xx and 5xx are also counted apart as the callers'
  failures (``failed_requests.<reason>`` -> ``llm_model_request_failures_total``), as
  Bedrock's and Azure's are.

- ``costs`` (1d): the Cloud Billing export to BigQuery, through the REST ``jobs.query``
  (``POST {bigquery}/bigquery/v2/projects/{project}/queries``, a parameterised standard-SQL
  query; ``jobComplete: false`` is followed with ``getQueryResults``, and every ``pageToken``
  is followed), filtered to the Vertex AI service (``service.description``, option
  ``billing_services``) and to the account's project, summed by usage day (UTC) and SKU. The
  export's format is detected from the table's name (``gcp_billing_export_v1_*`` and
  ``gcp_billing_export_resource_v1_*``: standard; ``gcp_billing_export_focus_*``: FOCUS,
  columns ``ServiceName``, ``SubAccountId`` [U: assumed to hold the project id], ``SkuId``,
  ``ChargeDescription``, ``BilledCost``, ``BillingCurrency``, ``ChargePeriodStart``), or
  configured (``billing_format``) for a view or a copy, whose name says nothing. Schemas:
  docs.cloud.google.com/billing/docs/how-to/export-data-bigquery-tables (standard-usage,
  focus-export).

  The amount is net of credits: ``cost`` plus the sum of ``credits[].amount`` (negative) in
  the standard export; in FOCUS credits are rows of their own, summed in. That is what is
  invoiced, so it feeds ``llm_cost_reported_usd_total``. The export lags by hours and rows
  are revised for days, so the last ``costs_horizon`` (default 5 days) is re-read, and at
  most every ``costs_interval`` (default 6 h, ``Endpoint.min_interval``): each query is
  billed by the bytes it scans.

  SKU -> model: the SKU description names the model ("Gemini 2.5 Flash Input Tokens",
  "Claude Sonnet 4.5 Output Tokens"): the words before the first usage word (input, output,
  cached, text, tokens, ...) become the model id (lower case, spaces to dashes; for Claude,
  dots to dashes as Anthropic spells its versions). ``sku_models`` maps a SKU id or
  description to a model outright. A SKU that names no model gets no model label (its cost
  still counts under its SKU's ``line_item``). ``token_type`` marks token SKUs for
  reconciliation.

Credentials: google-auth application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``
naming a service-account key file, workload identity, the metadata server), or
``options.credentials_file``. google-auth signs the JWT assertion and refreshes the token
(its requests go through httpx2 too, counted under endpoint ``token``); every API request is
made by the shared ``ApiClient`` with a fresh ``Authorization`` header (``ApiClient.auth``),
so retries, ``Retry-After`` and request accounting are the same as for every provider.
google-auth is the optional extra ``gcp``: without it the account is refused at config check
and start with one line naming ``pip install 'llm-cost-exporter[gcp]'``.

Base URLs: the account's ``base_url`` serves both Monitoring and BigQuery (one host with both
path trees: the simulator, a proxy); ``monitoring_url``, ``bigquery_url`` and ``token_url``
override each (VPC Service Controls: ``*.p.googleapis.com``, private endpoints).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, NoReturn

import httpx2 as httpx
from pydantic import Field, StrictBool, field_validator, model_validator

from exporter import rows
from exporter.pricing import ProviderPricing
from exporter.redact import redact
from exporter.rows import Bucket, Row, bounded_count
from exporter.schema import GROUPABLE, AccountSettings, Duration, Strict
from exporter.sources import (
    DAY,
    HOUR,
    Adapter,
    Endpoint,
    check_metric_names,
    failure_reason,
    horizon_option,
    parse_options,
    parse_rfc3339,
    rfc3339,
)
from exporter.sources._http import (
    AUTH,
    CONNECTION,
    DECODE,
    SERVER_ERROR,
    ApiClient,
    SourceError,
)

log = logging.getLogger(__name__)

MONITORING_URL = "https://monitoring.googleapis.com"
BIGQUERY_URL = "https://bigquery.googleapis.com"
SCOPES = (
    "https://www.googleapis.com/auth/monitoring.read",
    "https://www.googleapis.com/auth/bigquery.readonly",
)
EXTRA = "pip install 'llm-cost-exporter[gcp]'"

USAGE = "usage"
COSTS = "costs"
TOKEN = "token"  # accounting name of the OAuth2 token requests
OPERATION = "completions"
RESOURCE_TYPE = "aiplatform.googleapis.com/PublisherModel"

DEFAULT_METRICS = {
    "token_count": "aiplatform.googleapis.com/publisher/online_serving/token_count",
    "invocation_count": "aiplatform.googleapis.com/publisher/online_serving/model_invocation_count",
}
_TOKEN_TYPES = {"input": "input", "output": "output"}
PAGE_SIZE = 10_000  # time series per page (the API's maximum is 100,000 points)
MAX_PAGES = 1000
QUERY_TIMEOUT_MS = 20_000
MAX_POLLS = 30  # getQueryResults calls while the job is not complete

_TABLE = re.compile(r"^[a-z][a-z0-9.:-]{3,62}\.[A-Za-z0-9_]{1,1024}\.[A-Za-z0-9_$-]{1,1024}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_USAGE_WORDS = frozenset(
    [
        "input",
        "output",
        "cached",
        "cache",
        "text",
        "tokens",
        "token",
        "characters",
        "character",
        "image",
        "images",
        "audio",
        "video",
        "predictions",
        "prediction",
        "batch",
        "requests",
        "request",
        "online",
        "thinking",
        "long",
        "context",
        "grounding",
        "search",
    ]
)


class VertexOptions(Strict):
    """`options` of a Vertex AI account (one Google Cloud project)."""

    project: str
    # Locations whose usage is read (e.g. us-central1, global); empty = every location.
    locations: list[str] = Field(default_factory=list)
    # `project.dataset.table` of the Cloud Billing export; unset = no invoiced cost.
    billing_table: str | None = None
    # auto: told by the table's name (gcp_billing_export_v1_* / gcp_billing_export_resource_v1_*
    # standard, gcp_billing_export_focus_* FOCUS); a view or a copy needs it configured.
    billing_format: Literal["auto", "standard", "focus"] = "auto"
    billing_services: list[str] = Field(default_factory=lambda: ["Vertex AI"], min_length=1)
    # SKU id or description -> model, where the description does not name it.
    sku_models: dict[str, str] = Field(default_factory=dict)
    credentials_file: str | None = None  # default: application default credentials
    monitoring_url: str | None = None
    bigquery_url: str | None = None
    token_url: str | None = None  # a service-account key's token_uri, overridden
    # metric key -> Cloud Monitoring metric type; null or "" disables it
    metrics: dict[str, str | None] = Field(default_factory=dict)
    # Usage model labels as reported (with version pins and revisions); by default they are
    # reduced to the base model, as billing names them, so usage and invoice line up.
    keep_model_versions: StrictBool = False
    token_type_label: str = "type"  # metric label
    # metric label of the invocation count's HTTP status [U: name not verified]: throttled and
    # failed requests are counted apart (llm_model_request_failures_total); "" sums them away
    response_code_label: str = "response_code"
    model_label: str = "model_user_id"  # resource label
    location_label: str = "location"  # resource label
    usage_horizon: Duration | None = None
    costs_horizon: Duration | None = None
    costs_interval: Duration | None = None

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", value):
            raise ValueError(
                f"{value!r} is not a Google Cloud project id (6 to 30 lower-case letters, "
                "digits and hyphens, starting with a letter)"
            )
        return value

    @field_validator("billing_table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None and not _TABLE.match(value):
            raise ValueError(f"{value!r} is not `project.dataset.table`")
        return value

    @field_validator("locations")
    @classmethod
    def _locations(cls, value: list[str]) -> list[str]:
        for loc in value:
            if not re.fullmatch(r"[a-z0-9-]+", loc):
                raise ValueError(f"{loc!r} is not a location such as us-central1")
        return value

    @field_validator("monitoring_url", "bigquery_url", "token_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("token_type_label", "model_label", "location_label")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a label name")
        return value

    @field_validator("response_code_label")
    @classmethod
    def _optional_label(cls, value: str) -> str:
        return cls._label(value) if value else value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        check_metric_names(value, DEFAULT_METRICS, _NAME, "a Cloud Monitoring metric type")
        return value

    @model_validator(mode="after")
    def _something_to_poll(self) -> VertexOptions:
        if not self.polled_metrics() and self.billing_table is None:
            raise ValueError("metrics: every metric is disabled and no billing_table is set")
        return self

    def polled_metrics(self) -> dict[str, str]:
        return {
            key: name
            for key, default in DEFAULT_METRICS.items()
            if (name := self.metrics.get(key, default))
        }


def billing_format(opts: VertexOptions) -> str:
    """The billing export's format: configured, or detected from the table's name."""
    if opts.billing_format != "auto" or opts.billing_table is None:
        return opts.billing_format
    table = opts.billing_table.rsplit(".", 1)[-1]
    if table.startswith("gcp_billing_export_focus_"):
        return "focus"
    if table.startswith(("gcp_billing_export_v1_", "gcp_billing_export_resource_v1_")):
        return "standard"
    raise ValueError(
        f"options.billing_format: the table name {table!r} does not tell the export's format "
        "(standard: gcp_billing_export_v1_*, FOCUS: gcp_billing_export_focus_*); set "
        "billing_format: standard or focus"
    )


def _google_auth() -> Any:
    """The google-auth modules, or ValueError naming the extra to install."""
    try:
        import google.auth
        import google.auth.exceptions
    except ImportError:
        raise ValueError(
            f"options: Vertex AI needs google-auth, which is not installed: {EXTRA}"
        ) from None
    return google


class _Malformed(ValueError):
    """A series, point or row the adapter cannot read; skipped and counted."""


def _count(value: Mapping[str, Any]) -> int:
    """A point's value: int64Value (a string in JSON) or a whole doubleValue."""
    raw = value.get("int64Value", value.get("doubleValue"))
    if isinstance(raw, bool) or raw is None:
        raise _Malformed("point has no int64Value")
    try:
        d = Decimal(str(raw).strip())
    except InvalidOperation:
        raise _Malformed("point value is not a number") from None
    n = bounded_count(d)  # not int(d) first: int() of 1e999990 takes seconds
    if n is None or n < 0:
        raise _Malformed("point value is not a count within 64 bits")
    return n


def sku_model(description: str) -> str | None:
    """The model a SKU description names ("Gemini 2.5 Flash Input Tokens" ->
    "gemini-2.5-flash"), or None when it names none."""
    words: list[str] = []
    for word in re.split(r"[\s,()]+", description.strip()):
        if not word or word.lower() in _USAGE_WORDS or word == "-":
            break
        words.append(word.lower())
    if not words or words[0] in ("vertex", "ai", "online", "batch"):
        return None
    model = "-".join(words)
    if model.startswith("claude"):
        model = model.replace(".", "-")
    return model


def sku_token_type(description: str) -> str | None:
    """The token type a SKU bills, when its description says (for reconciliation)."""
    text = description.lower()
    if any(w in text for w in ("image", "audio", "video", "character", "second")):
        return None  # priced per modality or unit: no text token type to reconcile
    if "output" in text:
        return "output"
    if "cache" in text:
        return "cache_read"
    if "input" in text:
        return "input"
    return None


def base_model(model: str) -> str:
    """A Vertex model id without its `publishers/x/models/` path, its version pin
    (`claude-sonnet-4-5@20250929`) and its revision suffix (`gemini-2.0-flash-001`): the
    name billing SKUs can be told apart by."""
    name = model.rsplit("/", 1)[-1].split("@", 1)[0]
    return re.sub(r"-\d{3}$", "", name) or model


def model_candidates(model: str) -> tuple[str, ...]:
    """Names to price a Vertex model id by (when kept as reported, `keep_model_versions`):
    without its version pin, then without its revision suffix too."""
    name = model.rsplit("/", 1)[-1].split("@", 1)[0]
    out = (name, base_model(model))
    return tuple(dict.fromkeys(n for n in out if n and n != model))


class _Transport:
    """google-auth's transport interface over httpx2, counting each token request in the
    account's request accounting (endpoint `token`)."""

    def __init__(self, client: ApiClient, timeout: float, google: Any) -> None:
        self._api = client
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._google = google
        weakref.finalize(self, self._http.close)  # closed with the source

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        began = time.monotonic()
        self._api.requests_made += 1
        try:
            r = self._http.request(
                method, url, content=body, headers=dict(headers or {}), timeout=timeout or 30
            )
        except httpx.HTTPError as exc:
            self._api.recorder.request(TOKEN, "error", time.monotonic() - began)
            raise self._google.auth.exceptions.TransportError(type(exc).__name__) from None
        self._api.recorder.request(TOKEN, str(r.status_code), time.monotonic() - began)
        return _TransportResponse(r)


class _TransportResponse:
    def __init__(self, r: httpx.Response) -> None:
        self.status = r.status_code
        self.headers = r.headers
        self.data = r.content


class VertexSource:
    """One Google Cloud project's Vertex AI publisher-model usage and billed cost."""

    provider = "vertex_ai"

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        if bucket_width not in (HOUR, DAY):
            raise ValueError(f"bucket_width: Vertex AI supports 1h or 1d, not {bucket_width}s")
        unknown_dims = [d for d in group_by if d not in GROUPABLE]
        if unknown_dims:
            raise ValueError(f"group_by: unknown dimension(s) {unknown_dims}")
        opts = parse_options(VertexOptions, account.options)
        self._google = _google_auth()
        self.account = account.account
        self.client = client
        self.opts = opts
        self.bucket_width = bucket_width
        self.by_model = "model" in group_by
        self.metrics = opts.polled_metrics()
        base = (account.base_url or "").rstrip("/")
        self.billing_format = billing_format(opts)
        self.monitoring = (opts.monitoring_url or base or MONITORING_URL).rstrip("/")
        self.bigquery = (opts.bigquery_url or base or BIGQUERY_URL).rstrip("/")
        self.usage_horizon = horizon_option(
            opts.usage_horizon, "usage_horizon", 2 * DAY, bucket_width
        )
        self.costs_horizon = horizon_option(opts.costs_horizon, "costs_horizon", 5 * DAY, DAY)
        self.costs_interval = 6 * HOUR if opts.costs_interval is None else opts.costs_interval
        self.timeout = account.timeout
        self._credentials: Any = None
        self._transport: _Transport | None = None
        client.auth = self._auth
        self.payload_errors: dict[str, int] = {ep.name: 0 for ep in self.endpoints()}

    def endpoints(self) -> list[Endpoint]:
        eps = []
        if self.metrics:
            eps.append(Endpoint(USAGE, self.bucket_width, self.usage_horizon))
        if self.opts.billing_table:
            eps.append(Endpoint(COSTS, DAY, self.costs_horizon, self.costs_interval))
        return eps

    # --- credentials -----------------------------------------------------------------------

    def _load_credentials(self) -> Any:
        g = self._google
        try:
            if self.opts.credentials_file is not None:
                # Any key file google-auth reads: service_account, authorized_user,
                # external_account (workload identity federation).
                creds, _ = g.auth.load_credentials_from_file(
                    str(Path(self.opts.credentials_file).expanduser()), scopes=SCOPES
                )
            else:
                creds, _ = g.auth.default(scopes=SCOPES)
        except g.auth.exceptions.DefaultCredentialsError as exc:
            # The message names the file and what is wrong with it, never its content.
            where = (
                f"options.credentials_file {self.opts.credentials_file}"
                if self.opts.credentials_file
                else "application default credentials"
            )
            raise SourceError(
                AUTH,
                f"{TOKEN}: no usable Google credentials from {where}: {redact(str(exc), 200)} "
                "(set GOOGLE_APPLICATION_CREDENTIALS or options.credentials_file to a "
                "service-account key file, or run with an attached service account)",
            ) from None
        except (ValueError, KeyError, OSError) as exc:
            raise SourceError(
                AUTH,
                f"{TOKEN}: cannot read the key file {self.opts.credentials_file}: "
                f"{type(exc).__name__}",
            ) from None
        if self.opts.token_url and hasattr(creds, "with_token_uri"):
            creds = creds.with_token_uri(self.opts.token_url)
        return creds

    def _auth(self) -> dict[str, str]:
        """A valid bearer token: cached until google-auth deems it expired, then refreshed."""
        g = self._google
        if self._credentials is None:
            self._credentials = self._load_credentials()
        creds = self._credentials
        if not creds.valid:
            if self._transport is None:
                self._transport = _Transport(self.client, self.timeout, g)
            try:
                creds.refresh(self._transport)
            except g.auth.exceptions.RefreshError as exc:
                account = getattr(creds, "service_account_email", None) or "the credentials"
                detail = exc.args[0] if exc.args else type(exc).__name__
                if getattr(exc, "retryable", False):  # 429/5xx, after google-auth's retries
                    raise SourceError(
                        SERVER_ERROR,
                        f"{TOKEN}: the token endpoint failed for {account}: "
                        f"{redact(str(detail), 200)}; retried next poll",
                    ) from None
                raise SourceError(
                    AUTH,
                    f"{TOKEN}: Google refused a token for {account}: {redact(str(detail), 200)} "
                    "(is the key revoked, or the service account disabled?)",
                ) from None
            except g.auth.exceptions.TransportError as exc:
                raise SourceError(
                    CONNECTION, f"{TOKEN}: token endpoint unreachable ({exc})"
                ) from None
        return {"Authorization": f"Bearer {creds.token}"}

    def _call(self, send: Callable[..., Any], *args: Any) -> Any:
        """One API request; a 401 drops the cached token (revoked before it expired)."""
        try:
            return send(*args)
        except SourceError as exc:
            if exc.reason == AUTH and exc.status == 401 and self._credentials is not None:
                self._credentials.token = None  # revoked early: a new token next time
            raise

    # --- fetch -----------------------------------------------------------------------------

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        if start % endpoint.width:
            raise ValueError(f"{endpoint.name}: start {start} is not aligned to {endpoint.width}s")
        if endpoint.name == USAGE:
            return self._fetch_usage(endpoint, start, end)
        if endpoint.name == COSTS:
            return self._fetch_costs(start, end)
        raise ValueError(f"unknown Vertex AI endpoint {endpoint.name!r}")

    # --- usage: Cloud Monitoring -----------------------------------------------------------

    def monitoring_filter(self, metric: str) -> str:
        parts = [f'metric.type = "{metric}"', f'resource.type = "{RESOURCE_TYPE}"']
        if self.opts.locations:
            locs = ", ".join(f'"{loc}"' for loc in self.opts.locations)
            parts.append(f"resource.labels.{self.opts.location_label} = one_of({locs})")
        return " AND ".join(parts)

    def _fetch_usage(self, ep: Endpoint, start: int, end: int) -> list[Bucket]:
        width = ep.width
        stop = -(-end // width) * width  # the current bucket too (partial, replaced later)
        sums: dict[int, dict[str, dict[str, int]]] = {s: {} for s in range(start, stop, width)}
        for key, metric in self.metrics.items():
            group = []
            if self.by_model:
                group.append(f"resource.labels.{self.opts.model_label}")
            if key == "token_count":
                group.append(f"metric.labels.{self.opts.token_type_label}")
            elif self.opts.response_code_label:
                group.append(f"metric.labels.{self.opts.response_code_label}")
            params: list[tuple[str, str | int]] = [
                ("filter", self.monitoring_filter(metric)),
                ("interval.startTime", rfc3339(start)),
                ("interval.endTime", rfc3339(stop)),
                ("aggregation.alignmentPeriod", f"{width}s"),
                ("aggregation.perSeriesAligner", "ALIGN_SUM"),
                ("aggregation.crossSeriesReducer", "REDUCE_SUM"),
                *(("aggregation.groupByFields", g) for g in group),
                ("pageSize", PAGE_SIZE),
            ]
            for page in self._pages(params):
                for series in page.get("timeSeries") or []:
                    try:
                        self._add_series(key, series, width, sums)
                    except _Malformed as exc:
                        self._skip(USAGE, exc)
        out = []
        for s, groups in sums.items():
            rows_ = [
                Row.make(OPERATION, {"model": model or None}, dict(measures))
                for model, measures in sorted(groups.items())
            ]
            out.append(Bucket(USAGE, s, s + width, rows_))
        return out

    def _pages(self, params: list[tuple[str, str | int]]) -> list[Mapping[str, Any]]:
        path = f"{self.monitoring}/v3/projects/{self.opts.project}/timeSeries"
        pages: list[Mapping[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            query = params + ([("pageToken", token)] if token else [])
            page = self._call(self.client.get_json, USAGE, path, query)
            if not isinstance(page, Mapping) or not isinstance(page.get("timeSeries", []), list):
                self._fail(USAGE, DECODE, "response has no timeSeries list")
            pages.append(page)
            token = page.get("nextPageToken") or None
            if not token:
                return pages
            if token in seen or len(pages) >= MAX_PAGES:
                self._fail(USAGE, DECODE, "nextPageToken repeats")
            seen.add(token)

    def _add_series(
        self, key: str, series: Any, width: int, sums: dict[int, dict[str, dict[str, int]]]
    ) -> None:
        if not isinstance(series, Mapping):
            raise _Malformed("time series is not an object")
        metric = series.get("metric") or {}
        resource = series.get("resource") or {}
        if not isinstance(metric, Mapping) or not isinstance(resource, Mapping):
            raise _Malformed("time series metric/resource is not an object")
        model = ""
        if self.by_model:
            model = (resource.get("labels") or {}).get(self.opts.model_label) or ""
            if not isinstance(model, str):
                raise _Malformed("model label is not a string")
            if model and not self.opts.keep_model_versions:
                model = base_model(model)
        if key == "token_count":
            kind = (metric.get("labels") or {}).get(self.opts.token_type_label)
            if kind not in _TOKEN_TYPES:
                raise _Malformed(f"unknown token type {str(kind)[:40]!r}")
            measure = rows.token_measure(_TOKEN_TYPES[kind])
        else:
            measure = rows.REQUESTS
        failed = ""
        if key != "token_count" and self.opts.response_code_label:
            code = (metric.get("labels") or {}).get(self.opts.response_code_label) or ""
            reason = failure_reason(str(code))
            failed = rows.FAILED_REQUESTS + reason if reason else ""
        points = series.get("points")
        if not isinstance(points, list):
            raise _Malformed("time series has no points list")
        for point in points:
            try:
                if not isinstance(point, Mapping):
                    raise _Malformed("point is not an object")
                interval = point.get("interval") or {}
                value = point.get("value") or {}
                if not isinstance(interval, Mapping) or not isinstance(value, Mapping):
                    raise _Malformed("point interval/value is not an object")
                ends = parse_rfc3339(interval.get("endTime"))
                n = _count(value)
            except ValueError as exc:  # _Malformed, or an endTime that is no RFC 3339 time
                self._skip(USAGE, exc)
                continue
            bucket = ends - width  # the aligned period (end - width, end]
            bucket -= bucket % width
            if bucket not in sums:
                continue
            group = sums[bucket].setdefault(model, {})
            group[measure] = group.get(measure, 0) + n
            if failed:  # also counted apart: the callers' throttled or failed requests
                group[failed] = group.get(failed, 0) + n

    # --- invoiced cost: the billing export in BigQuery -------------------------------------

    def billing_sql(self) -> str:
        table = f"`{self.opts.billing_table}`"
        if self.billing_format == "focus":
            return (
                "SELECT FORMAT_DATE('%F', DATE(ChargePeriodStart)) AS usage_day, "
                "SkuId AS sku_id, ChargeDescription AS sku, BillingCurrency AS currency, "
                "CAST(SUM(CAST(BilledCost AS NUMERIC)) AS STRING) AS cost "
                f"FROM {table} "
                "WHERE ServiceName IN UNNEST(@services) AND SubAccountId = @project "
                "AND ChargePeriodStart >= @start AND ChargePeriodStart < @end "
                "GROUP BY usage_day, sku_id, sku, currency ORDER BY usage_day, sku_id"
            )
        return (
            "SELECT FORMAT_DATE('%F', DATE(usage_start_time)) AS usage_day, "
            "sku.id AS sku_id, sku.description AS sku, currency, "
            "CAST(SUM(CAST(cost AS NUMERIC) + IFNULL((SELECT SUM(CAST(c.amount AS NUMERIC)) "
            "FROM UNNEST(credits) AS c), 0)) AS STRING) AS cost "
            f"FROM {table} "
            "WHERE service.description IN UNNEST(@services) AND project.id = @project "
            "AND usage_start_time >= @start AND usage_start_time < @end "
            "GROUP BY usage_day, sku_id, sku, currency ORDER BY usage_day, sku_id"
        )

    def billing_request(self, start: int, end: int) -> dict[str, Any]:
        def scalar(name: str, kind: str, value: str) -> dict[str, Any]:
            return {
                "name": name,
                "parameterType": {"type": kind},
                "parameterValue": {"value": value},
            }

        return {
            "query": self.billing_sql(),
            "useLegacySql": False,
            "parameterMode": "NAMED",
            "queryParameters": [
                {
                    "name": "services",
                    "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRING"}},
                    "parameterValue": {
                        "arrayValues": [{"value": s} for s in self.opts.billing_services]
                    },
                },
                scalar("project", "STRING", self.opts.project),
                scalar("start", "TIMESTAMP", rfc3339(start)),
                scalar("end", "TIMESTAMP", rfc3339(end)),
            ],
            "timeoutMs": QUERY_TIMEOUT_MS,
            "maxResults": PAGE_SIZE,
        }

    def _fetch_costs(self, start: int, end: int) -> list[Bucket]:
        stop = -(-end // DAY) * DAY
        base = f"{self.bigquery}/bigquery/v2/projects/{self.opts.project}/queries"
        result = self._call(self.client.post_json, COSTS, base, self.billing_request(start, stop))
        polls = 0
        rows_by_day: dict[int, dict[tuple[str, tuple[tuple[str, str], ...]], Decimal]] = {
            d: {} for d in range(start, stop, DAY)
        }
        page_token: str | None = None
        seen: set[str] = set()
        while True:
            if not isinstance(result, Mapping):
                self._fail(COSTS, DECODE, "query response is not an object")
            job = result.get("jobReference") or {}
            if not isinstance(job, Mapping):
                self._fail(COSTS, DECODE, "jobReference is not an object")
            if result.get("jobComplete") is False:
                polls += 1
                if polls > MAX_POLLS:
                    self._fail(COSTS, DECODE, "billing query did not complete; retried next poll")
            else:
                self._add_cost_rows(result, rows_by_day)
                page_token = result.get("pageToken") or None
                if not page_token:
                    break
                if page_token in seen:
                    self._fail(COSTS, DECODE, "pageToken repeats")
                seen.add(page_token)
            job_id = job.get("jobId")
            if not isinstance(job_id, str) or not job_id:
                self._fail(COSTS, DECODE, "query response has no jobReference.jobId")
            params: list[tuple[str, str | int]] = [
                ("timeoutMs", QUERY_TIMEOUT_MS),
                ("maxResults", PAGE_SIZE),
            ]
            if job.get("location"):
                params.append(("location", str(job["location"])))
            if page_token:
                params.append(("pageToken", page_token))
            path = f"{base}/{job_id}"
            result = self._call(self.client.get_json, COSTS, path, params)
        return [
            Bucket(COSTS, d, d + DAY, [Row.make("costs", dict(dims), {rows.COST: amount})
                                       for (_, dims), amount in sorted(groups.items())])
            for d, groups in rows_by_day.items()
        ]  # fmt: skip

    def _add_cost_rows(
        self,
        result: Mapping[str, Any],
        out: dict[int, dict[tuple[str, tuple[tuple[str, str], ...]], Decimal]],
    ) -> None:
        schema = result.get("schema") or {}
        fields = schema.get("fields") if isinstance(schema, Mapping) else None
        if not isinstance(fields, list):
            self._fail(COSTS, DECODE, "query response has no schema")
        names = [f.get("name") if isinstance(f, Mapping) else None for f in fields]
        for raw in result.get("rows") or []:
            try:
                cells = raw.get("f") if isinstance(raw, Mapping) else None
                if not isinstance(cells, list) or len(cells) != len(names):
                    raise _Malformed("row does not match the schema")
                row = {
                    n: (c.get("v") if isinstance(c, Mapping) else None)
                    for n, c in zip(names, cells, strict=True)
                }
                day = int(
                    dt.datetime.combine(
                        dt.date.fromisoformat(str(row.get("usage_day"))), dt.time(), dt.UTC
                    ).timestamp()
                )
                amount = Decimal(str(row.get("cost")))
                if not amount.is_finite():
                    raise _Malformed("cost is not finite")
            except (_Malformed, ValueError, InvalidOperation, TypeError) as exc:
                self._skip(COSTS, _Malformed(str(exc)[:100]))
                continue
            if day not in out:
                continue
            sku_id = str(row.get("sku_id") or "")
            sku = str(row.get("sku") or sku_id)
            model = self.opts.sku_models.get(sku_id) or self.opts.sku_models.get(sku)
            dims = Row.make(
                "costs",
                {
                    "model": model or sku_model(sku),
                    "line_item": sku,
                    "token_type": sku_token_type(sku),
                    "currency": str(row.get("currency") or "USD").strip().lower(),
                },
                {},
            ).dims
            key = (sku_id, dims)
            out[day][key] = out[day].get(key, Decimal(0)) + amount

    # --- shared ----------------------------------------------------------------------------

    def _fail(self, endpoint: str, reason: str, message: str) -> NoReturn:
        self.client.recorder.failure(endpoint, reason)
        raise SourceError(reason, f"{endpoint}: {message}")

    def _skip(self, endpoint: str, exc: Exception) -> None:
        self.payload_errors[endpoint] = self.payload_errors.get(endpoint, 0) + 1
        log.warning("vertex_ai/%s %s: skipped malformed data: %s", self.account, endpoint, exc)


def _no_headers(key: str) -> dict[str, str]:
    return {}  # tokens come from google-auth per request (ApiClient.auth)


ADAPTER = Adapter(
    name="vertex_ai",
    build=VertexSource,
    cloud="Google Cloud",
    options=VertexOptions,
    base_url=MONITORING_URL,
    key_env=None,  # credentials: google-auth application default credentials
    headers=_no_headers,
    pricing=ProviderPricing(
        # genai-prices keeps Vertex prices under "google": Gemini and the partner models
        # Google resells (Claude on Vertex) alike. Llama and other MaaS models are not there:
        # they stay unpriced until a prices.overrides entry names them.
        price_id="google",
        # Vertex batch prediction is half price; the database has no batch variants.
        batch_discount=Decimal("0.5"),
        model_candidates=model_candidates,
    ),
)
